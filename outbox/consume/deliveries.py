"""The consumers' side of delivery tracking.

`delivery_begin()` runs inside the consumer's transaction, before the effect: it marks the
delivery done and says whether it already was. The done row and the effect commit together, so a
duplicate message, a replay or a redelivery finds the row and skips the effect: exactly-once
effect for everything the consumer writes to this database.
"""

import contextvars
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from outbox.emit.writer import require_atomic

BEGIN = """
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, started_at, done_at, updated_at)
VALUES (%s, %s, 'done', 0, 1, '', NULL, %s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)
ON CONFLICT (event_id, consumer) DO UPDATE
    SET status = 'done', attempts = outbox_delivery.attempts + 1, started_at = EXCLUDED.started_at,
        last_error = '', done_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP
    WHERE outbox_delivery.status <> 'done'
RETURNING id
"""

_FAIL = """
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, done_at, updated_at)
VALUES (%s, %s, %s, 0, 1, %s, NULL, NULL, CURRENT_TIMESTAMP)
ON CONFLICT (event_id, consumer) DO UPDATE
    SET status = EXCLUDED.status, attempts = outbox_delivery.attempts + 1, last_error = EXCLUDED.last_error,
        updated_at = CURRENT_TIMESTAMP
    WHERE outbox_delivery.status <> 'done'
"""


_attempt_started: contextvars.ContextVar[datetime | None] = contextvars.ContextVar(
    "outbox_attempt_started", default=None
)


def attempt_started(at: datetime | None) -> None:
    """Record when the worker started the message being processed (None when it ends)."""
    _attempt_started.set(at)


def attempt_start() -> datetime:
    """When the worker started the message being processed (now, outside a worker)."""
    return _attempt_started.get() or timezone.now()


def delivery_begin(*, event_id: int, consumer: str) -> bool:
    """Mark the delivery done in the current transaction; return False if it already was done."""
    require_atomic(connection)
    started = _attempt_started.get() or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(BEGIN, [event_id, consumer, started])
        return cursor.fetchone() is not None


def deliveries_begin(*, event_ids: list[int], consumer: str) -> set[int]:
    """delivery_begin() for several events in one statement; return the ids not done before."""
    if not event_ids:
        return set()
    require_atomic(connection)
    started = _attempt_started.get() or timezone.now()
    rows = ", ".join(["(%s, %s, 'done', 0, 1, '', NULL, %s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"] * len(event_ids))
    params: list[Any] = []
    # In id order, as the relay records publications: the two never lock rows in opposite orders.
    for event_id in sorted(event_ids):
        params += [event_id, consumer, started]
    sql = BEGIN.replace(
        "VALUES (%s, %s, 'done', 0, 1, '', NULL, %s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)", f"VALUES {rows}"
    ).replace("RETURNING id", "RETURNING event_id")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def delivery_fail(*, event_id: int, consumer: str, error: str, final: bool) -> None:
    """Record a failed attempt (`final`: no retry is left, the delivery is dead)."""
    with connection.cursor() as cursor:
        cursor.execute(_FAIL, [event_id, consumer, "dead" if final else "failed", error[:4000]])
