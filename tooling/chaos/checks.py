"""The chaos run's invariants, checked from the database and from what the SMTP server received.

- lost_events: routed (event, consumer) deliveries that never got done;
- duplicate_effects: stock movements applied twice (same event and product), or an order's
  movements that add up to something other than its placed lines;
- stock_mismatches: products whose stock differs from receipts minus placed lines, or from their ledger;
- duplicate_emails: notices the SMTP server received more than once (the design's one window);
- rolled_back_published: events or e-mails of transactions rolled back on purpose;
- version_regressions: a source's ledger applying a lower version after a higher one;
- ordering_violations: an ordered consumer finishing an aggregate's event before an earlier one
  (by the deliveries' done times), and an order's cancellation notice reaching the SMTP server
  before its confirmation;
- backfill_missing, backfill_duplicates: events that the consumer added halfway and backfilled
  (tooling/consumers.py) never handled, or handled more than once.
"""

from typing import Any

from django.db import connection

from core.models import Customer
from outbox.consume.declare import enabled, is_ordered
from outbox.models import Delivery, Event
from tooling.database import undone_deliveries
from tooling.models import BackfillReceipt
from tooling.processes import NoticeCounter

SKU_PREFIX = "CHAOS-"
ROLLBACK_EMAIL = "chaos-rollback@example.com"

_OVER_APPLIED = """
WITH wanted AS (
    SELECT 'order:' || o.id AS source, l.product_id, -sum(l.quantity) AS quantity
    FROM core_order o JOIN core_orderline l ON l.order_id = o.id
    WHERE o.status IN ('placed', 'fulfilled') GROUP BY 1, 2
), applied AS (
    SELECT source, product_id, sum(quantity) AS quantity FROM inventory_movement
    WHERE source LIKE 'order:%%' GROUP BY 1, 2
)
SELECT count(*) FROM applied a FULL JOIN wanted w ON w.source = a.source AND w.product_id = a.product_id
WHERE coalesce(a.quantity, 0) <> coalesce(w.quantity, 0)
"""

_TWICE = """
SELECT count(*) FROM (SELECT 1 FROM inventory_movement GROUP BY event_id, product_id HAVING count(*) > 1) t
"""

_REGRESSIONS = """
SELECT count(*) FROM (
    SELECT version < lag(version) OVER (PARTITION BY source ORDER BY id) AS back FROM inventory_movement
) t WHERE back
"""

# A delivery done before the one of an earlier version of its aggregate. An ordered consumer starts
# an event only once its predecessor's done row has committed, so its own done time, read from its
# transaction's start, can equal the predecessor's (one transaction for both) but never be earlier.
_OUT_OF_ORDER = """
SELECT count(*) FROM (
    SELECT d.done_at < lag(d.done_at) OVER (
        PARTITION BY d.consumer, e.aggregatetype, e.aggregateid ORDER BY e.aggregate_version, e.id
    ) AS back
    FROM outbox_delivery d JOIN outbox_event e ON e.id = d.event_id
    WHERE d.consumer = ANY(%s) AND d.status = 'done' AND d.event_id > %s
) t WHERE back
"""

_BACKFILL_MISSING = """
SELECT count(*) FROM outbox_event e
WHERE NOT EXISTS (SELECT 1 FROM tooling_backfillreceipt r WHERE r.event_id = e.id)
"""

_BACKFILL_TWICE = """
SELECT coalesce(sum(n - 1), 0) FROM (
    SELECT count(*) AS n FROM tooling_backfillreceipt GROUP BY event_id HAVING count(*) > 1
) t
"""

_STOCK = """
SELECT p.sku, p.stock,
       coalesce((SELECT sum(quantity) FROM core_stockreceipt r WHERE r.product_id = p.id), 0)
       - coalesce((SELECT sum(l.quantity) FROM core_orderline l JOIN core_order o ON o.id = l.order_id
                   WHERE l.product_id = p.id AND o.status IN ('placed', 'fulfilled')), 0) AS expected,
       coalesce((SELECT sum(quantity) FROM inventory_movement m WHERE m.product_id = p.id), 0) AS ledger
FROM core_product p WHERE p.sku LIKE %s
"""


def check(first_event: int, counter: NoticeCounter, *, backfilled: bool) -> dict[str, Any]:
    """Check the invariants over everything written since `first_event`; with `backfilled`, also
    that the consumer added halfway handled every event of the database once."""
    doomed = Customer.objects.filter(email=ROLLBACK_EMAIL).values_list("id", flat=True).first()
    ordered = [c.name for c in enabled() if is_ordered(c)]
    with connection.cursor() as cursor:
        cursor.execute(_OUT_OF_ORDER, [ordered, first_event])
        out_of_order = int(cursor.fetchone()[0])
        cursor.execute(_BACKFILL_MISSING)
        backfill_missing = int(cursor.fetchone()[0]) if backfilled else 0
        cursor.execute(_BACKFILL_TWICE)
        backfill_twice = int(cursor.fetchone()[0])
        cursor.execute(_TWICE)
        twice = int(cursor.fetchone()[0])
        cursor.execute(_OVER_APPLIED)
        misapplied = int(cursor.fetchone()[0])
        cursor.execute(_REGRESSIONS)
        regressions = int(cursor.fetchone()[0])
        cursor.execute(_STOCK, [SKU_PREFIX + "%"])
        stock_rows = cursor.fetchall()
    stock_mismatches = [
        {"sku": sku, "stock": stock, "expected": expected, "ledger": ledger}
        for sku, stock, expected, ledger in stock_rows
        if not stock == expected == ledger
    ]
    rolled_back = Event.objects.filter(
        id__gt=first_event, aggregate_type="order", payload__state__customer_id=doomed
    ).count()
    duplicate_emails = counter.duplicates()
    with counter.lock:
        emails = counter.received
        rolled_back += counter.recipients.get(ROLLBACK_EMAIL, 0)
    dead = Delivery.objects.filter(event_id__gt=first_event, status="dead").count()
    return {
        "lost_events": undone_deliveries(after=first_event),
        "duplicate_effects": twice + misapplied,
        "duplicate_emails": duplicate_emails,
        "stock_mismatches": len(stock_mismatches),
        "rolled_back_published": rolled_back,
        "version_regressions": regressions,
        "ordering_violations": out_of_order
        + counter.arrived_before(later="order_cancellation", earlier="order_confirmation"),
        "ordered_consumers": ordered,
        "backfill_missing": backfill_missing,
        "backfill_duplicates": backfill_twice,
        "backfill_receipts": BackfillReceipt.objects.count(),
        "dead_deliveries": dead,
        "emails_received": emails,
        "events": Event.objects.filter(id__gt=first_event).count(),
        "stock_mismatch_examples": stock_mismatches[:5],
    }
