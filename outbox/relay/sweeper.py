"""The redelivery sweeper: publish again what was published but never finished.

Dramatiq's Redis broker gives a killed worker's message back only when the worker's heartbeat is
stale and another worker happens to run maintenance (not at all on an idle queue), and Redis
without persistence loses what it held. PostgreSQL knows better: a delivery still `published`
after the deadline was lost or is stuck, and the sweeper publishes it again. So is a `failed`
delivery whose retry has not come within the deadline of its last attempt (the retry was waiting
in Redis when Redis lost it). Consumers are
idempotent, so a delivery that was only slow costs a duplicate message and nothing else.
"""

from collections import defaultdict
from datetime import datetime, timedelta

import dramatiq
from django.utils import timezone
from dramatiq.brokers.stub import StubBroker

from outbox import conf
from outbox.backends import Overdue, ops
from outbox.models import Delivery


def sends_for(broker: dramatiq.Broker) -> bool:
    """Whether deliveries published outside the relay go to its sweeper rather than to `broker`:
    the embedded default's in-process broker exists only inside the relay, and no worker reads it
    anywhere else (a replay, a backfill)."""
    return isinstance(broker, StubBroker)


def published_now(*, by_sweeper: bool) -> datetime:
    """The `published_at` of a delivery published now: now, or, for the sweeper to send, just past
    the redelivery deadline, so that its next pass does."""
    now = timezone.now()
    return now - timedelta(seconds=conf.redelivery_seconds() + 1) if by_sweeper else now


def take_overdue(*, deadline: float, limit: int) -> Overdue:
    """Take up to `limit` deliveries published (or last failed) more than `deadline` seconds ago.

    Taking one restarts its deadline and counts a publication, so that two relays sweeping at
    once do not both publish it.
    """
    return ops().take_overdue(deadline=deadline, limit=limit)


def give_back(*, deadline: float, overdue: Overdue) -> None:
    """Undo take_overdue() for deliveries that could not be published: due again, not counted."""
    ops().give_back(deadline=deadline, ids=[row[0] for row in overdue])


def abandon(*, overdue: Overdue, reason: str) -> None:
    """Mark deliveries dead that cannot be published again (their consumer no longer exists)."""
    Delivery.objects.filter(
        id__in=[row[0] for row in overdue], status__in=[Delivery.Status.PUBLISHED, Delivery.Status.FAILED]
    ).update(status=Delivery.Status.DEAD, last_error=reason[:4000], updated_at=timezone.now())


def by_consumer(overdue: Overdue) -> dict[str, list[int]]:
    """Group overdue deliveries into {consumer: [event ids]}, one message each."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for _, event_id, consumer in overdue:
        grouped[consumer].append(event_id)
    return dict(grouped)
