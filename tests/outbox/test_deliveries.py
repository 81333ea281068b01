"""The consumers' tracking record: done once, whatever the duplicates; failures recorded."""

import pytest
from django.db import transaction

from outbox.consume.deliveries import delivery_begin, delivery_fail
from outbox.models import Delivery
from tests.outbox.helpers import events
from tests.outbox_app.models import Item

pytestmark = pytest.mark.django_db(transaction=True)


def _event_id() -> int:
    Item.objects.create(sku="D-1", name="D", price=1)
    return events().get().id


def test_delivery_begins_once_and_duplicates_are_skipped() -> None:
    """The first attempt marks the delivery done; a duplicate finds it done and is told to skip."""
    event_id = _event_id()
    with transaction.atomic():
        assert delivery_begin(event_id=event_id, consumer="journal") is True
    with transaction.atomic():
        assert delivery_begin(event_id=event_id, consumer="journal") is False
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("done", 1)
    assert delivery.started_at is not None


def test_a_rolled_back_attempt_leaves_the_delivery_to_do() -> None:
    """If the effect fails, the done mark rolls back with it and the next attempt runs."""
    event_id = _event_id()
    with pytest.raises(RuntimeError), transaction.atomic():
        delivery_begin(event_id=event_id, consumer="journal")
        raise RuntimeError("effect failed")
    delivery_fail(event_id=event_id, consumer="journal", error="RuntimeError: effect failed", final=False)
    assert Delivery.objects.get().status == "failed"
    with transaction.atomic():
        assert delivery_begin(event_id=event_id, consumer="journal") is True
    assert Delivery.objects.get().status == "done"


def test_final_failure_is_dead_with_its_error_and_never_overwrites_done() -> None:
    """The last failure marks the delivery dead with the error; a done delivery stays done."""
    event_id = _event_id()
    delivery_fail(event_id=event_id, consumer="journal", error="boom", final=False)
    delivery_fail(event_id=event_id, consumer="journal", error="boom again", final=True)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("dead", 2, "boom again")
    with transaction.atomic():
        assert delivery_begin(event_id=event_id, consumer="journal") is True
    delivery_fail(event_id=event_id, consumer="journal", error="late", final=True)
    assert Delivery.objects.get().status == "done"
