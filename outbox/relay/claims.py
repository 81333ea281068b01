"""The relay's bookkeeping in the database: claim a batch, mark it published, or release it.

Each function is one short transaction of its own; none is ever open while the relay talks to the
broker. PostgreSQL gets single statements (`FOR UPDATE SKIP LOCKED`, so any number of relays can
claim side by side); other databases (the embedded SQLite, one relay) get the ORM equivalent.
"""

from datetime import timedelta
from typing import Any

import psycopg
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from outbox import conf
from outbox.models import Delivery, Pending
from outbox.relay import routing

Claimed = list[tuple[int, str]]  # (event id, event type), in id order

_PG_CLAIM = """
WITH c AS (
    SELECT event_id FROM outbox_pending
    WHERE claimed_until IS NULL OR claimed_until < now()
    ORDER BY event_id LIMIT %s
    FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE outbox_pending p
    SET claimed_by = %s, claimed_until = now() + make_interval(secs => %s), claims = p.claims + 1
    FROM c WHERE p.event_id = c.event_id
    RETURNING p.event_id, p.type
)
SELECT event_id, type FROM u ORDER BY event_id
"""

# Deletes the claim and records a published delivery per routed consumer, unless the claim was
# lost (its lease ran out and another relay took it: that relay records its own publication).
# A consumer that finished first keeps its done row. The routes arrive as (type, consumer)
# pairs, each once, for exactly the types in the batch.
_PG_MARK = """
WITH d AS (
    DELETE FROM outbox_pending WHERE event_id = ANY(%s) AND claimed_by = %s RETURNING event_id, type, claims
)
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, updated_at)
SELECT d.event_id, r.consumer, 'published', d.claims, 0, '', now(), now()
FROM d JOIN unnest(%s::text[], %s::text[]) AS r(type, consumer) ON r.type = d.type
ORDER BY d.event_id, r.consumer
ON CONFLICT (event_id, consumer) DO UPDATE
    SET publications = outbox_delivery.publications + EXCLUDED.publications,
        published_at = EXCLUDED.published_at, updated_at = EXCLUDED.updated_at
    WHERE outbox_delivery.status = 'published'
"""

_PG_RELEASE = """
UPDATE outbox_pending
SET claimed_by = '', claimed_until = NULL, claims = claims - %s
WHERE event_id = ANY(%s) AND claimed_by = %s
"""


def pg_execute(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run one of the relay's statements as a prepared statement; return its rows, if any.

    The relay runs the same few statements all day: preparing them saves their planning.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=conf.prepared_statements() or None)
        return cursor.fetchall() if cursor.description else []


def claim(*, relay: str, limit: int, lease: float) -> Claimed:
    """Claim up to `limit` unclaimed (or abandoned) events for `lease` seconds; return them."""
    if connection.vendor == "postgresql":
        return [(row[0], row[1]) for row in pg_execute(_PG_CLAIM, [limit, relay, lease])]
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Pending.objects.filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("event_id")
            .values_list("event_id", flat=True)[:limit]
        )
        Pending.objects.filter(event_id__in=ids).update(
            claimed_by=relay, claimed_until=now + timedelta(seconds=lease), claims=F("claims") + 1
        )
        return list(Pending.objects.filter(event_id__in=ids).order_by("event_id").values_list("event_id", "event_type"))


def mark_published(*, relay: str, batch: Claimed) -> None:
    """Record the events' deliveries as published and drop them from the backlog."""
    event_ids = [event_id for event_id, _ in batch]
    if connection.vendor == "postgresql":
        types, consumers = routing.route_pairs({event_type for _, event_type in batch})
        pg_execute(_PG_MARK, [event_ids, relay, types, consumers])
        return
    now = timezone.now()
    with transaction.atomic():
        claimed = list(
            Pending.objects.filter(event_id__in=event_ids, claimed_by=relay).values_list(
                "event_id", "event_type", "claims"
            )
        )
        claims = {event_id: count for event_id, _, count in claimed}
        Pending.objects.filter(event_id__in=list(claims)).delete()
        for event_id, event_type, _ in claimed:
            for consumer in routing.consumers_for(event_type):
                delivery, created = Delivery.objects.get_or_create(
                    event_id=event_id,
                    consumer=consumer,
                    defaults={
                        "status": Delivery.Status.PUBLISHED,
                        "publications": claims[event_id],
                        "published_at": now,
                    },
                )
                if not created and delivery.status == Delivery.Status.PUBLISHED:
                    Delivery.objects.filter(pk=delivery.pk).update(
                        publications=F("publications") + claims[event_id], published_at=now, updated_at=now
                    )


def release(*, relay: str, event_ids: list[int], published_any: bool) -> None:
    """Give the claimed events back, unclaimed.

    If none of their messages reached the broker, the claim is not counted either: an outage
    burns no attempt.
    """
    undo = 0 if published_any else 1
    if connection.vendor == "postgresql":
        pg_execute(_PG_RELEASE, [undo, event_ids, relay])
        return
    Pending.objects.filter(event_id__in=event_ids, claimed_by=relay).update(
        claimed_by="", claimed_until=None, claims=F("claims") - undo
    )
