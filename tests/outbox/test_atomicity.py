"""Invariant 1: a business row commits if and only if its outbox event commits."""

from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.models.signals import post_save
from django.test import Client

from outbox.emit.writer import NewEvent, events_write
from outbox.errors import NotInTransactionError
from outbox.relay import claims
from tests.outbox.helpers import SHIPMENT_ADD_URL, committed_count, events, failing_insert, shipment_form
from tests.outbox_app import services
from tests.outbox_app.models import Item, Shipment

pytestmark = pytest.mark.django_db(transaction=True)


def test_autocommit_save_commits_row_and_event_together() -> None:
    """A bare save() in autocommit mode commits the row and its event, as another connection sees."""
    Item(sku="AC-1", name="Autocommit", price=Decimal("1.00")).save()
    assert committed_count("outbox_app_item") == 1
    assert committed_count("outbox_event") == 1


def test_failing_event_insert_leaves_no_business_row() -> None:
    """When the event insert fails, the save fails and its row is not committed either."""
    with failing_insert("outbox_event"), pytest.raises(DatabaseError, match="insert refused by test trigger"):
        Item(sku="AC-2", name="No event, no row", price=Decimal("1.00")).save()
    assert committed_count("outbox_app_item") == 0
    assert committed_count("outbox_event") == 0


def test_failing_event_insert_on_delete_keeps_the_row() -> None:
    """A delete whose event cannot be written is rolled back: the row is still there."""
    item = Item.objects.create(sku="AC-3", name="Kept", price=Decimal("1.00"))
    with failing_insert("outbox_event"), pytest.raises(DatabaseError):
        item.delete()
    assert committed_count("outbox_app_item") == 1


def test_rolled_back_save_publishes_nothing() -> None:
    """A save inside a transaction that later fails leaves neither row nor event."""
    with pytest.raises(RuntimeError), transaction.atomic():
        Item.objects.create(sku="RB-1", name="Rolled back", price=Decimal("1.00"))
        raise RuntimeError("a later statement failed")
    assert committed_count("outbox_app_item") == 0
    assert committed_count("outbox_event") == 0


def test_rolled_back_savepoint_drops_only_its_own_events(items: list[Item]) -> None:
    """Events written inside a rolled-back savepoint go with it; the outer transaction's stay."""
    with transaction.atomic():
        shipment = services.shipment_create(recipient="ada@example.com", lines=[(items[0], 1)])
        with pytest.raises(RuntimeError), transaction.atomic():
            services.shipment_line_add(shipment=shipment, item=items[1], quantity=1)
            raise RuntimeError("inner failure")
    types = list(events().filter(aggregate_type="shipment").values_list("event_type", "aggregate_version"))
    assert types == [("shipment.drafted", 1), ("shipment_line.added", 2)]


def test_receiver_refuses_to_write_outside_an_atomic_block(items: list[Item]) -> None:
    """A post_save outside any transaction is refused with an error saying what to do."""
    with pytest.raises(NotInTransactionError, match=r"Wrap the change in django\.db\.transaction\.atomic"):
        post_save.send(sender=Item, instance=items[0], created=False, raw=False, using="default", update_fields=None)
    with pytest.raises(NotInTransactionError):
        events_write([NewEvent("x.happened", "x", "1", {})])
    assert committed_count("outbox_event") == len(items)


def test_admin_validation_error_writes_no_event(admin_client: Client, items: list[Item]) -> None:
    """An admin submit that fails validation commits nothing, events included."""
    before = committed_count("outbox_event")
    response = admin_client.post(SHIPMENT_ADD_URL, shipment_form([(items[0].pk, 0)]))
    assert response.status_code == 200
    assert committed_count("outbox_app_shipment") == 0
    assert committed_count("outbox_event") == before


def test_admin_failure_while_saving_lines_rolls_back_the_shipment_event(
    admin_client: Client, items: list[Item]
) -> None:
    """If saving the inline lines fails after the shipment was saved, the shipment's event goes too."""
    before = committed_count("outbox_event")
    data = shipment_form([(item.pk, 1) for item in items])
    with failing_insert("outbox_app_shipmentline"), pytest.raises(DatabaseError):
        admin_client.post(SHIPMENT_ADD_URL, data)
    assert committed_count("outbox_app_shipment") == 0
    assert committed_count("outbox_app_shipmentline") == 0
    assert committed_count("outbox_event") == before
    assert not Shipment.objects.exists()


def test_connection_is_usable_after_a_failed_commit() -> None:
    """After a commit whose events were refused, the next save on the same connection works."""
    with failing_insert("outbox_event"), pytest.raises(DatabaseError):
        Item(sku="AC-4", name="Refused", price=Decimal("1.00")).save()
    Item(sku="AC-5", name="Accepted", price=Decimal("1.00")).save()
    assert committed_count("outbox_app_item") == 1
    assert committed_count("outbox_event") == 1


@pytest.mark.parametrize("savepoint", [False, True], ids=["rollback", "savepoint-rollback"])
def test_saves_go_on_after_a_rollback_on_a_connection_that_ran_relay_statements(savepoint: bool) -> None:
    """psycopg deallocates every prepared statement of the session, the event insert's too, at a
    rollback that follows one of its own prepared statements (the relay's): the next commit
    prepares the insert again instead of failing (a process that relays and consumes, such as the
    embedded relay, or a test, runs both on one connection)."""
    Item.objects.create(sku="PS-1", name="First", price=Decimal("1.00"))  # prepares the insert
    claims.claim(relay="t", limit=10, lease=30)  # a statement psycopg prepares and tracks
    with pytest.raises(RuntimeError), transaction.atomic():
        if savepoint:
            with transaction.atomic():
                Item.objects.create(sku="PS-2", name="Rolled back", price=Decimal("1.00"))
                raise RuntimeError("rolled back")
        raise RuntimeError("rolled back")
    Item.objects.create(sku="PS-3", name="After", price=Decimal("1.00"))
    assert committed_count("outbox_event") == 2


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-with-commit", "plain-insert"])
def test_both_commit_paths_write_the_events(settings: Any, prepared: bool, items: list[Item]) -> None:
    """With or without prepared statements (PgBouncer), a commit writes its events with the rows."""
    settings.OUTBOX_PREPARED_STATEMENTS = prepared
    connection.close()  # a new connection, set up under this setting
    for i in range(3):  # the first commit prepares the statement, later ones reuse it
        Item.objects.create(sku=f"C-{i}", name=f"C{i}", price=Decimal("1.00"))
    assert committed_count("outbox_app_item") == len(items) + 3
    assert committed_count("outbox_event") == len(items) + 3


def test_unencodable_payload_fails_the_save_not_the_commit(items: list[Item]) -> None:
    """A payload that cannot be encoded fails at the save, which rolls back cleanly."""
    item = items[0]
    item.name = object()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="not JSON serializable"):
        item.save()
    assert committed_count("outbox_event") == len(items)
    Item.objects.create(sku="NX-1", name="Next", price=Decimal("1.00"))
    assert committed_count("outbox_event") == len(items) + 1
