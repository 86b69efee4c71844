"""Notifications: gate opened, escalated, decided, finished.

The activity that sends them also appends a ``notification.sent`` audit event, so who was
told what is part of the record whatever the channel. ``LogNotifier`` (default) writes a log
line; ``WebhookNotifier`` POSTs signed JSON (same signing as the webhook promotion target).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from activities.promotion import post_signed
from engine.policy import Role

if TYPE_CHECKING:
    from engine.settings import Settings

log = logging.getLogger("progression.notify")

NotificationKind = Literal["gate_opened", "escalated", "decided", "finished", "reopened", "finding", "exception",
                           "flagged"]


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str  # stable across retries; also the id of the notification.sent audit event
    kind: NotificationKind
    progression_id: str
    model_id: str
    stage: str | None = None
    roles: list[Role] = Field(default_factory=list)  # who should act or know
    message: str


class Notifier(Protocol):
    name: str
    # Optional ``local: bool`` attribute: True when delivery is in-process and cannot fail, so the
    # ``notification.sent`` events are written in the same transaction as the events that caused them.

    async def send(self, notification: Notification) -> None: ...


class LogNotifier:
    name = "log"
    local = True  # a log line: recorded with the events that caused it, in one transaction

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)
        log.info("notify %s %s [%s]: %s", notification.kind, notification.progression_id,
                 ",".join(r.value for r in notification.roles), notification.message)


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, secret: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.transport = transport

    async def send(self, notification: Notification) -> None:
        payload = {"type": "notification", **notification.model_dump(mode="json")}
        await post_signed(self.url, self.secret, notification.event_id, payload, timeout=self.timeout,
                          transport=self.transport)


def build_notifier(settings: Settings) -> Notifier:
    """Webhook notifications when a webhook URL and secret are configured, log lines otherwise."""
    if settings.webhook_url and settings.webhook_secret:
        return WebhookNotifier(settings.webhook_url, settings.webhook_secret)
    return LogNotifier()
