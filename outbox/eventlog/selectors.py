"""Reading the event log: the selectors behind the auditors' admin.

Every read here is shaped for a table of millions of events: exact matches on indexed columns,
lists of distinct values read by skipping through an index, timelines read by version from the
aggregate's unique index, and exports streamed from a server-side cursor.
"""

import contextlib
import csv
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q, QuerySet

from outbox.backends import ops
from outbox.models import Event

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
    """Return an aggregate's events in version order, from `after_version + 1`, up to `limit`."""
    return list(
        Event.objects.filter(
            aggregate_type=aggregate_type, aggregate_id=aggregate_id, aggregate_version__gt=after_version
        ).order_by("aggregate_version")[:limit]
    )


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


def payload_pretty(event: Event) -> str:
    """Return the payload as indented JSON, keys in order."""
    return json.dumps(event.payload, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)


def _rows(queryset: QuerySet[Event]) -> Iterator[tuple[Any, ...]]:
    # A server-side cursor on PostgreSQL: memory stays flat however many events are exported.
    return queryset.order_by("id").values_list(*EXPORT_FIELDS).iterator(chunk_size=2000)


class _Echo:
    def write(self, value: str) -> str:
        return value


def export_csv(queryset: QuerySet[Event]) -> Iterable[str]:
    """Yield the events as CSV lines, oldest first: a header, then one line per event, the
    payload as compact JSON in the last column."""
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in _rows(queryset):
        *facts, created_at, payload = row
        yield writer.writerow([*facts, created_at.isoformat(), json.dumps(payload, cls=DjangoJSONEncoder)])


def export_jsonl(queryset: QuerySet[Event]) -> Iterable[str]:
    """Yield the events as JSON Lines, oldest first: one object per event, the payload nested."""
    for row in _rows(queryset):
        record = dict(zip(EXPORT_FIELDS, row, strict=True))
        record["event_id"] = str(record["event_id"])
        record["created_at"] = record["created_at"].isoformat()
        yield json.dumps(record, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"
