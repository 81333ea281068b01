"""Pipeline figures for `outbox_bench`: events handled end to end per second, the same with
every consumer ordered (`ordered_pipeline_ratio`), and the e-mail consumer's duplicate window.

The traffic is made through the services, as the admin makes it: products with their stock
receipts, customers, then orders placed with three lines each, one in ten cancelled. Its events
are a backlog that one relay and two workers, each its own process, drain through the broker
BROKER_URL selects (Redis or RabbitMQ) into the three consumers; their e-mails go to a real SMTP
server (aiosmtpd) running in this process.
"""

import json
import random
import statistics
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import connection
from django.test.utils import override_settings

from core import services
from core.models import Order
from outbox import conf
from outbox.consume.declare import enabled, queue_of
from outbox.models import Event
from outbox.testing import deliver
from tooling.bench.relay import percentile
from tooling.bench.suite import settle_tables
from tooling.brokers import ToolBroker, configured_kind, shared_broker
from tooling.database import max_event_id, routed_deliveries
from tooling.processes import NoticeCounter, SmtpServer, child_env, manage_start, quiet, smtp_server, stop_children

Smtp = SmtpServer[NoticeCounter]

# Two workers, as compose runs them, on a 2-core machine that also runs PostgreSQL, the relay
# and the SMTP server: inventory on one of its own (its messages lock sources and products in one
# global order, so its threads wait for each other but never deadlock), the e-mail and audit-log
# consumers on the other, two processes whose threads overlap their waits on PostgreSQL and SMTP.
INVENTORY_THREADS = 2
PROCESSES = 2
THREADS = 4
LINES_PER_ORDER = 3
CANCEL_EVERY = 10  # one order in ten is cancelled
PRODUCTS = 30
ORDERS_PER_CUSTOMER = 5
# On Redis, the bench's relays and workers use a database of their own: the test suite empties its
# database (15) as it runs, which would lose the bench's messages mid-run. On RabbitMQ they use
# BROKER_URL's virtual host.
REDIS_DB = 14
# Each poll costs PostgreSQL about 3 ms at 20,000 deliveries: every 0.1 s, 3% of a core, for a
# clock good to 0.1 s.
POLL_SECONDS = 0.1
STARTUP_SECONDS = 60.0

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


class PipelineError(RuntimeError):
    """The pipeline could not be measured: a process did not start, or the backlog did not drain."""


# --- traffic ----------------------------------------------------------------------------------


def catalogue_create(*, prefix: str, count: int, stock: int, rng: random.Random) -> list[str]:
    """Create `count` products, each with a stock receipt of `stock`; return their SKUs."""
    skus = [f"{prefix}-{i:03d}" for i in range(count)]
    for sku in skus:
        services.product_create(sku=sku, name=f"Product {sku}", price=Decimal(rng.randrange(100, 20_000)) / 100)
        services.stock_receive(sku=sku, quantity=stock, note="opening stock")
    return skus


def orders_place(*, count: int, skus: list[str], rng: random.Random, label: str) -> list[Order]:
    """Place `count` orders of three lines each, spread over one customer per five orders."""
    customers = [
        services.customer_create(name=f"{label} customer {i}", email=f"{label}-{i}@example.com")
        for i in range(max(1, count // ORDERS_PER_CUSTOMER))
    ]
    return [
        services.order_create(
            customer=customers[i % len(customers)],
            lines=[
                services.LineRequest(sku=sku, quantity=rng.randint(1, 3)) for sku in rng.sample(skus, LINES_PER_ORDER)
            ],
            place=True,
        )
        for i in range(count)
    ]


def traffic_create(*, orders: int, seed: int = 1, label: str = "pipeline") -> tuple[int, int]:
    """Make the pipeline's traffic through the services; return (orders placed, orders cancelled).
    Each `label` makes products and customers of its own."""
    rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not security
    # Stock for every line at the largest quantity: no backorder warnings in the workers' logs.
    prefix = "PIPE" if label == "pipeline" else f"PIPE-{label}"
    skus = catalogue_create(prefix=prefix, count=PRODUCTS, stock=orders * LINES_PER_ORDER * 3, rng=rng)
    placed = orders_place(count=orders, skus=skus, rng=rng, label=label)
    cancelled = placed[::CANCEL_EVERY]
    for order in cancelled:
        services.order_set_status(order=order, status=Order.Status.CANCELLED)
    return len(placed), len(cancelled)


# --- the database's view of the run -----------------------------------------------------------


def delivery_counts(*, after: int) -> dict[tuple[str, str], int]:
    """Return the deliveries of the events after id `after`, counted by (consumer, status)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT consumer, status, count(*) FROM outbox_delivery WHERE event_id > %s GROUP BY consumer, status",
            [after],
        )
        return {(consumer, status): count for consumer, status, count in cursor.fetchall()}


def retried_deliveries(*, after: int) -> int:
    """Return how many deliveries of the events after id `after` took more than one attempt."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_delivery WHERE event_id > %s AND attempts > 1", [after])
        return int(cursor.fetchone()[0])


# --- the processes ----------------------------------------------------------------------------


def log_tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_line(log: Path, text: str, *, count: int, child: subprocess.Popen[bytes], what: str) -> None:
    """Wait until `text` shows `count` times in the child's log; fail if it exits or takes too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while log.read_text(errors="replace").count(text) < count:
        if child.poll() is not None:
            raise PipelineError(f"The {what} exited with code {child.returncode} on start:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise PipelineError(f"The {what} did not start within {STARTUP_SECONDS:.0f} s:\n{log_tail(log)}")
        time.sleep(0.01)


def _drain(*, after: int, expected: dict[str, int], start: float, timeout: float, logs: list[Path]) -> dict[str, float]:
    """Wait until every routed delivery after id `after` is done; return the seconds each consumer took."""
    drained: dict[str, float] = {}
    deadline = start + timeout
    while True:
        counts = delivery_counts(after=after)
        now = time.perf_counter()
        for consumer, wanted in expected.items():
            if consumer not in drained and counts.get((consumer, "done"), 0) >= wanted:
                drained[consumer] = now - start
        if len(drained) == len(expected):
            return drained
        dead = {key: n for key, n in counts.items() if key[1] == "dead"}
        if dead or now > deadline:
            progress = ", ".join(f"{c} {counts.get((c, 'done'), 0)}/{n} done" for c, n in sorted(expected.items()))
            reason = f"deliveries are dead ({dead})" if dead else f"the backlog did not drain within {timeout:.0f} s"
            tails = "\n".join(f"--- {log.name}\n{log_tail(log)}" for log in logs)
            raise PipelineError(f"Pipeline stopped: {reason}; {progress}.\n{tails}")
        time.sleep(POLL_SECONDS)


def bench_broker() -> ToolBroker:
    """Return the broker BROKER_URL selects, for the bench's relays and workers (on Redis, its
    database REDIS_DB of the same server), emptied: messages left by an interrupted run name event
    ids that the new scratch database reuses."""
    if configured_kind() not in ("redis", "rabbitmq"):
        raise PipelineError(
            "The bench's relays and workers run as processes of their own, which need a broker: set "
            "BROKER_URL=redis://127.0.0.1:6379/0 (Redis) or BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ (RabbitMQ)."
        )
    broker = shared_broker(redis_db=REDIS_DB)
    broker.empty()
    return broker


def pipeline_throughput(
    *,
    orders: int,
    processes: int,
    threads: int,
    inventory_threads: int,
    smtp: Smtp,
    label: str = "pipeline",
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Drain the events of `orders` orders' traffic with a relay and the workers in their own
    processes; return events per second, counted until every routed delivery is done.
    `env_extra` adds to the children's environment (OUTBOX_CONSUMERS, for the ordered arm).

    The clock starts when the relay reports it has started, the workers being up by then: what is
    timed is the draining, not Python's start-up.
    """
    if connection.vendor != "postgresql":
        raise PipelineError("The pipeline group needs PostgreSQL (DATABASE_URL).")
    broker = bench_broker()
    after = max_event_id()
    placed, cancelled = traffic_create(orders=orders, label=label)
    events, expected = routed_deliveries(after=after)
    settle_tables()
    received_before = smtp.handler.received
    env = child_env(
        **broker.env(),
        EMAIL_BACKEND=SMTP_BACKEND,
        EMAIL_HOST=smtp.host,
        EMAIL_PORT=str(smtp.port),
        PYTHONUNBUFFERED="1",
        **(env_extra or {}),
    )
    # Inventory has a worker of its own, as in compose.yaml; the other serves every other queue the
    # declarations name (e-mail, the audit log and the outbox's own seal chain among them).
    others = sorted({queue_of(declared) for declared in enabled()} - {"inventory"})
    workers = {
        "inventory": (["--queues", "inventory", "--processes", "1", "--threads", str(inventory_threads)], 1),
        "others": (
            ["--queues", *others, "--processes", str(processes), "--threads", str(threads)],
            processes,
        ),
    }
    # At 100 events/s, a tenth of the goal, the drain still ends in time.
    timeout = max(120.0, events / 100)
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        logs = {name: Path(tmp) / f"{name}.log" for name in [*workers, "relay"]}
        children: list[subprocess.Popen[bytes]] = []
        try:
            for name, (args, count) in workers.items():
                worker = manage_start(["rundramatiq", *args], env=env, log=logs[name])
                children.append(worker)
                _wait_for_line(logs[name], "ready for action", count=count, child=worker, what=f"{name} worker")
            relay = manage_start(["outbox_relay", "--name", "bench-pipeline"], env=env, log=logs["relay"])
            children.append(relay)
            _wait_for_line(logs["relay"], "Relay bench-pipeline started", count=1, child=relay, what="relay")
            start = time.perf_counter()
            drained = _drain(after=after, expected=expected, start=start, timeout=timeout, logs=list(logs.values()))
            elapsed = max(drained.values())
        finally:
            stop_children(children)
    counts = delivery_counts(after=after)
    return {
        "pipeline_events_per_s": round(events / elapsed),
        "pipeline_events": events,
        "pipeline_seconds": round(elapsed, 2),
        **{f"pipeline_drain_s_{consumer}": round(seconds, 2) for consumer, seconds in sorted(drained.items())},
        "pipeline_emails_received": smtp.handler.received - received_before,
        "pipeline_emails_expected": placed + cancelled,
        "pipeline_failed_deliveries": sum(n for (_, status), n in counts.items() if status in ("failed", "dead")),
        "pipeline_retried_deliveries": retried_deliveries(after=after),
    }


# --- ordered consumers ------------------------------------------------------------------------


def every_consumer(*, ordered: bool) -> dict[str, str]:
    """The children's OUTBOX_CONSUMERS: every enabled consumer ordered, or none of them."""
    return {"OUTBOX_CONSUMERS": json.dumps({declared.name: {"ordered": ordered} for declared in enabled()})}


def ordered_ratio(
    *, orders: int, processes: int, threads: int, inventory_threads: int, rounds: int, smtp: Smtp
) -> dict[str, Any]:
    """Drain the same traffic with every consumer ordered and with none, `rounds` times each,
    interleaved (the arm that goes first alternates, so that a drift of the machine weighs on both);
    return the ratio of the medians of their events per second."""
    rates: dict[str, list[int]] = {"unordered": [], "ordered": []}
    drains: dict[str, list[dict[str, float]]] = {"unordered": [], "ordered": []}
    for n in range(rounds):
        arms = ("unordered", "ordered") if n % 2 == 0 else ("ordered", "unordered")
        for arm in arms:
            figures = pipeline_throughput(
                orders=orders,
                processes=processes,
                threads=threads,
                inventory_threads=inventory_threads,
                smtp=smtp,
                label=f"{arm}-{n}",
                env_extra=every_consumer(ordered=arm == "ordered"),
            )
            if figures["pipeline_failed_deliveries"]:
                raise PipelineError(f"The {arm} arm left {figures['pipeline_failed_deliveries']} deliveries failed.")
            rates[arm].append(figures["pipeline_events_per_s"])
            drains[arm].append(
                {
                    k.removeprefix("pipeline_drain_s_"): v
                    for k, v in figures.items()
                    if k.startswith("pipeline_drain_s_")
                }
            )
        settle_tables()
    ordered, unordered = statistics.median(rates["ordered"]), statistics.median(rates["unordered"])
    return {
        "ordered_pipeline_ratio": round(ordered / unordered, 3),
        "ordered_pipeline_events_per_s": round(ordered),
        "unordered_pipeline_events_per_s": round(unordered),
        "ordered_pipeline_rates": rates,
        # Per drain, the seconds each consumer took (the slowest one is the drain's).
        "ordered_pipeline_drain_s": drains,
        "ordered_pipeline_consumers": sorted(declared.name for declared in enabled()),
    }


# --- the e-mail duplicate window --------------------------------------------------------------


def email_duplicate_window(*, samples: int, smtp: Smtp) -> dict[str, float]:
    """Send `samples` order confirmations in this process, one SMTP connection for all; return
    the p50/p99 milliseconds from the SMTP server's accept to the commit of the `sent` record.

    A worker that dies inside that window sends the e-mail again on retry (outbox/consume/external.py).
    """
    rng = random.Random(2)  # noqa: S311 - reproducible traffic, not security
    skus = catalogue_create(prefix="WINDOW", count=LINES_PER_ORDER, stock=samples * 3, rng=rng)
    orders = orders_place(count=samples, skus=skus, rng=rng, label="window")
    events = list(
        Event.objects.filter(
            event_type="order.placed", aggregate_type="order", aggregate_id__in=[str(o.pk) for o in orders]
        ).order_by("id")
    )
    ids = [event.id for event in events]
    windows: list[float] = []
    smtp_settings = override_settings(EMAIL_BACKEND=SMTP_BACKEND, EMAIL_HOST=smtp.host, EMAIL_PORT=smtp.port)
    with smtp_settings, quiet("outbox.consumer"):
        # As a worker runs the e-mail consumer: messages of the relay's size, one SMTP session each.
        for start in range(0, len(ids), conf.batch_size()):
            outcome = deliver("email", ids[start : start + conf.batch_size()])
            windows.extend(outcome.windows.values())
    sent = [w * 1000 for w in windows]
    if len(sent) != samples:
        raise PipelineError(f"Expected {samples} confirmations to be sent; {len(sent)} were.")
    return {
        "email_duplicate_window_ms_p50": round(percentile(sent, 0.50), 3),
        "email_duplicate_window_ms_p99": round(percentile(sent, 0.99), 3),
    }


def pipeline_figures(
    *,
    orders: int,
    processes: int,
    threads: int,
    inventory_threads: int,
    window_samples: int,
    ordered_rounds: int = 0,
    throughput: bool = True,
) -> dict[str, Any]:
    """Measure the pipeline's throughput, with `ordered_rounds` the ordered against the unordered
    one, then the e-mail duplicate window, with one SMTP server."""
    result: dict[str, Any] = {}
    with smtp_server(NoticeCounter()) as smtp:
        if throughput:
            result.update(
                pipeline_throughput(
                    orders=orders, processes=processes, threads=threads, inventory_threads=inventory_threads, smtp=smtp
                )
            )
            # After the workers are stopped: none of them sends these confirmations meanwhile.
            result.update(email_duplicate_window(samples=window_samples, smtp=smtp))
        if ordered_rounds:
            result.update(
                ordered_ratio(
                    orders=orders,
                    processes=processes,
                    threads=threads,
                    inventory_threads=inventory_threads,
                    rounds=ordered_rounds,
                    smtp=smtp,
                )
            )
    return result
