"""The relay figures' three consumers: every event is routed to them, their messages never consumed.

They are declared switched off, here, on import: only the bench's settings turn them on
(OUTBOX_CONSUMERS, `override_settings` in the bench's own process, the environment in the relays it
starts). tooling/consumers.py imports this module, so that a relay the bench starts as a process of
its own (`outbox_relay`, which knows the consumers the apps' `consumers` modules declare) knows them
too: without them it would route no event to them, and refuse OUTBOX_CONSUMERS naming them
(outbox.E005).
"""

from outbox import consumer
from outbox.consume import declare

BENCH_QUEUE = "outbox_bench"
BENCH_CONSUMERS = ["bench_inventory", "bench_email", "bench_audit"]


def _discard(event: object) -> None:
    """The bench consumers' body: their messages are never consumed, only counted by the relay."""


def bench_consumers_declare() -> None:
    """Declare the bench consumers, switched off, unless they are declared already."""
    for name in BENCH_CONSUMERS:
        if declare.declaration(name) is None:
            consumer(name, events="*", queue=BENCH_QUEUE, enabled=False)(_discard)


bench_consumers_declare()
