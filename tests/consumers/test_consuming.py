"""The batch runner every consumer shares: isolation, failure records, retries, bad input."""

import dramatiq
import pytest

from core.models import Customer
from outbox.consuming import Attempt, BadMessage, consume
from outbox.models import Delivery, Event
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


def test_an_unknown_event_id_is_dead_at_once_and_the_rest_applied(three: list[int]) -> None:
    missing = max(three) + 1000
    outcome = consume(consumer="test", event_ids=[*three, missing], handle=lambda events: None, attempt=Attempt(1, 6))
    assert outcome.done == three
    delivery = Delivery.objects.get(event_id=missing)
    assert delivery.status == "dead"
    assert f"Event {missing} does not exist" in delivery.last_error


def test_a_group_with_a_poison_event_is_split_and_the_rest_of_it_applied(three: list[int]) -> None:
    """Events handled together (one aggregate's, say) are tried one by one when the group fails."""
    handle = Poison(three[1])
    with pytest.raises(dramatiq.Retry, match="1 of 3 events failed"):
        consume(consumer="test", event_ids=three, handle=handle, group_by=lambda e: "all", attempt=Attempt(1, 3))
    assert rows() == {three[0]: ("done", 1), three[1]: ("failed", 1), three[2]: ("done", 1)}
    assert handle.applied == [three[0], three[2]]
