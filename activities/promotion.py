"""Promotion targets: where a stage action (``deploy``) goes.

The default records the deployment (the audit event ``deployment.recorded`` is the record);
the webhook target POSTs HMAC-signed JSON to a configured URL so a bank's deployment system
can act. Both are called from an activity, so a failure (non-2xx, network) raises and
Temporal retries; ``deployment_key`` is stable across retries so the receiver can deduplicate.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

from activities.contract import Deployment, DeploymentReceipt
from activities.webhook import SignedWebhook

if TYPE_CHECKING:
    from engine.settings import Settings


class PromotionTarget(Protocol):
    name: str

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt: ...


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


class WebhookPromotionTarget(SignedWebhook):
    """POSTs the deployment as signed JSON; any non-2xx answer raises so the activity is retried."""

    name = "webhook"

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt:
        payload = {"type": "deployment", **deployment.model_dump(mode="json")}
        answer = await self.post(deployment.deployment_key, payload)
        remote_id = answer.get("deployment_id") if isinstance(answer, dict) else None
        return DeploymentReceipt(deployment_id=str(remote_id or _deployment_id(deployment.deployment_key)),
                                 target=self.name, details={"url": self.url})


def build_promotion_target(settings: Settings) -> PromotionTarget:
    if settings.promotion_target == "webhook":
        if not settings.webhook_url or not settings.webhook_secret:
            raise ValueError("PROGRESSION_WEBHOOK_URL and PROGRESSION_WEBHOOK_SECRET are required with "
                             "PROGRESSION_PROMOTION_TARGET=webhook")
        return WebhookPromotionTarget(settings.webhook_url, settings.webhook_secret)
    return RecordingPromotionTarget()
