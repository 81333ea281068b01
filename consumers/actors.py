"""Dramatiq actors, discovered by django-dramatiq and run by `python manage.py rundramatiq`.

Each actor takes the ids of a batch of events and calls its consumer's service. One queue per
consumer, so that each can be scaled on its own (`rundramatiq --queues inventory`); inventory has
the highest priority within a worker.

Retries are explicit. Dramatiq's defaults (20 retries, backoff up to 7 days) add up to weeks;
here (settings CONSUMER_MAX_RETRIES and CONSUMER_*_BACKOFF_MS) a failed event is tried 6 times
over about half a minute (backoff 1, 2, 4, 8, 16 s, with jitter), then its delivery is dead in
PostgreSQL, with its error, for an operator to replay. A permanent error (bad input, a missing
row) is dead at once. A message that is not a list of event ids (`BadMessage`) is dropped with a
log line: it names no delivery to record.
"""

from typing import Any

import dramatiq
from django.conf import settings

from consumers import audit, email, inventory
from outbox.consume.run import BadMessage

RETRIES: dict[str, Any] = {
    "max_retries": settings.CONSUMER_MAX_RETRIES,
    "min_backoff": settings.CONSUMER_MIN_BACKOFF_MS,
    "max_backoff": settings.CONSUMER_MAX_BACKOFF_MS,
    "throws": (BadMessage,),
}


@dramatiq.actor(actor_name=inventory.CONSUMER, queue_name="inventory", priority=0, **RETRIES)
def inventory_apply(event_ids: list[int]) -> None:
    """Move stock for each event: orders placed, cancelled or edited, stock received."""
    inventory.apply_events(event_ids=event_ids)


@dramatiq.actor(actor_name=email.CONSUMER, queue_name="email", priority=10, **RETRIES)
def email_send(event_ids: list[int]) -> None:
    """Send the order confirmation or cancellation notice of each event, once."""
    email.send_notices(event_ids=event_ids)


@dramatiq.actor(actor_name=audit.CONSUMER, queue_name="audit", priority=20, **RETRIES)
def audit_log(event_ids: list[int]) -> None:
    """Write the audit-log line of each event, once."""
    audit.audit_events(event_ids=event_ids)
