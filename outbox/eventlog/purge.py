"""Retention: delete settled events older than a cutoff, in batches, optionally archived first.

Settled means: not waiting in outbox_pending, delivered (at least one delivery, all of them done:
none published, failed or dead), and sealed (outbox_seal), so that the chain still verifies
after the purge. Anything else is kept, whatever its age. On PostgreSQL the deletes go through
`outbox_purge_events()`, a function that runs as the tables' owner (the application's role may
not delete events itself), and the event table's trigger refuses any event that is not settled,
whoever asks. The seals of purged events stay, stamped `purged_at`, so outbox_verify can tell a
purge from a removal.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from django.db import connection
from django.utils import timezone

from outbox.backends import ops
from outbox.models import Event, Seal

_SETTLED = """
SELECT e.id FROM outbox_event e
WHERE e.created_at < %s AND e.id > %s
  AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.event_id = e.id)
  AND EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.event_id = e.id AND d.status = 'done')
  AND NOT EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.event_id = e.id AND d.status <> 'done')
  AND EXISTS (SELECT 1 FROM outbox_seal s WHERE s.event_id = e.id)
ORDER BY e.id
LIMIT %s
"""

_KEPT = """
SELECT count(*) FROM outbox_event e
WHERE e.created_at < %s
  AND (EXISTS (SELECT 1 FROM outbox_pending p WHERE p.event_id = e.id)
       OR EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.event_id = e.id AND d.status <> 'done')
       OR NOT EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.event_id = e.id AND d.status = 'done')
       OR NOT EXISTS (SELECT 1 FROM outbox_seal s WHERE s.event_id = e.id))
"""


@dataclass
class PurgeSummary:
    """What a purge deleted (or, dry, would delete), and what it kept."""

    cutoff: datetime
    events: int = 0
    batches: int = 0
    kept_unsettled: int = 0
    archive: Path | None = None
    dry_run: bool = False


def _settled_ids(cutoff: datetime, after: int, limit: int) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(_SETTLED, [cutoff, after, limit])
        return [row[0] for row in cursor.fetchall()]


def _archive_rows(ids: list[int], out: IO[str]) -> None:
    seals = dict(Seal.objects.filter(event_id__in=ids).values_list("event_id", "seal"))
    for event in Event.objects.filter(id__in=ids).order_by("id"):
        row: dict[str, Any] = {
            "id": event.id,
            "event_id": str(event.event_id),
            "type": event.event_type,
            "aggregatetype": event.aggregate_type,
            "aggregateid": event.aggregate_id,
            "aggregate_version": event.aggregate_version,
            "payload": event.payload,  # as stored: an archive keeps the record, not a reading of it
            "schema_version": event.schema_version,
            "actor": event.actor,
            "correlation_id": event.correlation_id,
            "source": event.source,
            "created_at": event.created_at.isoformat(),
            "seal": seals.get(event.id, ""),
        }
        out.write(json.dumps(row, sort_keys=True) + "\n")


def _delete(ids: list[int]) -> int:
    """Delete the settled events among `ids`, their deliveries, and stamp their seals; return how many.

    On PostgreSQL through outbox_purge_events() (migration 0010), which runs as the tables' owner
    and deletes only settled, sealed events: the application's role holds no DELETE of its own.
    """
    return ops().events_purge(ids)


def purge_settled(
    *,
    older_than: timedelta,
    batch_size: int = 5000,
    archive: Path | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PurgeSummary:
    """Delete settled events created more than `older_than` ago; return what was done.

    Each batch is archived (appended to `archive`, flushed to disk) before its transaction
    deletes it, so an archive never lacks an event that is gone.
    """
    cutoff = timezone.now() - older_than
    summary = PurgeSummary(cutoff=cutoff, archive=archive, dry_run=dry_run)
    with connection.cursor() as cursor:
        cursor.execute(_KEPT, [cutoff])
        summary.kept_unsettled = int(cursor.fetchone()[0])
    out = archive.open("a", encoding="utf-8") if archive and not dry_run else None
    try:
        after = 0
        while True:
            ids = _settled_ids(cutoff, after, batch_size)
            if not ids:
                break
            after = ids[-1]
            summary.batches += 1
            if dry_run:
                summary.events += len(ids)
                continue
            if out is not None:
                _archive_rows(ids, out)
                out.flush()
                os.fsync(out.fileno())
            # Fewer than asked when an event was replayed in the meantime: it is kept (the function
            # locks the events' deliveries first, so a replay either commits before it or waits).
            summary.events += _delete(ids)
            if progress:
                progress(len(ids))
    finally:
        if out is not None:
            out.close()
    return summary


def parse_age(text: str) -> timedelta:
    """Parse `90d`, `12h`, `30m` or `45s` into a timedelta; raise ValueError saying what is expected."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    value, unit = text[:-1], text[-1:].lower()
    if unit not in units or not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{text!r} is not an age. Write a whole number and a unit: 90d (days), 12h, 30m or 45s.")
    return timedelta(**{units[unit]: int(value)})
