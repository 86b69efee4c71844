"""Mail to a person's registered address: enrollment codes and address-change notices.

Out of band on purpose: the admin who creates an enrollment never sees its code, only where it went
(``a***@bank.example``). Sent with the standard library's SMTP client off the event loop; no SMTP host
configured means nothing can be sent, and the caller refuses (503 ``mail_unavailable``) rather than show a code.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

from engine.settings import Settings


class MailUnavailable(Exception):
    """The message could not be handed to the SMTP server (none configured, refused, or unreachable)."""


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_host)

    def _send_sync(self, message: EmailMessage) -> None:
        s = self.settings
        assert s.smtp_host is not None
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username and s.smtp_password:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(message)

    async def send(self, *, to: str, subject: str, body: str) -> None:
        if not self.configured:
            raise MailUnavailable("no SMTP server is configured (PROGRESSION_SMTP_HOST)")
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        try:
            await asyncio.to_thread(self._send_sync, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailUnavailable(f"the SMTP server did not accept the message: {exc}") from exc
