"""Promotion targets: where a stage action (``deploy``) goes.

The default records the deployment (the audit event ``deployment.recorded`` is the record);
the webhook target POSTs HMAC-signed JSON to a configured URL so a bank's deployment system
can act. Both are called from an activity, so a failure (non-2xx, network) raises and
Temporal retries; ``deployment_key`` is stable across retries so the receiver can deduplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from activities.contract import Deployment, DeploymentReceipt

if TYPE_CHECKING:
    from engine.settings import Settings

SIGNATURE_HEADER = "X-Progression-Signature"
EVENT_ID_HEADER = "X-Progression-Event-Id"


class PromotionTarget(Protocol):
    name: str

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt: ...


def sign(secret: str, body: bytes) -> str:
    """Value of the signature header: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def canonical_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def _deployment_id(key: str) -> str:
    # Derived from the key, so a retried activity reports the same id.
    return "dep-" + hashlib.sha256(key.encode()).hexdigest()[:20]


class RecordingPromotionTarget:
    """Records the deployment and returns its id; the actual rollout happens outside the engine."""

    name = "record"

    def __init__(self) -> None:
        self.deployments: list[Deployment] = []  # in-process record, handy for tests and the dev server

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt:
        if all(d.deployment_key != deployment.deployment_key for d in self.deployments):
            self.deployments.append(deployment)
        return DeploymentReceipt(deployment_id=_deployment_id(deployment.deployment_key), target=self.name,
                                 details={"artifact": deployment.artifact})


class WebhookPromotionTarget:
    """POSTs the deployment as signed JSON; any non-2xx answer raises so the activity is retried."""

    name = "webhook"

    def __init__(self, url: str, secret: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.transport = transport

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt:
        payload = {"type": "deployment", **deployment.model_dump(mode="json")}
        answer = await post_signed(self.url, self.secret, deployment.deployment_key, payload,
                                   timeout=self.timeout, transport=self.transport)
        remote_id = answer.get("deployment_id") if isinstance(answer, dict) else None
        return DeploymentReceipt(deployment_id=str(remote_id or _deployment_id(deployment.deployment_key)),
                                 target=self.name, details={"url": self.url})


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


def build_promotion_target(settings: Settings) -> PromotionTarget:
    if settings.promotion_target == "webhook":
        if not settings.webhook_url or not settings.webhook_secret:
            raise ValueError("PROGRESSION_WEBHOOK_URL and PROGRESSION_WEBHOOK_SECRET are required with "
                             "PROGRESSION_PROMOTION_TARGET=webhook")
        return WebhookPromotionTarget(settings.webhook_url, settings.webhook_secret)
    return RecordingPromotionTarget()
