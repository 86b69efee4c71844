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
