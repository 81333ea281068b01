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
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from outbox.models import Delivery
from outbox.relay.claims import pg_execute

Overdue = list[tuple[int, int, str]]  # (delivery id, event id, consumer)

_PG_TAKE = """
WITH s AS (
    SELECT id FROM outbox_delivery
    WHERE (status = 'published' AND published_at < now() - make_interval(secs => %s))
       OR (status = 'failed' AND updated_at < now() - make_interval(secs => %s))
    ORDER BY published_at LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox_delivery d
SET published_at = now(), publications = d.publications + 1, updated_at = now()
FROM s WHERE d.id = s.id
RETURNING d.id, d.event_id, d.consumer
"""

_PG_GIVE_BACK = """
UPDATE outbox_delivery
SET published_at = now() - make_interval(secs => %s), updated_at = now() - make_interval(secs => %s),
    publications = publications - 1
WHERE id = ANY(%s) AND status IN ('published', 'failed')
"""


def take_overdue(*, deadline: float, limit: int) -> Overdue:
    """Take up to `limit` deliveries published (or last failed) more than `deadline` seconds ago.

    Taking one restarts its deadline and counts a publication, so that two relays sweeping at
    once do not both publish it.
    """
    if connection.vendor == "postgresql":
        return [(row[0], row[1], row[2]) for row in pg_execute(_PG_TAKE, [deadline, deadline, limit])]
    now = timezone.now()
    due = now - timedelta(seconds=deadline)
    with transaction.atomic():
        rows = list(
            Delivery.objects.filter(
                Q(status=Delivery.Status.PUBLISHED, published_at__lt=due)
                | Q(status=Delivery.Status.FAILED, updated_at__lt=due)
            )
            .order_by("published_at")
            .values_list("id", "event_id", "consumer")[:limit]
        )
        Delivery.objects.filter(id__in=[r[0] for r in rows]).update(
            published_at=now, publications=F("publications") + 1, updated_at=now
        )
    return rows


def give_back(*, deadline: float, overdue: Overdue) -> None:
    """Undo take_overdue() for deliveries that could not be published: due again, not counted."""
    ids = [row[0] for row in overdue]
    if connection.vendor == "postgresql":
        pg_execute(_PG_GIVE_BACK, [deadline + 1, deadline + 1, ids])
        return
    due = timezone.now() - timedelta(seconds=deadline + 1)
    Delivery.objects.filter(id__in=ids, status__in=[Delivery.Status.PUBLISHED, Delivery.Status.FAILED]).update(
        published_at=due, updated_at=due, publications=F("publications") - 1
    )


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
