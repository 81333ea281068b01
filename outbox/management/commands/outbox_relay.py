"""`python manage.py outbox_relay`: publish committed outbox events to Dramatiq."""

from typing import Any

import dramatiq
from django.core.management.base import BaseCommand, CommandError, CommandParser
from dramatiq.brokers.stub import StubBroker

from outbox.relay.loop import Relay


class Command(BaseCommand):
    help = (
        "Publish committed outbox events to Dramatiq. Run as many as you like, on any machines. "
        "On the embedded default (in-process broker) it also runs the consumers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, help="Events claimed at a time (OUTBOX_RELAY_BATCH_SIZE).")
        parser.add_argument("--once", action="store_true", help="Exit when the backlog is empty.")
        parser.add_argument("--name", help="This relay's name in claims (default: host:pid).")

    def handle(self, *args: Any, batch_size: int | None, once: bool, name: str | None, **options: Any) -> None:
        relay = Relay()
        if batch_size is not None:
            if batch_size < 1:
                raise CommandError(f"--batch-size must be at least 1 (got {batch_size}).")
            relay.batch_size = batch_size
        if name:
            relay.name = name
        relay.install_signal_handlers()
        broker = dramatiq.get_broker()
        worker = None
        if isinstance(broker, StubBroker):
            # The in-process broker's messages exist only in this process: run the consumers here.
            from outbox.relay.routing import load_actors

            load_actors()
            worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
            worker.start()
        try:
            stats = relay.run(once=once)
        finally:
            if worker is not None:
                if once:
                    for queue in broker.get_declared_queues():
                        broker.join(queue, timeout=60_000)
                worker.stop()
        self.stdout.write(f"Relayed {stats.published} events in {stats.batches} batches.")
