"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives: enrollment codes and notices are
mailed to people, so the tests read them from a mailbox, as the person would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from testing.processes import free_port

CODE_RE = re.compile(r"\benr_[A-Za-z0-9_-]+")


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str


@dataclass
class Mailbox:
    host: str
    port: int
    received: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook
        message: Message = message_from_bytes(envelope.content)
        payload = message.get_payload(decode=True)
        body = payload.decode("utf-8") if isinstance(payload, bytes) else str(message.get_payload())
        self.received.append(Mail(to=list(envelope.rcpt_tos), subject=str(message["Subject"]), body=body))
        return "250 OK"

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.received if address in m.to]

    def last_code(self, address: str) -> str:
        """The enrollment code in the newest mail to ``address``."""
        for mail in reversed(self.to(address)):
            if found := CODE_RE.search(mail.body):
                return found.group(0)
        raise AssertionError(f"no enrollment code was mailed to {address}: {self.received}")

    def all_text(self) -> str:
        return "\n".join(m.body for m in self.received)

    @property
    def settings(self) -> dict[str, Any]:
        return {"smtp_host": self.host, "smtp_port": self.port}


@contextmanager
def mailbox() -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 (its own thread) for the duration of the block."""
    box = Mailbox(host="127.0.0.1", port=free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
