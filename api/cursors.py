"""Opaque, signed keyset cursors for the listings that page by cursor (the inbox, ``GET /progressions``).

A cursor carries the sort key of the last row a page examined, and is bound by an HMAC (the installation's
``secret_key``) to the listing, the caller and the filters it was issued for. A cursor that was edited, made
up, or replayed by another user or with other filters is refused (422 ``invalid_cursor``) rather than read:
it can only ever continue the very listing it came from. The caller's scope (team, roles, segregation of
duties) is applied on every page from the authenticated principal, never from the cursor, so even a valid
cursor cannot widen what a page shows.

Keyset paging (``WHERE (sort key, id) > (last key, last id)``) neither repeats nor skips rows while others
are inserted, and costs the same on page 1 and page 1,000.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from api.errors import ApiError

_SIG_BYTES = 16


def _scope(kind: str, user_id: str, filters: Mapping[str, Any]) -> bytes:
    return json.dumps([kind, user_id, sorted((k, v) for k, v in filters.items() if v is not None)],
                      separators=(",", ":"), default=str).encode()


def _sign(secret: str, scope: bytes, body: bytes) -> bytes:
    return hmac.new(secret.encode(), scope + b"\x00" + body, hashlib.sha256).digest()[:_SIG_BYTES]


def encode_cursor(*, secret: str, kind: str, user_id: str, filters: Mapping[str, Any], key: list[Any]) -> str:
    """The cursor continuing listing ``kind`` of ``user_id`` with ``filters`` after sort key ``key``."""
    body = json.dumps(key, separators=(",", ":")).encode()
    raw = _sign(secret, _scope(kind, user_id, filters), body) + body
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, secret: str, kind: str, user_id: str, filters: Mapping[str, Any]) -> list[Any]:
    """The sort key a cursor carries; 422 ``invalid_cursor`` unless this API issued it for this very listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sig, body = raw[:_SIG_BYTES], raw[_SIG_BYTES:]
        if len(sig) != _SIG_BYTES or not hmac.compare_digest(sig, _sign(secret, _scope(kind, user_id, filters),
                                                                          body)):
            raise ValueError("signature")
        key = json.loads(body)
        if not isinstance(key, list):
            raise ValueError("shape")
        return key
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API issued for this listing, caller and "
                       "filters; start again without a cursor", {"cursor": cursor[:200]}) from None
