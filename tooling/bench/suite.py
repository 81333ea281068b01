"""The benchmark suite behind `python manage.py outbox_bench`.

Each figure is measured side by side in one run on a scratch database, created for the run and
dropped after it, so that the numbers compare like with like and no real data is touched.
"""

import functools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import django
import dramatiq
from django.conf import settings
from django.db import connection, transaction

from core import services
from core.models import Customer, Order, OrderLine, Product
from outbox import conf as outbox_conf
from outbox.emit.context import emission_disabled
from tooling.brokers import configured_kind
from tooling.database import scratch_database

BENCH_SKUS = ["BENCH-1", "BENCH-2", "BENCH-3"]


def _proc_field(path: str, name: str) -> str:
    """The value of `name: value` in a /proc file, or "" where there is none (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return ""


def _revision() -> str:
    """The code's git revision, marked `-dirty` when the work tree has changes, or "" outside git."""
    try:
        run = functools.partial(subprocess.run, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=10)
        head = run(["git", "rev-parse", "--short", "HEAD"], check=True).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("-dirty" if dirty else "")


def _broker_versions() -> tuple[str | None, str | None]:
    """The (Redis, RabbitMQ) server version of the broker BROKER_URL selects, the other None."""
    kind = configured_kind()
    if kind == "redis":
        import redis

        try:
            info = redis.Redis.from_url(settings.BROKER_URL, socket_timeout=5).info("server")
        except redis.RedisError as e:
            return f"unreachable: {e}", None
        return str(info["redis_version"]), None
    if kind == "rabbitmq":
        import pika
        import pika.exceptions

        try:
            rabbit = pika.BlockingConnection(pika.URLParameters(settings.BROKER_URL))
        except pika.exceptions.AMQPError as e:
            return None, f"unreachable: {e!r}"
        try:
            # What the server announced on connecting (connection.start's server-properties).
            version = rabbit._impl.server_properties.get("version", "")
        finally:
            rabbit.close()
        return None, version.decode() if isinstance(version, bytes) else str(version)
    return None, None


def machine_facts() -> dict[str, Any]:
    """Return what the figures depend on: when, which code, CPU, memory, Python, database, broker."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            db_version = f"PostgreSQL {cursor.fetchone()[0]}"
            # The server's setting, not this session's: the relay turns it off for its own commits.
            cursor.execute("SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'")
            synchronous_commit = cursor.fetchone()[0]
            cursor.execute("SHOW shared_buffers")
            shared_buffers = cursor.fetchone()[0]
            # The bench vacuums what it measures either way; with autovacuum on, it also runs meanwhile.
            cursor.execute("SHOW autovacuum")
            autovacuum = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT sqlite_version()")
            db_version, synchronous_commit, shared_buffers = f"SQLite {cursor.fetchone()[0]}", None, None
            autovacuum = None
    redis_version, rabbitmq_version = _broker_versions()
    memory_kb = _proc_field("/proc/meminfo", "MemTotal").split(" ")[0]
    return {
        "measured_at": datetime.now(dt_timezone.utc).isoformat(timespec="seconds"),
        "revision": _revision(),
        "cpus": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "machine": platform.machine(),
        "memory_gib": round(int(memory_kb) / 1024 / 1024, 1) if memory_kb.isdigit() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "dramatiq": dramatiq.__version__,
        "database": db_version,
        "synchronous_commit": synchronous_commit,
        "shared_buffers": shared_buffers,
        "autovacuum": autovacuum,
        "broker": type(dramatiq.get_broker()).__name__,
        # The server of the broker BROKER_URL selects; None for the other (and for the stub broker).
        "redis": redis_version,
        "rabbitmq": rabbitmq_version,
    }


def _seed() -> Customer:
    for sku in BENCH_SKUS:
        services.product_create(sku=sku, name=sku, price=Decimal("10.00"))
    return services.customer_create(name="Bench", email="bench@example.com")


def _order_with_bulk_lines(customer: Customer, products: list[Product]) -> None:
    with transaction.atomic():
        order = Order.objects.create(customer=customer, status=Order.Status.PLACED)
        OrderLine.objects.bulk_create(
            [OrderLine(order=order, product=p, quantity=1, unit_price=p.price) for p in products]
        )


def _on_off(save: Callable[[], object], *, samples: int) -> tuple[float, float, float]:
    """Time `save` with the outbox on and off, alternating one save each, `samples` times.

    Interleaving single saves exposes both arms to the same background noise (autovacuum, the
    other core's load); medians ignore the outliers. Returns the ratio of the medians on/off and
    the median seconds per save of each.
    """

    def timed(enabled: bool) -> float:
        with nullcontext() if enabled else emission_disabled():
            start = time.perf_counter()
            save()
            return time.perf_counter() - start

    for _ in range(min(samples, 100)):  # warm up caches, prepared statements and the connection
        timed(True)
        timed(False)
    on: list[float] = []
    off: list[float] = []
    for i in range(samples):
        first = i % 2 == 0
        (on if first else off).append(timed(first))
        (off if first else on).append(timed(not first))
    median_on, median_off = statistics.median(on), statistics.median(off)
    return median_on / median_off, median_on, median_off


def save_overhead(*, samples: int) -> dict[str, float]:
    """Measure what the outbox adds to saving a placed order with three lines.

    `save_overhead_ratio` is the normal path: services.order_create(), which saves the order and
    each line with Model.save(), as the admin does. `bulk_save_overhead_ratio` is the same order
    with its lines inserted by bulk_create(), whose base cost is lower.
    """
    customer = _seed()
    lines = [services.LineRequest(sku=sku, quantity=1) for sku in BENCH_SKUS]
    products = list(Product.objects.filter(sku__in=BENCH_SKUS).order_by("sku"))
    ratio, on, off = _on_off(lambda: services.order_create(customer=customer, lines=lines, place=True), samples=samples)
    bulk_ratio, bulk_on, bulk_off = _on_off(lambda: _order_with_bulk_lines(customer, products), samples=samples)
    return {
        "save_overhead_ratio": round(ratio, 3),
        "save_ms_outbox_on": round(on * 1000, 3),
        "save_ms_outbox_off": round(off * 1000, 3),
        "bulk_save_overhead_ratio": round(bulk_ratio, 3),
        "bulk_save_ms_outbox_on": round(bulk_on * 1000, 3),
        "bulk_save_ms_outbox_off": round(bulk_off * 1000, 3),
    }


GROUPS = ("save", "relay", "relays", "latency", "pipeline", "ordered", "backfill", "eventlog")


def backlog_discard() -> None:
    """Take the save benchmark's events out of the backlog: nothing relays them, and draining them
    through every consumer would run during the latency measurement."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM outbox_pending")


def settle_tables() -> None:
    """Vacuum what the save benchmark wrote, so that autovacuum does not do it mid-measurement."""
    with connection.cursor() as cursor:
        for model in (Order, OrderLine, Product, Customer):
            cursor.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")
        for table in ("outbox_event", "outbox_pending", "outbox_aggregate", "outbox_delivery"):
            cursor.execute(f"VACUUM (ANALYZE) {table}")


def bench_run(
    *,
    samples: int,
    backlog: int,
    history: int,
    rss_backlog: int,
    batch_size: int,
    latency_seconds: float,
    pipeline_orders: int,
    pipeline_processes: int,
    pipeline_threads: int,
    pipeline_inventory_threads: int,
    email_window_samples: int,
    eventlog_events: int = 5_000_000,
    eventlog_requests: int = 20,
    backfill_events: int = 1_000_000,
    ordered_rounds: int = 2,
    relays_backlog: int = 100_000,
    groups: list[str] | None = None,
    verbosity: int = 0,
) -> dict[str, Any]:
    """Run every figure in one scratch database and return them with the machine's facts."""
    from tooling.bench import pipeline as bench_pipeline
    from tooling.bench.backfill import backfill_figures
    from tooling.bench.eventlog import eventlog_figures
    from tooling.bench.relay import e2e_latency, relay_figures
    from tooling.bench.relays import relays_figures

    with scratch_database(verbosity=verbosity):
        # The broker every figure's relays (and workers) publish to: BROKER_URL's, or the stub broker.
        result: dict[str, Any] = {"broker": configured_kind() or "stub"}
        run = set(groups or GROUPS)
        if "save" in run:
            result.update(save_overhead(samples=samples))
        # Latency and pipeline before the relay figures: those leave millions of rows (and
        # deliveries for consumers that exist only in this process) that would load the machine
        # meanwhile.
        if "latency" in run:
            if "save" in run:
                backlog_discard()
                settle_tables()
            result.update(e2e_latency(rate=100, seconds=latency_seconds))
        if "pipeline" in run or "ordered" in run:
            result.update(
                bench_pipeline.pipeline_figures(
                    orders=pipeline_orders,
                    processes=pipeline_processes,
                    threads=pipeline_threads,
                    inventory_threads=pipeline_inventory_threads,
                    window_samples=email_window_samples,
                    ordered_rounds=ordered_rounds if "ordered" in run else 0,
                    throughput="pipeline" in run,
                )
            )
        # Before the relay figures, over the same small database as their first drains (their history
        # would slow these down), and before this process publishes anything: on RabbitMQ, emptying the
        # broker deletes the queues, and this process's broker would find a queue it declared gone.
        if "relays" in run:
            result.update(relays_figures(backlog=relays_backlog, batch_size=batch_size))
        if "relay" in run:
            result.update(
                relay_figures(backlog=backlog, history=history, rss_backlog=rss_backlog, batch_size=batch_size)
            )
        # Over the relay figures' history, when they ran: the newest `backfill_events` of it.
        if "backfill" in run:
            result.update(backfill_figures(events=backfill_events))
        # Last: it empties the event log, then fills it with exactly `eventlog_events` events.
        if "eventlog" in run:
            result.update(eventlog_figures(events=eventlog_events, requests=eventlog_requests))
        result["machine"] = machine_facts()
        result["parameters"] = {
            "samples": samples,
            "backlog": backlog,
            "history": history,
            "rss_backlog": rss_backlog,
            "batch_size": batch_size,
            "latency_rate_per_s": 100,
            "latency_seconds": latency_seconds,
            "pipeline_orders": pipeline_orders,
            "pipeline_lines_per_order": bench_pipeline.LINES_PER_ORDER,
            "pipeline_cancelled_fraction": 1 / bench_pipeline.CANCEL_EVERY,
            "pipeline_worker_processes": pipeline_processes,
            "pipeline_worker_threads": pipeline_threads,
            "pipeline_inventory_threads": pipeline_inventory_threads,
            "pipeline_relay_batch_size": outbox_conf.batch_size(),
            "email_window_samples": email_window_samples,
            "eventlog_events": eventlog_events,
            "eventlog_requests_per_page": eventlog_requests,
            "backfill_events": backfill_events,
            "ordered_rounds": ordered_rounds,
            "relays_backlog": relays_backlog,
        }
    return result
