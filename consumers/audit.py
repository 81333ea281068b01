"""The audit-log consumer: one structured JSON line per event, written once however often delivered."""

import json
import logging
from typing import Any

from django.db import transaction

from outbox.consuming import consume
from outbox.models import Event

CONSUMER = "audit_log"
audit_logger = logging.getLogger("audit")


def audit_line(event: Event) -> str:
    """Return the event's audit line: ids, type, aggregate, actor and changed fields."""
    payload: dict[str, Any] = event.payload if isinstance(event.payload, dict) else {}
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
            "changed": sorted(payload.get("changes", payload.get("state", {}))),
            "at": event.created_at.isoformat(),
        },
        sort_keys=True,
    )


def write_line(event: Event) -> None:
    """Write the event's audit line once its delivery's transaction commits."""
    line = audit_line(event)
    # After the commit that records the delivery: a rolled-back attempt writes nothing.
    transaction.on_commit(lambda: audit_logger.info(line))


def audit_events(*, event_ids: object) -> None:
    """Write the audit line of each event not yet audited (the actor's service)."""
    consume(consumer=CONSUMER, event_ids=event_ids, handle=write_line)
