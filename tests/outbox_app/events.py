"""Which of the outbox tests' records emit which events."""

from outbox import Change, ChangeKind, by_kind, register
from tests.outbox_app.models import Item, Restock, Shipment, ShipmentLine, Tally

SHIPMENT_STATUS_EVENTS = {
    Shipment.Status.DRAFT: "shipment.drafted",
    Shipment.Status.SENT: "shipment.sent",
    Shipment.Status.CANCELLED: "shipment.cancelled",
}
ITEM_EVENTS = ("item.created", "item.updated", "item.deleted")
RESTOCK_EVENTS = ("item.restocked", "item.restock_corrected", "item.restock_removed")
SHIPMENT_EVENTS = (*SHIPMENT_STATUS_EVENTS.values(), "shipment.updated", "shipment.deleted")
LINE_EVENTS = ("shipment_line.added", "shipment_line.changed", "shipment_line.removed")
ALL_EVENTS = (*ITEM_EVENTS, *RESTOCK_EVENTS, *SHIPMENT_EVENTS, *LINE_EVENTS)
# Only the ordered `sequence` consumer takes these (not in ALL_EVENTS: the journal does not).
TALLY_EVENTS = ("tally.created", "tally.changed", "tally.deleted")


def shipment_event_type(change: Change) -> str | None:
    """Name a shipment change by what happened to it: drafted, sent, cancelled…"""
    if change.kind is ChangeKind.DELETED:
        return "shipment.deleted"
    shipment = change.instance
    assert isinstance(shipment, Shipment)
    if change.kind is ChangeKind.CREATED or "status" in change.changes:
        return SHIPMENT_STATUS_EVENTS[Shipment.Status(shipment.status)]
    return "shipment.updated" if change.changes else None


def register_all() -> None:
    """Declare the emitting models (called once, from OutboxAppConfig.ready)."""
    register(
        Item,
        aggregate_type="item",
        event_type=by_kind(created="item.created", updated="item.updated", deleted="item.deleted"),
        untracked_fields=("stock",),
    )
    register(
        Restock,
        aggregate_type="item",
        aggregate_id=lambda restock: restock.item_id,
        event_type=by_kind(created="item.restocked", updated="item.restock_corrected", deleted="item.restock_removed"),
    )
    register(Shipment, aggregate_type="shipment", event_type=shipment_event_type, emits=SHIPMENT_EVENTS)
    register(
        ShipmentLine,
        aggregate_type="shipment",
        aggregate_id=lambda line: line.shipment_id,
        event_type=by_kind(
            created="shipment_line.added", updated="shipment_line.changed", deleted="shipment_line.removed"
        ),
    )
    register(
        Tally,
        aggregate_type="tally",
        event_type=by_kind(created="tally.created", updated="tally.changed", deleted="tally.deleted"),
    )
