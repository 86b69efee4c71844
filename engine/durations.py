"""Durations as written in policies: ``30m``, ``12h``, ``5d``, ``2w``, ``365d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    match = _RE.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number and one of s, m, h, d, w (e.g. 5d)")
    value = int(match.group(1))
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return timedelta(seconds=value * _UNITS[match.group(2)])


_SPOKEN_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def human_duration(seconds: float | None, *, parts: int = 1, smallest: str = "s", empty: str = "",
                   signed: bool = True) -> str:
    """A duration as people read it: ``3d``, ``-5m``, or with ``parts=2`` ``3d 4h``, ``1h 23m``.

    The CLI shows the largest unit down to seconds; the web UI two units down to minutes, unsigned.
    """
    if seconds is None:
        return empty
    sign = "-" if signed and seconds < 0 else ""
    total = abs(int(seconds))
    units = _SPOKEN_UNITS[:[u for u, _ in _SPOKEN_UNITS].index(smallest) + 1]
    for index, (unit, size) in enumerate(units):
        if total >= size or unit == smallest:
            major, rest = divmod(total, size)
            text = f"{major}{unit}"
            if parts == 2 and index + 1 < len(units):
                minor_unit, minor_size = units[index + 1]
                text += f" {rest // minor_size}{minor_unit}"
            return sign + text
    return sign + f"0{smallest}"  # unreachable: the smallest unit always matches
