"""Reading the event log: the selectors behind the auditors' admin.

Every read here is shaped for a table of millions of events: exact matches on indexed columns,
lists of distinct values read by skipping through an index, timelines read by version from the
aggregate's unique index, and exports streamed from a server-side cursor.

What they show of a payload is at its type's current schema version, upcast as every reader gets
it (outbox/emit/schemas.py); an event whose upcaster fails is shown as stored, with its own
version, rather than not at all.
"""

import contextlib
import csv
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q, QuerySet

from outbox.backends import ops
from outbox.emit.schemas import current_version, upcast, upcast_event
from outbox.errors import UpcastError
from outbox.models import Event

logger = logging.getLogger(__name__)

# Columns of outbox_event whose distinct values the filters list. Each leads a btree index on
# PostgreSQL (migrations 0001 and 0007), which distinct_values() skips through.
DISTINCT_COLUMNS = {"type", "aggregatetype", "actor"}

EXPORT_FIELDS = [
    "id",
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "actor",
    "source",
    "correlation_id",
    "created_at",
    "schema_version",
    "payload",
]

BIGINT_MAX = 2**63 - 1


def as_bigint(term: str) -> int | None:
    """The term as a PostgreSQL bigint if it is one (ASCII digits only), else None. A longer
    number is a miss, not a database error, and is never converted (Python refuses to parse
    integers of thousands of digits)."""
    if term.isascii() and term.isdigit() and len(term) <= len(str(BIGINT_MAX)) and int(term) <= BIGINT_MAX:
        return int(term)
    return None


def distinct_values(column: str, *, limit: int = 200) -> list[str]:
    """Return up to `limit` distinct values of an event column, in order.

    On PostgreSQL, one index descent per value (a loose index scan) instead of a DISTINCT over
    the whole table, which reads every row.
    """
    if column not in DISTINCT_COLUMNS:
        raise ValueError(f"No index to list the values of outbox_event.{column}.")
    return ops().distinct_values(column, limit=limit)


def event_search(term: str) -> Q:
    """Return the condition that finds events by an exact id: the event's integer id or UUID,
    or an aggregate (`order:7`, or `7` for any aggregate type with that id).

    Only exact matches, each answered by an index: no substring scans of the log.
    """
    term = term.strip()
    kind, sep, ident = term.partition(":")
    if sep and kind and ident:
        return Q(aggregate_type=kind, aggregate_id=ident)
    # Naming the aggregate types lets PostgreSQL use the (type, id, version) index for an id alone.
    condition = Q(aggregate_type__in=distinct_values("aggregatetype"), aggregate_id=term)
    pk = as_bigint(term)
    if pk is not None:
        condition |= Q(pk=pk)
    with contextlib.suppress(ValueError):
        condition |= Q(event_id=uuid.UUID(term))
    return condition


def timeline(aggregate_type: str, aggregate_id: str, *, after_version: int = 0, limit: int = 50) -> list[Event]:
    """Return an aggregate's events in version order, from `after_version + 1`, up to `limit`,
    their payloads upcast (readable())."""
    events = list(
        Event.objects.filter(
            aggregate_type=aggregate_type, aggregate_id=aggregate_id, aggregate_version__gt=after_version
        ).order_by("aggregate_version")[:limit]
    )
    for event in events:
        readable(event)
    return events


def readable(event: Event) -> str:
    """Bring the event's payload to its type's current schema version, in place, for showing it;
    return "" or, when an upcaster fails, why (the event then stays as stored)."""
    try:
        upcast_event(event)
    except UpcastError as e:
        return str(e)
    return ""


@dataclass(frozen=True)
class FieldChange:
    """One field an event changed: its value before and after."""

    field: str
    old: Any
    new: Any


def changes(event: Event) -> list[FieldChange]:
    """Return the fields the event changed, from its payload's `changes` (empty for creations)."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    found = payload.get("changes") or {}
    if not isinstance(found, dict):
        return []
    return [
        FieldChange(field=name, old=change.get("old"), new=change.get("new"))
        for name, change in found.items()
        if isinstance(change, dict)
    ]


def payload_pretty(event: Event, *, written: bool = False) -> str:
    """Return the payload as indented JSON, keys in order: as the instance holds it (upcast, once
    readable() has run), or with `written` as the row holds it."""
    payload = event.stored()[1] if written else event.payload
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)


def _rows(queryset: QuerySet[Event]) -> Iterator[dict[str, Any]]:
    """Each event's EXPORT_FIELDS, its payload upcast to its type's current schema version; one
    whose upcaster fails as stored, with its own version (and a warning in the log)."""
    # A server-side cursor on PostgreSQL: memory stays flat however many events are exported.
    for row in queryset.order_by("id").values_list(*EXPORT_FIELDS).iterator(chunk_size=2000):
        record = dict(zip(EXPORT_FIELDS, row, strict=True))
        event_type, version = record["event_type"], record["schema_version"]
        try:
            record["payload"] = upcast(event_type, version, record["payload"])
        except UpcastError as e:
            logger.warning("Event %s is exported as stored, at schema version %s: %s", record["id"], version, e)
        else:
            record["schema_version"] = current_version(event_type)
        yield record


class _Echo:
    def write(self, value: str) -> str:
        return value


def export_csv(queryset: QuerySet[Event]) -> Iterable[str]:
    """Yield the events as CSV lines, oldest first: a header, then one line per event, the
    payload as compact JSON in the last column."""
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for record in _rows(queryset):
        record["created_at"] = record["created_at"].isoformat()
        record["payload"] = json.dumps(record["payload"], cls=DjangoJSONEncoder)
        yield writer.writerow([record[name] for name in EXPORT_FIELDS])


def export_jsonl(queryset: QuerySet[Event]) -> Iterable[str]:
    """Yield the events as JSON Lines, oldest first: one object per event, the payload nested."""
    for record in _rows(queryset):
        record["event_id"] = str(record["event_id"])
        record["created_at"] = record["created_at"].isoformat()
        yield json.dumps(record, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"
