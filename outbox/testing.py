"""Test helpers for projects that use the outbox: capture what a block emits, drain the pipeline.

    from outbox import testing

    def test_issuing_an_invoice_posts_it(db):
        with testing.capture() as events:
            Invoice.objects.create(number="A-1", total=100)
        assert events.types == ["invoice.issued"]
        assert events[0].payload["state"]["number"] == "A-1"

        testing.drain()           # relay and consumers, in this process, until nothing is left
        assert LedgerEntry.objects.filter(invoice="A-1").exists()

`drain()` runs the same claim, routing and consumer code as the relay and the workers, only
without a broker in between; it fails, naming what is stuck, when a round makes no progress.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections

from outbox import conf
from outbox.consume.declare import declaration, retries_of
from outbox.consume.run import Attempt, Outcome, deliver
from outbox.emit.context import event_context
from outbox.emit.writer import events_flush
from outbox.models import Delivery, Event, Pending
from outbox.relay import claims, routing

__all__ = ["Captured", "Drained", "Stuck", "capture", "deliver", "drain"]

RELAY = "outbox.testing"


class Stuck(AssertionError):
    """drain() made no progress, or a delivery died: the message says which and why."""


class Captured(list[Event]):
    """The events a `capture()` block emitted, in the order they were written."""

    @property
    def types(self) -> list[str]:
        """The events' types, in order."""
        return [event.event_type for event in self]

    def of_type(self, event_type: str) -> list[Event]:
        """The events of one type."""
        return [event for event in self if event.event_type == event_type]


@contextmanager
def capture(*, using: str = DEFAULT_DB_ALIAS) -> Iterator[Captured]:
    """Collect the events written inside the block (filled in when the block ends).

    The block's events carry a correlation id of their own, so events that other code writes
    meanwhile are not collected. Events still held for an open transaction are written first.
    """
    found = Captured()
    correlation_id = f"capture-{uuid.uuid4().hex}"
    with event_context(correlation_id=correlation_id):
        yield found
    if connections[using].in_atomic_block:
        events_flush(using=using)
    found.extend(Event.objects.using(using).filter(correlation_id=correlation_id).order_by("id"))


@dataclass
class Drained:
    """What a drain() did: per consumer, the events done and the deliveries that died."""

    done: dict[str, list[int]] = field(default_factory=dict)
    dead: dict[str, dict[int, str]] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.done.setdefault(outcome.consumer, []).extend(outcome.done)
        if outcome.dead:
            self.dead.setdefault(outcome.consumer, {}).update(outcome.dead)


def drain(*, rounds: int = 50, allow_dead: bool = False) -> Drained:
    """Relay every pending event and run its consumers in this process until nothing is left.

    Failed deliveries are tried again, as the worker would, until done or dead. Raises Stuck when
    a delivery died (unless `allow_dead`) or when `rounds` pass without the backlog emptying.
    """
    import dramatiq

    if connections[DEFAULT_DB_ALIAS].in_atomic_block:  # a test's transaction: write its held events now
        events_flush()
    drained = Drained()
    attempts: dict[tuple[str, int], int] = {}
    for _ in range(rounds):
        batch = claims.claim(relay=RELAY, limit=conf.batch_size(), lease=conf.lease_seconds())
        if batch:
            work = list(routing.event_ids_by_consumer(batch).items())
            claims.mark_published(relay=RELAY, batch=batch)
        else:
            open_ = Delivery.objects.filter(status__in=[Delivery.Status.PUBLISHED, Delivery.Status.FAILED])
            by_consumer: dict[str, list[int]] = {}
            for consumer, event_id in open_.values_list("consumer", "event_id").order_by("event_id"):
                by_consumer.setdefault(consumer, []).append(event_id)
            work = list(by_consumer.items())
            if not work:
                break
        for consumer, ids in work:
            allowed = 1 + retries_of(declaration(consumer))
            number = max(attempts.get((consumer, i), 0) for i in ids) + 1
            for i in ids:
                attempts[(consumer, i)] = number
            with suppress(dramatiq.Retry):  # failed events are tried again next round
                drained.add(deliver(consumer, ids, attempt=Attempt(min(number, allowed), allowed)))
    else:
        raise Stuck(_stuck_report(rounds))
    if drained.dead and not allow_dead:
        lines = [
            f"{consumer}: event {event_id}: {error.splitlines()[0] if error else ''}"
            for consumer, dead in drained.dead.items()
            for event_id, error in dead.items()
        ]
        raise Stuck("Deliveries died while draining:\n" + "\n".join(lines))
    return drained


def _stuck_report(rounds: int) -> str:
    pending = Pending.objects.count()
    open_ = list(
        Delivery.objects.filter(status__in=[Delivery.Status.PUBLISHED, Delivery.Status.FAILED, Delivery.Status.WAITING])
        .order_by("event_id")
        .values_list("consumer", "event_id", "status", "last_error")[:20]
    )
    lines = [f"{c}: event {e} {s}: {(err or '').splitlines()[0] if err else ''}" for c, e, s, err in open_]
    return f"drain() made no end after {rounds} rounds: {pending} events pending; unfinished deliveries:\n" + "\n".join(
        lines
    )
