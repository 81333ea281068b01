"""`python manage.py outbox_relay`: publish committed outbox events to Dramatiq.

Not yet implemented: this command waits so that `make run` and compose have a process to run.
"""

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Publish committed outbox events to Dramatiq (placeholder: not yet implemented)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Exit immediately instead of waiting.")

    def handle(self, *args: Any, once: bool = False, **options: Any) -> None:
        logger.warning("The outbox relay is not implemented yet: events stay in the outbox table.")
        if once:
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
