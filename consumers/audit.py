"""The audit-log consumer: one structured JSON line per event, written once however often delivered."""

import json
import logging

from django.db import transaction

from outbox.deliveries import delivery_begin
from outbox.models import Event

CONSUMER = "audit_log"
audit_logger = logging.getLogger("audit")


def audit_line(event: Event) -> str:
    """Return the event's audit line: ids, type, aggregate, actor and changed fields."""
    return json.dumps(
        {
            "event_id": str(event.event_id),
            "id": event.id,
            "type": event.event_type,
            "aggregate": f"{event.aggregate_type}:{event.aggregate_id}",
            "version": event.aggregate_version,
            "actor": event.actor,
            "source": event.source,
            "correlation_id": event.correlation_id,
            "changed": sorted(event.payload.get("changes", event.payload.get("state", {}))),
            "at": event.created_at.isoformat(),
        },
        sort_keys=True,
    )


def audit_events(*, event_ids: list[int]) -> int:
    """Write the audit line of each event not yet audited; return how many were written."""
    written = 0
    for event in Event.objects.filter(id__in=event_ids).order_by("id"):
        with transaction.atomic():
            if not delivery_begin(event_id=event.id, consumer=CONSUMER):
                continue
            line = audit_line(event)
            # After the commit that records it: a rolled-back attempt writes nothing.
            transaction.on_commit(lambda line=line: audit_logger.info(line))  # type: ignore[misc]
            written += 1
    return written
