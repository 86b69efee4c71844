"""Notifications: gate opened, escalated, decided, finished.

The activity that sends them also appends a ``notification.sent`` audit event, so who was
told what is part of the record whatever the channel. ``LogNotifier`` (default) writes a log
line; ``WebhookNotifier`` POSTs signed JSON (same signing as the webhook promotion target).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from activities.contract import Notification
from activities.webhook import SignedWebhook

if TYPE_CHECKING:
    from engine.settings import Settings

log = logging.getLogger("progression.notify")


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


class WebhookNotifier(SignedWebhook):
    name = "webhook"

    async def send(self, notification: Notification) -> None:
        await self.post(notification.event_id, {"type": "notification", **notification.model_dump(mode="json")})


def build_notifier(settings: Settings) -> Notifier:
    """Webhook notifications when a webhook URL and secret are configured, log lines otherwise."""
    if settings.webhook_url and settings.webhook_secret:
        return WebhookNotifier(settings.webhook_url, settings.webhook_secret)
    return LogNotifier()
