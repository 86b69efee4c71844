"""Signed webhooks: the one way the engine POSTs to a bank's systems (notifications and deployments).

The body is canonical JSON signed with HMAC-SHA256 (``X-Progression-Signature: sha256=<hex>``); the event id
header is stable across retries so the receiver can deduplicate. Any non-2xx answer raises, so the activity
that sent it is retried by Temporal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

SIGNATURE_HEADER = "X-Progression-Signature"
EVENT_ID_HEADER = "X-Progression-Event-Id"


def sign(secret: str, body: bytes) -> str:
    """Value of the signature header: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def canonical_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


async def post_signed(url: str, secret: str, event_id: str, payload: dict[str, Any], *, timeout: float = 30.0,
                      transport: httpx.AsyncBaseTransport | None = None) -> Any:
    """POST ``payload`` with the signature and event-id headers; raise on a non-2xx answer."""
    body = canonical_body(payload)
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body), EVENT_ID_HEADER: event_id}
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        response = await client.post(url, content=body, headers=headers)
        response.raise_for_status()
    try:
        return response.json()
    except ValueError:
        return None


class SignedWebhook:
    """A webhook endpoint with its secret; subclasses say what they send (``post``)."""

    def __init__(self, url: str, secret: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.transport = transport

    async def post(self, event_id: str, payload: dict[str, Any]) -> Any:
        return await post_signed(self.url, self.secret, event_id, payload, timeout=self.timeout,
                                 transport=self.transport)
