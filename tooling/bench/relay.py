"""Relay figures for `outbox_bench`: throughput, cost of history, memory.

The backlog and the history are written with set-based SQL (generate_series), not through saves:
what is measured is the relay, not the setup. Events are routed to three bench consumers
(tooling/bench/consumers.py) whose messages go to the configured broker, Redis or RabbitMQ, and are
dropped after each drain (on Redis their keys deleted, on RabbitMQ their queue purged).
"""

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
from django.db import DatabaseError, connection
from django.test.utils import override_settings

from outbox.consume import declare
from outbox.relay.loop import Relay
from tooling.bench.consumers import BENCH_CONSUMERS, BENCH_QUEUE, bench_consumers_declare
from tooling.database import max_event_id
from tooling.processes import child_env, manage_start, stop_children, wait_until


def bench_queue_flush() -> None:
    """Drop the bench consumers' messages from this process's broker: on Redis their keys are
    deleted, on RabbitMQ their queue (with its delay and dead-letter queues) is purged. Purged, not
    deleted: this process's broker has declared it, and would find it gone on its next publish."""
    dramatiq.get_broker().flush(BENCH_QUEUE)


def bench_routes() -> dict[str, dict[str, bool]]:
    """OUTBOX_CONSUMERS that route every event to the bench consumers, and to no other."""
    return {c.name: {"enabled": c.name in BENCH_CONSUMERS} for c in declare.declared()}


# Inserts n events named <prefix><g>; the statements below append what to do with their ids.
_EVENTS = """
WITH e AS (
    INSERT INTO outbox_event
        (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor, correlation_id, source)
    SELECT gen_random_uuid(), 'order_line.added', 'order', %(prefix)s || g, 1,
           jsonb_build_object('state', jsonb_build_object('id', g, 'order_id', g, 'product_id', 1, 'quantity', 1,
                                                          'unit_price', '9.90')),
           'system', 'bench', 'command:outbox_bench'
    FROM generate_series(1, %(n)s) AS g
    RETURNING id, type
)
"""

# Both are constants built from constants: nothing from outside reaches the SQL text.
_BACKLOG = _EVENTS + "INSERT INTO outbox_pending (event_id, type, claimed_by, claims) SELECT id, type, '', 0 FROM e"  # noqa: S608
_HISTORY = (
    _EVENTS
    + """
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, done_at, updated_at)
SELECT e.id, c, 'done', 1, 1, '', now(), now(), now() FROM e, unnest(%(consumers)s::text[]) AS c
"""
)


def backlog_create(*, n: int, prefix: str) -> None:
    """Add `n` committed, unpublished events (with their claimable backlog rows)."""
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOG, {"n": n, "prefix": prefix})


def history_create(*, n: int, chunk: int = 250_000) -> None:
    """Add `n` settled events: published and done by each of the three consumers."""
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        with connection.cursor() as cursor:
            cursor.execute(_HISTORY, {"n": size, "prefix": f"history-{start}-", "consumers": BENCH_CONSUMERS})
    # A table that old has been vacuumed: do it now rather than let autovacuum do it mid-measurement.
    with connection.cursor() as cursor:
        for table in ("outbox_event", "outbox_delivery", "outbox_pending", "outbox_aggregate"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def _peak_rss() -> Iterator[list[float]]:
    """Sample this process's resident memory every 50 ms; yield a list that ends holding the peak."""
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join(timeout=5)
        peak[0] = max(peak[0], _rss_mb())


def relay_drain(*, batch_size: int) -> tuple[int, float, float]:
    """Drain the backlog with one relay; return (events, seconds, peak RSS in MB)."""
    # No sweeping: nothing consumes the bench's messages, and redelivering them is not measured here.
    relay = Relay(batch_size=batch_size, name="bench", redelivery=float(10**9))
    with _peak_rss() as peak:
        start = time.perf_counter()
        stats = relay.run(once=True)
        seconds = time.perf_counter() - start
    # Each drain's messages (3 per batch; 1,500 for the memory figure's million events) are
    # dropped at once: nothing consumes them, and they would pile up in the broker otherwise.
    bench_queue_flush()
    return stats.published, seconds, peak[0]


def drain_prepare() -> bool:
    """Vacuum the backlog table and write a checkpoint, so that each timed drain starts alike.

    Every drained event leaves two dead row versions in outbox_pending (its claim and its
    delete), at the low end of the index that claims walk in id order. Left to autovacuum (or to
    nothing, where it is off), a drain pays for the dead rows of the drains before it or not, by
    chance: claims measured here at 30 ms a batch after a vacuum and 56-62 ms without one, and
    slowdowns of 0.78 to 0.98 from that alone. Vacuuming before each drain makes the figure
    compare the history, as it should.

    The checkpoint writes out what the setup left dirty (the history is millions of rows written
    a moment before): without it, the drain after the history shares the disk and the buffer
    pool with the writing of the history, which a shop's history, written over months, never
    costs its relay.

    Returns whether the checkpoint was written: it takes a superuser or the pg_checkpoint role.
    """
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) outbox_pending")
        try:
            cursor.execute("CHECKPOINT")
        except DatabaseError:
            return False
    return True


def relay_rates(*, backlog: int, batch_size: int, label: str) -> tuple[list[float], bool]:
    """Return the events per second of three drains of a `backlog`-event backlog, and whether
    each started from a checkpoint."""
    rates, checkpointed = [], True
    for run in range(3):
        backlog_create(n=backlog, prefix=f"{label}-{run}-")
        checkpointed = drain_prepare() and checkpointed
        events, seconds, _ = relay_drain(batch_size=batch_size)
        rates.append(events / seconds)
    return rates, checkpointed


def relay_figures(*, backlog: int, history: int, rss_backlog: int, batch_size: int) -> dict[str, Any]:
    """Measure relay_events_per_s, relay_slowdown_with_history and relay_rss_mb."""
    bench_consumers_declare()
    with override_settings(OUTBOX_CONSUMERS=bench_routes()):
        empty_rates, empty_checkpointed = relay_rates(backlog=backlog, batch_size=batch_size, label="empty")
        history_create(n=history)
        history_rates, history_checkpointed = relay_rates(backlog=backlog, batch_size=batch_size, label="full")
        backlog_create(n=rss_backlog, prefix="rss-")
        _, _, peak = relay_drain(batch_size=batch_size)
    empty_rate, history_rate = statistics.median(empty_rates), statistics.median(history_rates)
    return {
        "relay_events_per_s": round(empty_rate),
        "relay_events_per_s_with_history": round(history_rate),
        "relay_slowdown_with_history": round(history_rate / empty_rate, 3),
        # Each drain's rate, in the order run: the spread behind the two medians.
        "relay_drain_rates": {"empty": [round(r) for r in empty_rates], "history": [round(r) for r in history_rates]},
        # False where the database user may not write a checkpoint: the drains then share the
        # disk with the writing of the history (see drain_prepare).
        "relay_drains_checkpointed": empty_checkpointed and history_checkpointed,
        "relay_rss_mb": round(peak, 1),
    }


_LATENCY = """
SELECT extract(epoch FROM d.started_at - e.created_at) * 1000
FROM outbox_delivery d JOIN outbox_event e ON e.id = d.event_id
WHERE d.consumer = %s AND d.status = 'done' AND e.id > %s
"""


def percentile(values: list[float], fraction: float) -> float:
    """Return the value at `fraction` (0..1) of the sorted values (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def e2e_latency(*, rate: float, seconds: float) -> dict[str, float]:
    """Commit events at `rate` per second while a relay and a worker run as their own processes;
    return the p50/p99 milliseconds from commit to the consumer's start.

    The start is the event's `created_at` (the database clock, stamped in the commit's round trip);
    the end is the delivery's `started_at`, when the worker began the message (its clock: the same
    machine's here).
    """
    from core import services
    from core.models import Customer
    from tooling.bench.pipeline import bench_broker

    # The bench's broker (on Redis, its own database), emptied first: messages left by an earlier
    # run would keep the worker busy (and the latency high) while it works through them.
    env = child_env(**bench_broker().env())
    first_id = max_event_id()
    customer = services.customer_create(name="Latency", email="latency@example.com")
    children = [
        manage_start(["outbox_relay"], env=env),
        manage_start(["rundramatiq", "--processes", "1", "--threads", "4"], env=env),
    ]
    try:
        # Both are up and the path works.
        wait_until(lambda: _done_after(first_id) >= 1, timeout=60, what="the relay and worker to start")
        start_id = max_event_id()
        count = int(rate * seconds)
        interval = 1.0 / rate
        next_at = time.monotonic()
        for i in range(count):
            next_at += interval
            customer.name = f"Latency {i}"
            customer.save(update_fields=["name"])
            time.sleep(max(0.0, next_at - time.monotonic()))
        wait_until(lambda: _done_after(start_id) >= count, timeout=60 + seconds, what="the relay and worker to finish")
    finally:
        stop_children(children)
    with connection.cursor() as cursor:
        cursor.execute(_LATENCY, ["audit_log", start_id])
        latencies = [float(row[0]) for row in cursor.fetchall()]
    Customer.objects.filter(pk=customer.pk).delete()
    return {
        "e2e_latency_ms_p50": round(percentile(latencies, 0.50), 2),
        "e2e_latency_ms_p99": round(percentile(latencies, 0.99), 2),
    }


def _done_after(event_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM outbox_delivery WHERE consumer = 'audit_log' AND status = 'done' AND event_id > %s",
            [event_id],
        )
        return int(cursor.fetchone()[0])
