"""Dramatiq actors, discovered by django-dramatiq and run by `python manage.py rundramatiq`.

Each actor takes the ids of a batch of events and calls a service. One queue per consumer, so each
can be scaled on its own.
"""

import dramatiq

from consumers import audit


@dramatiq.actor(actor_name=audit.CONSUMER, queue_name="audit", max_retries=5, min_backoff=1000, max_backoff=60_000)
def audit_log(event_ids: list[int]) -> None:
    """Write the audit-log line of each event, once."""
    audit.audit_events(event_ids=event_ids)
