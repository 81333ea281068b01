"""Invariant 1: a business row commits if and only if its outbox event commits."""

from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import post_save
from django.test import Client

from core import services
from core.models import Customer, Order, Product
from outbox.emit.writer import NewEvent, events_write
from outbox.errors import NotInTransactionError
from tests.core.test_admin import ADD_URL, order_form
from tests.outbox.helpers import committed_count, events, failing_insert

pytestmark = pytest.mark.django_db(transaction=True)


def test_autocommit_save_commits_row_and_event_together() -> None:
    """A bare save() in autocommit mode commits the row and its event, as another connection sees."""
    Product(sku="AC-1", name="Autocommit", price=Decimal("1.00")).save()
    assert committed_count("core_product") == 1
    assert committed_count("outbox_event") == 1


def test_failing_event_insert_leaves_no_business_row() -> None:
    """When the event insert fails, the save fails and its row is not committed either."""
    with failing_insert("outbox_event"), pytest.raises(DatabaseError, match="insert refused by test trigger"):
        Product(sku="AC-2", name="No event, no row", price=Decimal("1.00")).save()
    assert committed_count("core_product") == 0
    assert committed_count("outbox_event") == 0


def test_failing_event_insert_on_delete_keeps_the_row() -> None:
    """A delete whose event cannot be written is rolled back: the row is still there."""
    product = services.product_create(sku="AC-3", name="Kept", price=Decimal("1.00"))
    with failing_insert("outbox_event"), pytest.raises(DatabaseError):
        product.delete()
    assert committed_count("core_product") == 1


def test_rolled_back_save_publishes_nothing() -> None:
    """A save inside a transaction that later fails leaves neither row nor event."""
    with pytest.raises(RuntimeError), transaction.atomic():
        services.product_create(sku="RB-1", name="Rolled back", price=Decimal("1.00"))
        raise RuntimeError("a later statement failed")
    assert committed_count("core_product") == 0
    assert committed_count("outbox_event") == 0


def test_rolled_back_savepoint_drops_only_its_own_events(customer: Customer, products: list[Product]) -> None:
    """Events written inside a rolled-back savepoint go with it; the outer transaction's stay."""
    with transaction.atomic():
        order = services.order_create(customer=customer, lines=[services.LineRequest("KB-001", 1)])
        with pytest.raises(RuntimeError), transaction.atomic():
            services.order_line_add(order=order, sku="MS-002", quantity=1)
            raise RuntimeError("inner failure")
    types = list(events().filter(aggregate_type="order").values_list("event_type", "aggregate_version"))
    assert types == [("order.created", 1), ("order_line.added", 2)]


def test_receiver_refuses_to_write_outside_an_atomic_block(products: list[Product]) -> None:
    """A post_save outside any transaction is refused with an error saying what to do."""
    with pytest.raises(NotInTransactionError, match=r"Wrap the change in django\.db\.transaction\.atomic"):
        post_save.send(
            sender=Product, instance=products[0], created=False, raw=False, using="default", update_fields=None
        )
    with pytest.raises(NotInTransactionError):
        events_write([NewEvent("x.happened", "x", "1", {})])
    assert committed_count("outbox_event") == len(products)


def test_admin_validation_error_writes_no_event(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """An admin submit that fails validation commits nothing, events included."""
    before = committed_count("outbox_event")
    response = admin_client.post(ADD_URL, order_form(customer, [(products[0].pk, 0)]))
    assert response.status_code == 200
    assert committed_count("core_order") == 0
    assert committed_count("outbox_event") == before


def test_admin_failure_while_saving_lines_rolls_back_the_order_event(
    admin_client: Client, customer: Customer, products: list[Product]
) -> None:
    """If saving the inline lines fails after the order was saved, the order's event goes too."""
    before = committed_count("outbox_event")
    data = order_form(customer, [(p.pk, 1) for p in products])
    with failing_insert("core_orderline"), pytest.raises(DatabaseError):
        admin_client.post(ADD_URL, data)
    assert committed_count("core_order") == 0
    assert committed_count("core_orderline") == 0
    assert committed_count("outbox_event") == before
    assert not Order.objects.exists()


def test_connection_is_usable_after_a_failed_commit() -> None:
    """After a commit whose events were refused, the next save on the same connection works."""
    with failing_insert("outbox_event"), pytest.raises(DatabaseError):
        Product(sku="AC-4", name="Refused", price=Decimal("1.00")).save()
    Product(sku="AC-5", name="Accepted", price=Decimal("1.00")).save()
    assert committed_count("core_product") == 1
    assert committed_count("outbox_event") == 1


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-with-commit", "plain-insert"])
def test_both_commit_paths_write_the_events(settings: Any, prepared: bool, customer: Customer) -> None:
    """With or without prepared statements (PgBouncer), a commit writes its events with the rows."""
    settings.OUTBOX_PREPARED_STATEMENTS = prepared
    connection.close()  # a new connection, set up under this setting
    for i in range(3):  # the first commit prepares the statement, later ones reuse it
        services.customer_create(name=f"C{i}", email=f"c{i}@example.com")
    assert committed_count("core_customer") == 4
    assert committed_count("outbox_event") == 4


def test_unencodable_payload_fails_the_save_not_the_commit(customer: Customer) -> None:
    """A payload that cannot be encoded fails at the save, which rolls back cleanly."""
    customer.name = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="not JSON serializable"):
        customer.save()
    assert committed_count("outbox_event") == 1
    services.customer_create(name="Next", email="next@example.com")
    assert committed_count("outbox_event") == 2
