"""The audit-log consumer: one structured JSON line per event, written once however often delivered.

It also seals each event (outbox.eventlog.sealing: a keyed hash chain per aggregate), and the line
carries the seal, so the log kept outside the database anchors the chain that outbox_verify
checks.
"""

import json
import logging
from typing import Any

from django.db import transaction

from outbox import Event, consumer, seals

CONSUMER = "audit_log"
audit_logger = logging.getLogger("audit")


def audit_line(event: Event, seal: str = "") -> str:
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
            "seal": seal,
        },
        sort_keys=True,
    )


@consumer(CONSUMER, events="*", queue="audit", priority=20, batch=True, together=True)
def write_lines(events: list[Event]) -> None:
    """Write the audit line of each event, with its seal, once the transaction commits."""
    sealed = seals(events)
    lines = [audit_line(event, sealed[event.id]) for event in events]

    # After the commit that records the deliveries: a rolled-back attempt writes nothing.
    def emit() -> None:
        for line in lines:
            audit_logger.info(line)

    transaction.on_commit(emit)
