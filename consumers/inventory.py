"""The inventory consumer: keeps each product's stock, through a ledger of movements.

Messages arrive twice, late and out of order, so the consumer never adds an event's quantities
to stock directly. Each event belongs to a *source* of stock changes (an order, or a stock
receipt), and the consumer keeps, per source, the version it has applied and the source's state
at that version (consumers.models.StockSource). An event at version v brings its source from the
applied version to v:

- an order: the state is folded from the order's events after the applied version up to v (status
  from `order.*`, lines from `order_line.*`); a placed or fulfilled order takes out its lines'
  quantities, a draft, cancelled or deleted one takes out nothing;
- a stock receipt: the event carries the receipt's state; it puts in its quantity, a removed
  receipt puts in nothing.

The difference from what the source has put in or taken out so far is written as movements, one
per (event, product), and added to the products' stock, in the transaction that records the
event's delivery done. An event at or below the applied version is already reflected and moves
nothing. So a placed order takes its lines out, its cancellation puts them back, a line edited
on a placed order moves the difference, and a duplicate or a replay moves nothing. In id order,
every event moves its own difference; when a later event comes first it applies the earlier
ones' changes too, and their own arrival moves nothing.

Stock may go below zero: an order that was placed is a fact, and the consumer does not refuse it.
Negative stock is a backorder, logged as a warning and shown in the admin's product list.
"""

import json
import logging
from typing import Any

from django.db import connection

from consumers.models import StockMovement
from core.models import Order
from outbox.consuming import PermanentError, consume
from outbox.models import Event

CONSUMER = "inventory"
TAKING_STATUSES = (Order.Status.PLACED, Order.Status.FULFILLED)

logger = logging.getLogger("consumers.inventory")

_LOCK_SOURCE = """
INSERT INTO inventory_source (source, version, state, updated_at) VALUES (%s, 0, '{}', CURRENT_TIMESTAMP)
ON CONFLICT (source) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING version, state
"""
_SAVE_SOURCE = "UPDATE inventory_source SET version = %s, state = %s WHERE source = %s"
_MOVE_STOCK = "UPDATE core_product SET stock = stock + %s WHERE id = %s RETURNING stock"


class VersionGap(Exception):
    """An order's events between the applied version and this one are not all readable yet."""


def apply_events(*, event_ids: object) -> None:
    """Apply the stock effect of each event not yet applied (the actor's service)."""
    consume(consumer=CONSUMER, event_ids=event_ids, handle=apply_event)


def source_of(event: Event) -> str:
    """Return the source whose stock contribution the event changes: `order:<id>` or `receipt:<id>`."""
    if event.event_type.startswith(("order.", "order_line.")):
        return f"order:{event.aggregate_id}"
    if event.event_type.startswith("stock."):
        return f"receipt:{_state(event).get('id')}"
    raise PermanentError(
        f"The inventory consumer does not handle {event.event_type} events. "
        "Remove the route in settings/routes.py; the event itself is fine."
    )


def _state(event: Event) -> dict[str, Any]:
    state = event.payload.get("state") if isinstance(event.payload, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("id"), int):
        raise PermanentError(f"Event {event.id} ({event.event_type}) has no payload.state with an integer id.")
    return state


def fold(state: dict[str, Any], event_type: str, row: dict[str, Any]) -> None:
    """Apply one order event to the order's state: its status and its lines."""
    lines: dict[str, list[int]] = state.setdefault("lines", {})
    if event_type == "order.deleted":
        state["status"] = "deleted"
    elif event_type.startswith("order."):
        state["status"] = row.get("status")
    elif event_type == "order_line.removed":
        lines.pop(str(row["id"]), None)
    elif event_type.startswith("order_line."):
        lines[str(row["id"])] = [int(row["product_id"]), int(row["quantity"])]


def order_state(event: Event, state: dict[str, Any], applied_version: int) -> dict[int, int]:
    """Fold the order's events after `applied_version` up to the event's; return the stock it takes."""
    rows = list(
        Event.objects.filter(
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            aggregate_version__gt=applied_version,
            aggregate_version__lte=event.aggregate_version,
        )
        .order_by("aggregate_version")
        .values_list("event_type", "payload")
    )
    if len(rows) != event.aggregate_version - applied_version:
        # Versions are taken under a lock held to commit, so this means a purge or a damaged log.
        raise VersionGap(
            f"Order {event.aggregate_id} has {len(rows)} events in versions {applied_version + 1}.."
            f"{event.aggregate_version}; expected {event.aggregate_version - applied_version}."
        )
    for event_type, payload in rows:
        fold(state, event_type, payload.get("state", {}))
    wanted: dict[int, int] = {}
    if state.get("status") in TAKING_STATUSES:
        for product_id, quantity in state["lines"].values():
            wanted[product_id] = wanted.get(product_id, 0) - quantity
    return wanted


def receipt_state(event: Event) -> dict[int, int]:
    """Return the stock the receipt puts in as of this event."""
    row = _state(event)
    if event.event_type == "stock.receipt_removed":
        return {}
    return {int(row["product_id"]): int(row["quantity"])}


def apply_event(event: Event) -> None:
    """Bring the event's source to the event's version (inside the delivery's transaction)."""
    source = source_of(event)
    with connection.cursor() as cursor:
        # Locks the source's row until commit: one worker at a time applies a source.
        cursor.execute(_LOCK_SOURCE, [source])
        applied_version, raw_state = cursor.fetchone()
        if applied_version >= event.aggregate_version:
            return  # a later event of the source already brought it past this one
        state: dict[str, Any] = json.loads(raw_state)
        wanted = order_state(event, state, applied_version) if source.startswith("order:") else receipt_state(event)
        applied = {int(k): v for k, v in state.get("applied", {}).items()}
        moves = {
            product_id: wanted.get(product_id, 0) - applied.get(product_id, 0)
            for product_id in sorted(wanted.keys() | applied.keys())  # in product order: no deadlocks
        }
        movements = []
        for product_id, delta in moves.items():
            if not delta:
                continue
            cursor.execute(_MOVE_STOCK, [delta, product_id])
            row = cursor.fetchone()
            if row is None:
                logger.warning("inventory: product %s no longer exists; event %s moves nothing", product_id, event.id)
                continue
            if row[0] < 0 and delta < 0:
                logger.warning(
                    "inventory: product %s is backordered: stock %d after %s (event %s)",
                    product_id,
                    row[0],
                    source,
                    event.id,
                )
            movements.append(
                StockMovement(
                    event_id=event.id,
                    event_type=event.event_type,
                    product_id=product_id,
                    quantity=delta,
                    source=source,
                    version=event.aggregate_version,
                    stock_after=row[0],
                )
            )
        StockMovement.objects.bulk_create(movements)
        state["applied"] = {str(k): v for k, v in wanted.items() if v}
        cursor.execute(_SAVE_SOURCE, [event.aggregate_version, json.dumps(state, sort_keys=True), source])
