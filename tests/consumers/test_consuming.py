"""The batch runner every consumer shares: isolation, failure records, retries, bad input."""

import logging
from typing import Any

import dramatiq
import pytest
from django.db import connection

from core.models import Customer
from outbox.consume.run import Attempt, BadMessage, OversizedMessage, consume
from outbox.models import Delivery, Event, MessageDrop, Pending
from outbox.testing import deliver
from tests.outbox.helpers import events


@pytest.fixture
def three(customer: Customer) -> list[int]:
    from core import services

    services.customer_create(name="B", email="b@example.com")
    services.customer_create(name="C", email="c@example.com")
    return [e.id for e in events().order_by("id")]


class Poison:
    """A handler that fails on one event and records the others it applied."""

    def __init__(self, bad: int) -> None:
        self.bad = bad
        self.applied: list[int] = []

    def __call__(self, events: list[Event]) -> None:
        for event in events:
            if event.id == self.bad:
                raise ValueError(f"cannot apply {event.id}")
        self.applied.extend(event.id for event in events)


def rows(consumer: str = "test") -> dict[int, tuple[str, int]]:
    return {d.event_id: (d.status, d.attempts) for d in Delivery.objects.filter(consumer=consumer)}


@pytest.mark.parametrize("value", ["1,2", [1, "2"], [True], None, {"ids": [1]}])
def test_a_message_that_is_not_a_list_of_ids_is_refused_with_what_to_do(value: object, db: None) -> None:
    with pytest.raises(BadMessage, match=r"expects one argument, a list of event ids .* outbox_replay"):
        consume(consumer="test", event_ids=value, handle=lambda events: None)
    assert not Delivery.objects.exists()


def test_a_poison_event_fails_alone_and_only_it_is_retried(three: list[int]) -> None:
    handle = Poison(three[1])
    with pytest.raises(dramatiq.Retry, match="1 of 3 events failed"):
        consume(consumer="test", event_ids=three, handle=handle, attempt=Attempt(1, 3))
    assert rows() == {three[0]: ("done", 1), three[1]: ("failed", 1), three[2]: ("done", 1)}
    assert "ValueError: cannot apply" in Delivery.objects.get(event_id=three[1]).last_error
    assert "Traceback" in Delivery.objects.get(event_id=three[1]).last_error
    with pytest.raises(dramatiq.Retry):
        consume(consumer="test", event_ids=three, handle=handle, attempt=Attempt(2, 3))
    # The last attempt: dead, and the message is finished (no exception for the worker to retry).
    outcome = consume(consumer="test", event_ids=three, handle=handle, attempt=Attempt(3, 3))
    assert list(outcome.dead) == [three[1]]
    assert rows()[three[1]] == ("dead", 3)
    assert handle.applied == [three[0], three[2]]


def test_a_retry_leaves_dead_deliveries_alone_and_a_new_message_tries_them_again(three: list[int]) -> None:
    handle = Poison(three[0])
    consume(consumer="test", event_ids=three, handle=handle, attempt=Attempt(1, 1))
    assert rows()[three[0]] == ("dead", 1)
    consume(consumer="test", event_ids=three, handle=handle, attempt=Attempt(2, 3))
    assert rows()[three[0]] == ("dead", 1)
    consume(consumer="test", event_ids=three, handle=lambda events: None, attempt=Attempt(1, 3))
    assert rows()[three[0]] == ("done", 2)


def test_ids_that_name_no_event_are_refused_without_a_delivery_in_one_log_line(
    three: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """A forged message naming thousands of ids that exist in no event leaves no dead delivery
    (nothing could ever clear it), one summary log line and a count; the real events apply."""
    unknown = list(range(max(three) + 1000, max(three) + 6000))
    with caplog.at_level(logging.WARNING, logger="outbox.consumer"):
        outcome = consume(consumer="test", event_ids=[*three, *unknown], handle=lambda events: None)
    assert outcome.done == three
    assert outcome.unknown == unknown
    assert set(rows()) == set(three)
    lines = [r.getMessage() for r in caplog.records if "name no event" in r.getMessage()]
    assert len(lines) == 1
    assert "5000 of the 5003 event ids" in lines[0]
    assert len(lines[0]) < 500
    drop = MessageDrop.objects.get(consumer="test", reason="unknown_events")
    assert (drop.messages, drop.events) == (1, 5000)
    # A retry of the same message (another event failed) names them again: not counted twice.
    consume(consumer="test", event_ids=[*three, *unknown], handle=lambda events: None, attempt=Attempt(2, 3))
    assert MessageDrop.objects.get(consumer="test", reason="unknown_events").messages == 1


def test_a_purged_event_is_no_event_either(three: list[int]) -> None:
    """An id whose event was purged since it was published names nothing to deliver."""
    Pending.objects.filter(event_id=three[0]).delete()  # published
    deliver("audit_log", [three[0]])  # done and sealed: settled
    with connection.cursor() as cursor:  # as outbox_purge deletes settled events
        cursor.execute("SELECT outbox_purge_events(%s::bigint[])", [[three[0]]])
        assert cursor.fetchone() == (1,)
    outcome = consume(consumer="test", event_ids=three, handle=lambda events: None)
    assert outcome.unknown == [three[0]]
    assert set(rows()) == set(three[1:])


def test_a_message_naming_more_ids_than_the_cap_is_dropped_whole(
    three: list[int], settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Over OUTBOX_MESSAGE_MAX_IDS nothing is read or applied, not even the real events, and the
    log line shows no argument at all."""
    settings.OUTBOX_MESSAGE_MAX_IDS = 100
    with caplog.at_level(logging.ERROR, logger="outbox.consumer"), pytest.raises(OversizedMessage):
        consume(consumer="test", event_ids=[*three, *range(10**9, 10**9 + 20_000)], handle=lambda events: None)
    assert not Delivery.objects.exists()
    assert MessageDrop.objects.get(consumer="test", reason="oversized").messages == 1
    assert all(len(r.getMessage()) < 400 for r in caplog.records)
    assert "OUTBOX_MESSAGE_MAX_IDS=100" in caplog.text


def test_a_group_with_a_poison_event_is_split_and_the_rest_of_it_applied(three: list[int]) -> None:
    """Events handled together (one aggregate's, say) are tried one by one when the group fails."""
    handle = Poison(three[1])
    with pytest.raises(dramatiq.Retry, match="1 of 3 events failed"):
        consume(consumer="test", event_ids=three, handle=handle, group_by=lambda e: "all", attempt=Attempt(1, 3))
    assert rows() == {three[0]: ("done", 1), three[1]: ("failed", 1), three[2]: ("done", 1)}
    assert handle.applied == [three[0], three[2]]
