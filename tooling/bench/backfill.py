"""The backfill figure for `outbox_bench`: how fast `outbox_backfill` gives a consumer declared
after the fact the retained history.

A no-op consumer (switched off but for the measurement) is backfilled over the newest `events`
published events: each chunk creates its deliveries and cursor in one transaction and publishes
their messages to Redis, where no worker reads them; they are dropped after the run. What is
timed is the backfill's own walk, which is what bounds how soon the consumer has the history.
"""

import time
from typing import Any

import dramatiq
from django.test.utils import override_settings

from outbox import consumer
from outbox.consume import declare
from outbox.ops import backfill
from tooling.bench.relay import history_create
from tooling.database import max_event_id

CONSUMER = "bench_backfill"
QUEUE = "outbox_bench_backfill"


def _discard(event: object) -> None:
    """The consumer's body: its messages are never consumed."""


def backfill_figures(*, events: int) -> dict[str, Any]:
    """Measure backfill_events_per_s over the newest `events` events (made first when fewer exist)."""
    if declare.declaration(CONSUMER) is None:
        consumer(CONSUMER, events="*", queue=QUEUE, enabled=False)(_discard)
    broker = dramatiq.get_broker()
    broker.flush(QUEUE)
    existing = max_event_id()
    if existing < events:
        history_create(n=events - existing)
    after = max_event_id() - events
    try:
        with override_settings(OUTBOX_CONSUMERS={CONSUMER: {"enabled": True}}):
            record, _ = backfill.begin(CONSUMER, after=after, requested_by="command:outbox_bench")
            started = time.perf_counter()
            record = backfill.run(record)
            elapsed = time.perf_counter() - started
    finally:
        broker.flush(QUEUE)
    return {
        "backfill_events_per_s": round(record.created / elapsed),
        "backfill_events": record.created,
        "backfill_seconds": round(elapsed, 2),
    }
