"""Per-aggregate versions stay consecutive under concurrent saves."""

import threading

import pytest
from django.db import connection

from core import services
from core.models import Customer, Order, Product
from tests.outbox.helpers import aggregate_events

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 6
SAVES_PER_THREAD = 8


def test_concurrent_saves_to_one_aggregate_get_consecutive_versions(
    customer: Customer, products: list[Product]
) -> None:
    """Six threads adding lines to one order at once produce versions 1..N with no gap or duplicate."""
    order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=True)
    barrier = threading.Barrier(THREADS, timeout=30)
    errors: list[BaseException] = []

    def add_lines() -> None:
        try:
            barrier.wait()
            for _ in range(SAVES_PER_THREAD):
                services.order_line_add(order=order, sku="MS-002", quantity=1)
        except BaseException as e:  # reported to the test below
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=add_lines) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    versions = [e.aggregate_version for e in aggregate_events("order", order.pk)]
    expected = 2 + THREADS * SAVES_PER_THREAD  # order.placed + first line + the threads' lines
    assert versions == list(range(1, expected + 1))
    assert Order.objects.get().lines.count() == 1 + THREADS * SAVES_PER_THREAD
