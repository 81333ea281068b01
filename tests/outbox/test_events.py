"""What the events say: types, versions, payloads, the inline case and the bulk paths."""

from decimal import Decimal

import pytest
from django.db.models import F
from django.test import Client

from core import services
from core.models import Customer, Order, OrderLine, Product
from outbox.emit.writer import events_flush
from outbox.errors import BulkWriteError
from tests.core.test_admin import ADD_URL, order_form
from tests.outbox.helpers import aggregate_events, events

pytestmark = pytest.mark.django_db


def test_order_created_in_one_admin_submit_has_events_for_all_three_lines(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """The order's event precedes its lines', and each of the three lines has its own event."""
    response = admin_client.post(ADD_URL, order_form(customer, [(p.pk, i + 1) for i, p in enumerate(products)]))
    assert response.status_code == 302
    order = Order.objects.get()
    events = aggregate_events("order", order.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("order.placed", 1),
        ("order_line.added", 2),
        ("order_line.added", 3),
        ("order_line.added", 4),
    ]
    assert events[0].payload["state"]["status"] == "placed"
    lines = [(e.payload["state"]["product_id"], e.payload["state"]["quantity"]) for e in events[1:]]
    assert lines == [(p.pk, i + 1) for i, p in enumerate(products)]
    assert {e.payload["state"]["order_id"] for e in events[1:]} == {order.pk}


def test_service_order_gets_consecutive_versions_in_one_batch(customer: Customer, products: list[Product]) -> None:
    """order_create writes the order event, then the lines' events, numbered 1..4."""
    order = services.order_create(
        customer=customer, lines=[services.LineRequest(p.sku, 2) for p in products], place=True
    )
    services.order_set_status(order=order, status=Order.Status.CANCELLED)
    events = aggregate_events("order", order.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("order.placed", 1),
        ("order_line.added", 2),
        ("order_line.added", 3),
        ("order_line.added", 4),
        ("order.cancelled", 5),
    ]
    assert events[-1].payload["changes"]["status"] == {"old": "placed", "new": "cancelled"}


def test_update_payload_has_state_and_changed_fields_with_old_and_new(products: list[Product]) -> None:
    """An edit records the state after it and only the fields it changed, old and new."""
    product = Product.objects.get(sku="KB-001")
    product.price = Decimal("95.00")
    product.name = "Keyboard v2"
    product.save()
    event = aggregate_events("product", product.pk)[-1]
    assert event.event_type == "product.updated"
    assert event.payload["changes"] == {
        "name": {"old": "Keyboard", "new": "Keyboard v2"},
        "price": {"old": "89.00", "new": "95.00"},
    }
    assert event.payload["state"]["sku"] == "KB-001"
    assert event.payload["state"]["price"] == "95.00"


def test_save_without_changes_and_stock_only_changes_write_no_event(products: list[Product]) -> None:
    """Saving an unchanged row, or only the consumer-maintained stock, writes no event."""
    product = Product.objects.get(sku="KB-001")
    before = events().count()
    product.save()
    product.stock = 7
    product.save()
    Product.objects.filter(pk=product.pk).update(stock=F("stock") + 1)
    assert events().count() == before
    product.refresh_from_db()
    assert product.stock == 8


def test_queryset_update_of_tracked_fields_is_refused(customer: Customer, products: list[Product]) -> None:
    """QuerySet.update() on fields that events describe fails loudly and changes nothing."""
    order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)], place=True)
    with pytest.raises(BulkWriteError, match=r"Order\.objects\.update\(\) would change status.*save\(update_fields"):
        Order.objects.filter(pk=order.pk).update(status=Order.Status.CANCELLED)
    with pytest.raises(BulkWriteError, match="price"):
        Product.objects.bulk_update(products, ["price"])
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_bulk_create_writes_one_event_per_row(customer: Customer, products: list[Product]) -> None:
    """bulk_create() writes a created event for every row, continuing the aggregate's versions."""
    order = services.order_create(customer=customer, lines=[])
    OrderLine.objects.bulk_create([OrderLine(order=order, product=p, quantity=1, unit_price=p.price) for p in products])
    events = aggregate_events("order", order.pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [
        ("order.created", 1),
        ("order_line.added", 2),
        ("order_line.added", 3),
        ("order_line.added", 4),
    ]
    with pytest.raises(BulkWriteError, match="ignore_conflicts"):
        Product.objects.bulk_create([Product(sku="KB-001", name="dup", price=1)], ignore_conflicts=True)


def test_queryset_delete_writes_events_for_rows_and_cascade(customer: Customer, products: list[Product]) -> None:
    """Deleting orders in bulk writes order.deleted and order_line.removed for the cascaded lines."""
    order = services.order_create(customer=customer, lines=[services.LineRequest(p.sku, 1) for p in products[:2]])
    Order.objects.filter(pk=order.pk).delete()
    types = sorted(e.event_type for e in aggregate_events("order", order.pk)[3:])
    assert types == ["order.deleted", "order_line.removed", "order_line.removed"]


def test_stock_receipts_join_the_product_aggregate(products: list[Product]) -> None:
    """A receipt is a stock.received event on its product's version sequence."""
    services.stock_receive(sku="KB-001", quantity=5, note="delivery")
    events = aggregate_events("product", products[0].pk)
    assert [(e.event_type, e.aggregate_version) for e in events] == [("product.created", 1), ("stock.received", 2)]
    assert events[1].payload["state"]["quantity"] == 5


def test_event_row_follows_the_debezium_outbox_columns(products: list[Product]) -> None:
    """The table has Debezium's aggregatetype/aggregateid/type/payload columns and a database-clock time."""
    from django.db import connection

    events_flush()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT aggregatetype, aggregateid, type, payload->'state'->>'sku', "
            "created_at BETWEEN now() AND clock_timestamp() FROM outbox_event ORDER BY id LIMIT 1"
        )
        assert cursor.fetchone() == ("product", str(products[0].pk), "product.created", "KB-001", True)
