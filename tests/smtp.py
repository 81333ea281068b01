"""A real SMTP server on loopback (tooling.processes.smtp_server), recording every message it accepts."""

import email
import email.message
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tooling import processes


@dataclass
class Mailbox:
    """What the server accepted, in order; and a switch to refuse everything with a 5xx or 4xx."""

    host: str = processes.LOOPBACK
    port: int = 0
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    refuse_with: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_with:
            return self.refuse_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.messages]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """Run an SMTP server on a free loopback port until the block ends; yield its mailbox."""
    mailbox = Mailbox()
    with processes.smtp_server(mailbox) as server:
        mailbox.host, mailbox.port = server.host, server.port
        yield mailbox
