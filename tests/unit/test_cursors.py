"""Signed keyset cursors (api.cursors): a cursor continues only the listing it was issued for."""

from __future__ import annotations

import base64

import pytest

from api.cursors import decode_cursor, encode_cursor
from api.errors import ApiError

SECRET = "s" * 40
KEY = ["2026-12-01T10:00:00+00:00", "retail-credit-scorecard@3.2.0"]


def issue(**kw: object) -> str:
    args: dict[str, object] = {"secret": SECRET, "kind": "progressions", "user_id": "u1",
                               "filters": {"team": "cards", "model": None}, "key": KEY, **kw}
    return encode_cursor(**args)  # type: ignore[arg-type]


def read(cursor: str, **kw: object) -> list[object]:
    args: dict[str, object] = {"secret": SECRET, "kind": "progressions", "user_id": "u1",
                               "filters": {"team": "cards"}, **kw}
    return decode_cursor(cursor, **args)  # type: ignore[arg-type]


def test_a_cursor_round_trips_and_a_none_filter_is_no_filter() -> None:
    assert read(issue()) == KEY
    assert read(issue(), filters={"team": "cards", "status": None}) == KEY


@pytest.mark.parametrize("change", [
    {"user_id": "u2"}, {"kind": "inbox"}, {"filters": {"team": "retail-risk"}}, {"filters": {}},
    {"secret": "t" * 40},
])
def test_a_cursor_read_in_another_listing_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ApiError) as err:
        read(issue(), **change)
    assert err.value.status == 422 and err.value.code == "invalid_cursor"


def test_edited_truncated_and_unsigned_cursors_are_refused() -> None:
    cursor = issue()
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for i in (0, len(raw) // 2, len(raw) - 2):
        edited = bytearray(raw)
        edited[i] ^= 0x20
        bad = base64.urlsafe_b64encode(bytes(edited)).decode().rstrip("=")
        with pytest.raises(ApiError):
            read(bad)
    unsigned = base64.urlsafe_b64encode(b'["1970-01-01T00:00:00+00:00",""]').decode()
    for bad in (cursor[:-4], cursor[:10], "", "!!", unsigned, "a"):
        with pytest.raises(ApiError):
            read(bad)
