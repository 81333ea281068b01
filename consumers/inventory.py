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

from core.models import Product
from core.services import TAKING_STATUSES
from outbox import Event, PermanentError, consumer

CONSUMER = "inventory"

logger = logging.getLogger("consumers.inventory")

# Locks are always taken in one global order — sources by name, then products by id — so that
# workers applying any mix of sources at once can wait for each other but never deadlock.
_ADD_SOURCES = """
INSERT INTO inventory_source (source, version, state, updated_at)
SELECT s, 0, '{}', CURRENT_TIMESTAMP FROM unnest(%s::text[]) AS s ORDER BY s
ON CONFLICT (source) DO NOTHING
"""
_LOCK_SOURCES = "SELECT source, version, state FROM inventory_source WHERE source = ANY(%s) ORDER BY source FOR UPDATE"
_SAVE_SOURCES = """
UPDATE inventory_source s SET version = d.version, state = d.state, updated_at = CURRENT_TIMESTAMP
FROM unnest(%s::text[], %s::int[], %s::text[]) AS d(source, version, state)
WHERE s.source = d.source
"""
_LOCK_PRODUCTS = "SELECT id FROM core_product WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_MOVE_STOCKS = """
UPDATE core_product p SET stock = p.stock + d.delta
FROM unnest(%s::bigint[], %s::bigint[]) AS d(id, delta)
WHERE p.id = d.id
RETURNING p.id, p.stock
"""
# The embedded default (SQLite, one writer at a time) uses one row per statement.
_LOCK_SOURCE = """
INSERT INTO inventory_source (source, version, state, updated_at) VALUES (%s, 0, '{}', CURRENT_TIMESTAMP)
ON CONFLICT (source) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING source, version, state
"""
_SAVE_SOURCE = "UPDATE inventory_source SET version = %s, state = %s, updated_at = CURRENT_TIMESTAMP WHERE source = %s"
_MOVE_STOCK = "UPDATE core_product SET stock = stock + %s WHERE id = %s RETURNING stock"
_INSERT_MOVEMENTS = (
    "INSERT INTO inventory_movement (event_id, event_type, product_id, quantity, source, version, stock_after, "
    "created_at) VALUES "
)


class VersionGap(Exception):
    """An order's events between the applied version and this one are not all readable."""


def group_key(event: Event) -> str:
    try:
        return source_of(event)
    except PermanentError:
        return f"invalid:{event.id}"  # alone in its group, where apply_group reports it


def source_of(event: Event) -> str:
    """Return the source whose stock contribution the event changes: `order:<id>` or `receipt:<id>`."""
    if event.event_type.startswith(("order.", "order_line.")):
        return f"order:{event.aggregate_id}"
    if event.event_type.startswith("stock."):
        return f"receipt:{_state(event.id, event.event_type, event.payload)['id']}"
    raise PermanentError(
        f"The inventory consumer does not handle {event.event_type} events. "
        "Remove the type from its @consumer declaration's events; the event itself is fine."
    )


def _state(event_id: int, event_type: str, payload: Any) -> dict[str, Any]:
    state = payload.get("state") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("id"), int):
        raise PermanentError(f"Event {event_id} ({event_type}) has no payload.state with an integer id.")
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


def order_wants(state: dict[str, Any]) -> dict[int, int]:
    """Return the stock an order in this state takes out, per product (negative)."""
    wanted: dict[int, int] = {}
    if state.get("status") in TAKING_STATUSES:
        for product_id, quantity in state.get("lines", {}).values():
            wanted[product_id] = wanted.get(product_id, 0) - quantity
    return wanted


def receipt_wants(event_id: int, event_type: str, payload: Any) -> dict[int, int]:
    """Return the stock a receipt puts in as of this event."""
    row = _state(event_id, event_type, payload)
    if event_type == "stock.receipt_removed":
        return {}
    return {int(row["product_id"]): int(row["quantity"])}


Step = tuple[int, str, Any, Event | None]  # version, type, payload, the event when this batch handles it


def _order_steps(todo: list[Event], applied_version: int) -> list[Step]:
    """Every version from the applied one up to the group's last, read from the log where missing."""
    known = {e.aggregate_version: e for e in todo}
    top = todo[-1].aggregate_version
    missing = [v for v in range(applied_version + 1, top + 1) if v not in known]
    read: dict[int, tuple[str, Any]] = {}
    refused: set[int] = set()
    if missing:
        first = todo[0]
        for row in Event.objects.checked().filter(
            aggregate_type=first.aggregate_type, aggregate_id=first.aggregate_id, aggregate_version__in=missing
        ):
            if row.is_authentic():  # at the current schema version, as the handler's own events are
                read[row.aggregate_version] = (row.event_type, row.upcast().payload)
            else:  # not written by the writer: it changes nothing
                refused.add(row.aggregate_version)
        if len(read) + len(refused) != len(missing):
            # Versions are taken under a lock held to commit, so this means a purge or a damaged log.
            gone = sorted(set(missing) - set(read) - refused)
            raise VersionGap(
                f"Order {first.aggregate_id}: versions {gone} are missing from the event log; "
                "run outbox_verify to see what happened to them."
            )
    steps: list[Step] = []
    for version in range(applied_version + 1, top + 1):
        if version in known:
            event = known[version]
            steps.append((version, event.event_type, event.payload, event))
        elif version in refused:
            continue
        else:
            steps.append((version, *read[version], None))
    return steps


Delta = tuple[Event, int, int]  # (event, product, delta)


def _plan(source: str, events: list[Event], applied_version: int, state: dict[str, Any]) -> tuple[list[Delta], int]:
    """Return the movements that bring the source from its applied version to its events' last,
    and that version; update `state` to it. `events` are the source's, in version order."""
    todo = [e for e in events if e.aggregate_version > applied_version]
    if not todo:
        return [], applied_version  # a later event of the source already brought it past these
    applied = {int(k): v for k, v in state.get("applied", {}).items()}
    is_order = source.startswith("order:")
    steps = (
        _order_steps(todo, applied_version)
        if is_order
        else [(e.aggregate_version, e.event_type, e.payload, e) for e in todo]
    )
    deltas: list[Delta] = []
    for version, event_type, payload, event in steps:
        if is_order:
            fold(state, event_type, _state(event.id if event else version, event_type, payload))
            wanted = order_wants(state)
        else:
            wanted = receipt_wants(event.id if event else version, event_type, payload)
        if event is None:
            continue  # not in this message: its change moves with the next event that is
        for product_id in sorted(wanted.keys() | applied.keys()):
            delta = wanted.get(product_id, 0) - applied.get(product_id, 0)
            if delta:
                deltas.append((event, product_id, delta))
        applied = {k: v for k, v in wanted.items() if v}
    state["applied"] = {str(k): v for k, v in applied.items()}
    return deltas, todo[-1].aggregate_version


@consumer(
    CONSUMER,
    events=[
        "order.placed",
        "order.cancelled",
        "order.deleted",
        "order_line.added",
        "order_line.changed",
        "order_line.removed",
        "stock.received",
        "stock.receipt_corrected",
        "stock.receipt_removed",
    ],
    queue="inventory",
    priority=0,
    batch=True,
    group_by=lambda event: group_key(event),
    together=True,
    records=["consumers.StockMovement"],
)
def apply_sources(events: list[Event]) -> None:
    """Bring every source of these events to its last version here (inside the deliveries' transaction)."""
    by_source: dict[str, list[Event]] = {}
    for event in events:
        by_source.setdefault(source_of(event), []).append(event)
    names = sorted(by_source)
    with connection.cursor() as cursor:
        rows = _lock_sources(cursor, names)
        deltas: list[tuple[str, Delta]] = []
        saved: list[tuple[str, int, str]] = []
        for name in names:
            applied_version, raw_state = rows[name]
            state: dict[str, Any] = json.loads(raw_state)
            planned, version = _plan(
                name, sorted(by_source[name], key=lambda e: e.aggregate_version), applied_version, state
            )
            if version != applied_version:
                deltas += [(name, delta) for delta in planned]
                saved.append((name, version, json.dumps(state, sort_keys=True)))
        stock = _move_stock(cursor, [delta for _, delta in deltas])
        movements: list[tuple[int, str, int, int, str, int, int]] = []
        remaining = dict(stock)
        for name, (event, product_id, delta) in reversed(deltas):
            if product_id in stock:
                version = event.aggregate_version
                movements.append((event.id, event.event_type, product_id, delta, name, version, remaining[product_id]))
                remaining[product_id] -= delta
        if movements:
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, CURRENT_TIMESTAMP)"] * len(movements))
            cursor.execute(_INSERT_MOVEMENTS + values, [value for row in movements[::-1] for value in row])
        _save_sources(cursor, saved)


def _lock_sources(cursor: Any, names: list[str]) -> dict[str, tuple[int, str]]:
    """Create the sources' rows if new and lock them, in name order; return {source: (version, state)}."""
    if connection.vendor == "postgresql":
        cursor.execute(_ADD_SOURCES, [names])
        cursor.execute(_LOCK_SOURCES, [names])
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    found = {}
    for name in names:
        cursor.execute(_LOCK_SOURCE, [name])
        row = cursor.fetchone()
        found[row[0]] = (row[1], row[2])
    return found


def _save_sources(cursor: Any, saved: list[tuple[str, int, str]]) -> None:
    if not saved:
        return
    if connection.vendor == "postgresql":
        cursor.execute(_SAVE_SOURCES, [[s[0] for s in saved], [s[1] for s in saved], [s[2] for s in saved]])
        return
    for name, version, state in saved:
        cursor.execute(_SAVE_SOURCE, [version, state, name])


def _move_stock(cursor: Any, deltas: list[Delta]) -> dict[int, int]:
    """Add the deltas to the products' stock, in product order; return each product's new stock."""
    totals: dict[int, int] = {}
    for _, product_id, delta in deltas:
        totals[product_id] = totals.get(product_id, 0) + delta
    moved = {k: v for k, v in sorted(totals.items()) if v}
    stock: dict[int, int] = {}
    if moved and connection.vendor == "postgresql":
        cursor.execute(_LOCK_PRODUCTS, [list(moved)])
        cursor.execute(_MOVE_STOCKS, [list(moved), list(moved.values())])
        stock = {row[0]: row[1] for row in cursor.fetchall()}
    else:
        for product_id, delta in moved.items():
            cursor.execute(_MOVE_STOCK, [delta, product_id])
            row = cursor.fetchone()
            if row is not None:
                stock[product_id] = row[0]
    unmoved = sorted(set(totals) - set(moved))  # changes that cancel out still need the stock for the ledger
    if unmoved:
        stock.update(Product.objects.filter(id__in=unmoved).values_list("id", "stock"))
    for product_id, delta in moved.items():
        if product_id not in stock:
            logger.warning("inventory: product %s no longer exists; its movement is not recorded", product_id)
        elif stock[product_id] < 0 and delta < 0:
            logger.warning("inventory: product %s is backordered: stock %d", product_id, stock[product_id])
    return stock
