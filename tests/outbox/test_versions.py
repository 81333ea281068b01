"""Per-aggregate versions stay consecutive under concurrent saves."""

import threading

import pytest
from django.db import connection

from tests.outbox.helpers import aggregate_events
from tests.outbox_app import services
from tests.outbox_app.models import Item, Shipment

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 6
SAVES_PER_THREAD = 8


def test_concurrent_saves_to_one_aggregate_get_consecutive_versions(items: list[Item]) -> None:
    """Six threads adding lines to one shipment at once produce versions 1..N with no gap or
    duplicate, though nothing but the outbox orders them (no lock on the shipment)."""
    shipment = services.shipment_create(recipient="ada@example.com", lines=[(items[0], 1)], send=True)
    barrier = threading.Barrier(THREADS, timeout=30)
    errors: list[BaseException] = []

    def add_lines() -> None:
        try:
            barrier.wait()
            for _ in range(SAVES_PER_THREAD):
                services.shipment_line_add(shipment=shipment, item=items[1], quantity=1)
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
    versions = [e.aggregate_version for e in aggregate_events("shipment", shipment.pk)]
    expected = 2 + THREADS * SAVES_PER_THREAD  # shipment.sent + first line + the threads' lines
    assert versions == list(range(1, expected + 1))
    assert Shipment.objects.get().lines.count() == 1 + THREADS * SAVES_PER_THREAD
