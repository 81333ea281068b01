"""The daily sales summary's queries at volume: each day's orders come from an index."""

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from core.models import Order
from core.reports import _day_bounds

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("index", "orders"),
    [
        ("order_placed_at_idx", lambda start, end: Order.objects.filter(placed_at__gte=start, placed_at__lt=end)),
        (
            "order_cancelled_at_idx",
            lambda start, end: Order.objects.filter(status="cancelled", closed_at__gte=start, closed_at__lt=end),
        ),
    ],
)
def test_the_summary_reads_the_days_orders_from_an_index(
    index: str, orders: Callable[[datetime, datetime], QuerySet[Order]]
) -> None:
    """Placed that day and cancelled that day: each a range of a partial index, not a read of
    every order (the summary runs every morning over a table that only grows)."""
    start, end = _day_bounds(timezone.localdate() - timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the table is empty; ask what an index does
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        plan = orders(start, end).explain()
    assert index in plan, plan
