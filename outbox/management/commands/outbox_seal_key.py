"""`python manage.py outbox_seal_key`: print the event log's seal key as OUTBOX_SEAL_KEY takes it."""

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from outbox.eventlog.sealing import KEY_BYTES, key_setting, seal_key


class Command(BaseCommand):
    # It must run to print a new key while the configured one is malformed (check outbox.E003).
    requires_system_checks: list[str] = []
    help = (
        "Print the seal key in use as an OUTBOX_SEAL_KEY value. Set that value on every machine "
        "to keep the seals valid when SECRET_KEY changes; --new prints a fresh key for a new log."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--new", action="store_true", help="Print a new random key instead (only for a log with no seals yet)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["new"]:
            self.stdout.write(f"OUTBOX_SEAL_KEY={key_setting(secrets.token_bytes(KEY_BYTES))}")
            self.stderr.write(
                "A new key: seals made with another key report CHANGED under it, and events tagged with "
                "another key are refused. Use it only for a new log with no events yet; keep it secret, "
                "the same on every machine."
            )
            return
        self.stdout.write(f"OUTBOX_SEAL_KEY={key_setting(seal_key())}")
        configured = getattr(settings, "OUTBOX_SEAL_KEY", "")
        source = "OUTBOX_SEAL_KEY" if configured else "SECRET_KEY (OUTBOX_SEAL_KEY is unset)"
        self.stderr.write(
            f"The key in use, from {source}. Set this value as OUTBOX_SEAL_KEY on every machine, "
            "and keep it secret: the existing seals then verify whatever SECRET_KEY becomes."
        )
