"""The benchmark suite behind `python manage.py outbox_bench`.

Each figure is measured side by side in one run on a scratch database, created for the run and
dropped after it, so that the numbers compare like with like and no real data is touched.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from decimal import Decimal
from typing import Any

from django.db import connection

from core import services
from core.models import Customer
from outbox.context import emission_disabled

BENCH_SKUS = ["BENCH-1", "BENCH-2", "BENCH-3"]


@contextmanager
def scratch_database(*, verbosity: int = 0) -> Iterator[str]:
    """Create and migrate a throwaway database named `<database>_bench`; drop it afterwards."""
    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    settings_dict.setdefault("TEST", {})
    saved_test_name = settings_dict["TEST"].get("NAME")
    if connection.vendor != "sqlite":
        settings_dict["TEST"]["NAME"] = f"{original}_bench"
    name = connection.creation.create_test_db(verbosity=verbosity, autoclobber=True, serialize=False)
    try:
        yield name
    finally:
        connection.creation.destroy_test_db(original, verbosity=verbosity)
        settings_dict["TEST"]["NAME"] = saved_test_name


def machine_facts() -> dict[str, Any]:
    """Return what the figures depend on: CPU, Python, database."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            db_version = f"PostgreSQL {cursor.fetchone()[0]}"
        else:
            cursor.execute("SELECT sqlite_version()")
            db_version = f"SQLite {cursor.fetchone()[0]}"
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "database": db_version,
    }


def _seed() -> Customer:
    for sku in BENCH_SKUS:
        services.product_create(sku=sku, name=sku, price=Decimal("10.00"))
    return services.customer_create(name="Bench", email="bench@example.com")


def save_overhead(*, orders_per_block: int, rounds: int) -> dict[str, float]:
    """Time order_create (three lines, placed) with the outbox on and off, alternating blocks.

    Returns the median per-round ratio on/off and the median time per order of each.
    """
    customer = _seed()
    lines = [services.LineRequest(sku=sku, quantity=1) for sku in BENCH_SKUS]

    def block(enabled: bool) -> float:
        with nullcontext() if enabled else emission_disabled():
            start = time.perf_counter()
            for _ in range(orders_per_block):
                services.order_create(customer=customer, lines=lines, place=True)
            return (time.perf_counter() - start) / orders_per_block

    block(True)  # warm up caches, prepared statements and the connection
    block(False)
    on: list[float] = []
    off: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        order: list[tuple[bool, list[float]]] = [(True, on), (False, off)]
        if i % 2:
            order.reverse()
        for enabled, samples in order:
            samples.append(block(enabled))
        ratios.append(on[-1] / off[-1])
    return {
        "save_overhead_ratio": round(statistics.median(ratios), 3),
        "save_ms_outbox_on": round(statistics.median(on) * 1000, 3),
        "save_ms_outbox_off": round(statistics.median(off) * 1000, 3),
    }


FIGURES: dict[str, Callable[..., dict[str, float]]] = {"save_overhead": save_overhead}


def bench_run(*, orders_per_block: int, rounds: int, verbosity: int = 0) -> dict[str, Any]:
    """Run every figure in one scratch database and return them with the machine's facts."""
    with scratch_database(verbosity=verbosity):
        result: dict[str, Any] = {}
        result.update(save_overhead(orders_per_block=orders_per_block, rounds=rounds))
        result["machine"] = machine_facts()
        result["parameters"] = {"orders_per_block": orders_per_block, "rounds": rounds}
    return result
