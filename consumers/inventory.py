"""The inventory consumer: keeps each product's stock, through a ledger of movements.

Messages arrive twice, late and out of order, so the consumer does not add up event payloads.
Each event names a *source* of stock changes (an order, or a stock receipt); the consumer brings
the source's contribution to what the source says now:

- an order that is placed or fulfilled takes out the quantities of its lines; a draft, a cancelled
  or a deleted order takes out nothing;
- a stock receipt puts in its quantity; a removed receipt puts in nothing.

The difference from what the source's movements already add up to is written as new movements,
one per (event, product), and added to the products' stock, in the transaction that records the
event's delivery done. So a placed order takes stock out, its cancellation puts it back, a line
edited on a placed order moves the difference, and a duplicate or a replay moves nothing.

Stock may go below zero: an order that was placed is a fact, and the consumer does not refuse it.
Negative stock means a backorder; it is logged as a warning and shown in the admin.
"""

import logging
from collections import defaultdict

from django.db import connection
from django.db.models import Sum

from consumers.models import StockMovement
from core.models import Order, OrderLine, StockReceipt
from outbox.consuming import PermanentError, consume
from outbox.models import AggregateVersion, Event

CONSUMER = "inventory"
EVENT_TYPES = (
    "order.placed",
    "order.cancelled",
    "order.deleted",
    "order_line.added",
    "order_line.changed",
    "order_line.removed",
    "stock.received",
    "stock.receipt_corrected",
    "stock.receipt_removed",
)
TAKING_STATUSES = (Order.Status.PLACED, Order.Status.FULFILLED)

logger = logging.getLogger("consumers.inventory")

_LOCK_SOURCE = """
INSERT INTO inventory_source (source, version, updated_at) VALUES (%s, 0, CURRENT_TIMESTAMP)
ON CONFLICT (source) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING version
"""
_SET_VERSION = "UPDATE inventory_source SET version = %s WHERE source = %s"
_MOVE_STOCK = "UPDATE core_product SET stock = stock + %s WHERE id = %s RETURNING stock"


def apply_events(*, event_ids: object) -> None:
    """Apply the stock effect of each event not yet applied (the actor's service)."""
    consume(consumer=CONSUMER, event_ids=event_ids, handle=apply_event)


def source_of(event: Event) -> str:
    """Return the source whose stock contribution the event changes: `order:<id>` or `receipt:<id>`."""
    if event.event_type.startswith(("order.", "order_line.")):
        return f"order:{event.aggregate_id}"
    if event.event_type.startswith("stock."):
        receipt_id = event.payload.get("state", {}).get("id") if isinstance(event.payload, dict) else None
        if not isinstance(receipt_id, int):
            raise PermanentError(f"Event {event.id} ({event.event_type}) has no receipt id in payload.state.id.")
        return f"receipt:{receipt_id}"
    raise PermanentError(
        f"The inventory consumer does not handle {event.event_type} events. "
        "Remove the route in settings/routes.py; the event itself is fine."
    )


def wanted_now(source: str) -> dict[int, int]:
    """Return what the source contributes to stock now, per product (negative takes stock out)."""
    kind, _, raw_id = source.partition(":")
    if kind == "order":
        status = Order.objects.filter(pk=int(raw_id)).values_list("status", flat=True).first()
        if status not in TAKING_STATUSES:
            return {}
        lines = OrderLine.objects.filter(order_id=int(raw_id)).values_list("product_id").annotate(Sum("quantity"))
        return {product_id: -quantity for product_id, quantity in lines if quantity}
    receipt = StockReceipt.objects.filter(pk=int(raw_id)).values_list("product_id", "quantity").first()
    return {receipt[0]: receipt[1]} if receipt else {}


def applied_so_far(source: str) -> dict[int, int]:
    """Return what the source's movements add up to, per product."""
    rows = StockMovement.objects.filter(source=source).values_list("product_id").annotate(Sum("quantity"))
    return {product_id: total for product_id, total in rows if total}


def apply_event(event: Event) -> None:
    """Bring the event's source to its current contribution (inside the delivery's transaction)."""
    source = source_of(event)
    with connection.cursor() as cursor:
        # Locks the source's row until commit: one worker at a time reconciles a source.
        cursor.execute(_LOCK_SOURCE, [source])
        applied_version = cursor.fetchone()[0]
        if applied_version >= event.aggregate_version:
            return  # a later event of the source already brought it past this one
        # The aggregate's version first, then its state: the state read is at least this new.
        version = (
            AggregateVersion.objects.filter(aggregate_type=event.aggregate_type, aggregate_id=event.aggregate_id)
            .values_list("version", flat=True)
            .first()
        )
        version = max(version or 0, event.aggregate_version)
        wanted = wanted_now(source)
        applied = applied_so_far(source)
        moves: dict[int, int] = defaultdict(int)
        for product_id in wanted.keys() | applied.keys():
            delta = wanted.get(product_id, 0) - applied.get(product_id, 0)
            if delta:
                moves[product_id] = delta
        movements = []
        # In product order, so that two workers moving the same products cannot deadlock.
        for product_id in sorted(moves):
            cursor.execute(_MOVE_STOCK, [moves[product_id], product_id])
            row = cursor.fetchone()
            if row is None:
                logger.warning("inventory: product %s no longer exists; event %s moves nothing", product_id, event.id)
                continue
            stock_after = row[0]
            if stock_after < 0 and moves[product_id] < 0:
                logger.warning(
                    "inventory: product %s is backordered: stock %d after %s (event %s)",
                    product_id,
                    stock_after,
                    source,
                    event.id,
                )
            movements.append(
                StockMovement(
                    event_id=event.id,
                    event_type=event.event_type,
                    product_id=product_id,
                    quantity=moves[product_id],
                    source=source,
                    version=version,
                    stock_after=stock_after,
                )
            )
        StockMovement.objects.bulk_create(movements)
        cursor.execute(_SET_VERSION, [version, source])
