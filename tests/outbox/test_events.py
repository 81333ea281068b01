"""What the events say: types, versions, payloads, the inline case and the bulk paths."""

from decimal import Decimal

import pytest
from django.db.models import F
from django.test import Client

from outbox.emit.writer import events_flush
from outbox.errors import BulkWriteError
from tests.outbox.helpers import SHIPMENT_ADD_URL, aggregate_events, events, shipment_form
from tests.outbox_app import services
from tests.outbox_app.models import Item, Shipment, ShipmentLine

pytestmark = pytest.mark.django_db


def test_shipment_created_in_one_admin_submit_has_events_for_all_three_lines(
    admin_client: Client, items: list[Item]
) -> None:
    """The shipment's event precedes its lines', and each of the three lines has its own event."""
    response = admin_client.post(SHIPMENT_ADD_URL, shipment_form([(item.pk, i + 1) for i, item in enumerate(items)]))
    assert response.status_code == 302
    shipment = Shipment.objects.get()
    events = aggregate_events("shipment", shipment.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("shipment.sent", 1),
        ("shipment_line.added", 2),
        ("shipment_line.added", 3),
        ("shipment_line.added", 4),
    ]
    assert events[0].payload["state"]["status"] == "sent"
    lines = [(e.payload["state"]["item_id"], e.payload["state"]["quantity"]) for e in events[1:]]
    assert lines == [(item.pk, i + 1) for i, item in enumerate(items)]
    assert {e.payload["state"]["shipment_id"] for e in events[1:]} == {shipment.pk}


def test_service_shipment_gets_consecutive_versions_in_one_batch(items: list[Item]) -> None:
    """shipment_create writes the shipment event, then the lines' events, numbered 1..4."""
    shipment = services.shipment_create(recipient="ada@example.com", lines=[(item, 2) for item in items], send=True)
    services.shipment_set_status(shipment=shipment, status=Shipment.Status.CANCELLED)
    events = aggregate_events("shipment", shipment.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("shipment.sent", 1),
        ("shipment_line.added", 2),
        ("shipment_line.added", 3),
        ("shipment_line.added", 4),
        ("shipment.cancelled", 5),
    ]
    assert events[-1].payload["changes"]["status"] == {"old": "sent", "new": "cancelled"}


def test_update_payload_has_state_and_changed_fields_with_old_and_new(items: list[Item]) -> None:
    """An edit records the state after it and only the fields it changed, old and new."""
    item = Item.objects.get(sku="KB-001")
    item.price = Decimal("95.00")
    item.name = "Keyboard v2"
    item.save()
    event = aggregate_events("item", item.pk)[-1]
    assert event.event_type == "item.updated"
    assert event.payload["changes"] == {
        "name": {"old": "Keyboard", "new": "Keyboard v2"},
        "price": {"old": "89.00", "new": "95.00"},
    }
    assert event.payload["state"]["sku"] == "KB-001"
    assert event.payload["state"]["price"] == "95.00"


def test_save_without_changes_and_stock_only_changes_write_no_event(items: list[Item]) -> None:
    """Saving an unchanged row, or only the consumer-maintained stock, writes no event."""
    item = Item.objects.get(sku="KB-001")
    before = events().count()
    item.save()
    item.stock = 7
    item.save()
    Item.objects.filter(pk=item.pk).update(stock=F("stock") + 1)
    assert events().count() == before
    item.refresh_from_db()
    assert item.stock == 8


def test_queryset_update_of_tracked_fields_is_refused(items: list[Item]) -> None:
    """QuerySet.update() on fields that events describe fails loudly and changes nothing."""
    shipment = services.shipment_create(recipient="ada@example.com", lines=[(items[0], 1)], send=True)
    with pytest.raises(BulkWriteError, match=r"Shipment\.objects\.update\(\) would change status.*save\(update_fields"):
        Shipment.objects.filter(pk=shipment.pk).update(status=Shipment.Status.CANCELLED)
    with pytest.raises(BulkWriteError, match="price"):
        Item.objects.bulk_update(items, ["price"])
    shipment.refresh_from_db()
    assert shipment.status == Shipment.Status.SENT


def test_bulk_create_writes_one_event_per_row(items: list[Item]) -> None:
    """bulk_create() writes a created event for every row, continuing the aggregate's versions."""
    shipment = services.shipment_create(recipient="ada@example.com", lines=[])
    ShipmentLine.objects.bulk_create([ShipmentLine(shipment=shipment, item=item, quantity=1) for item in items])
    events = aggregate_events("shipment", shipment.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("shipment.drafted", 1),
        ("shipment_line.added", 2),
        ("shipment_line.added", 3),
        ("shipment_line.added", 4),
    ]
    with pytest.raises(BulkWriteError, match="ignore_conflicts"):
        Item.objects.bulk_create([Item(sku="KB-001", name="dup", price=1)], ignore_conflicts=True)


def test_queryset_delete_writes_events_for_rows_and_cascade(items: list[Item]) -> None:
    """Deleting shipments in bulk writes shipment.deleted and shipment_line.removed for the cascaded lines."""
    shipment = services.shipment_create(recipient="ada@example.com", lines=[(item, 1) for item in items[:2]])
    Shipment.objects.filter(pk=shipment.pk).delete()
    types = sorted(e.event_type for e in aggregate_events("shipment", shipment.pk)[3:])
    assert types == ["shipment.deleted", "shipment_line.removed", "shipment_line.removed"]


def test_restocks_join_the_item_aggregate(items: list[Item]) -> None:
    """A restock is an item.restocked event on its item's version sequence."""
    services.restock(item=items[0], quantity=5)
    events = aggregate_events("item", items[0].pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [("item.created", 1), ("item.restocked", 2)]
    assert events[1].payload["state"]["quantity"] == 5


def test_event_row_follows_the_debezium_outbox_columns(items: list[Item]) -> None:
    """The table has Debezium's aggregatetype/aggregateid/type/payload columns and a database-clock time."""
    from django.db import connection

    events_flush()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT aggregatetype, aggregateid, type, payload->'state'->>'sku', "
            "created_at BETWEEN now() AND clock_timestamp() FROM outbox_event ORDER BY id LIMIT 1"
        )
        assert cursor.fetchone() == ("item", str(items[0].pk), "item.created", "KB-001", True)
