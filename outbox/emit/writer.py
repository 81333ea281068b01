"""Insert events in the transaction of the change they describe.

On PostgreSQL with the outbox's database backend (`outbox.backends.postgresql`), a transaction's
events are held on the connection and written by one statement sent in the same round trip as
its COMMIT: the change and its events still commit together or not at all, and a save pays no
extra round trip. Elsewhere (SQLite, or Django's own PostgreSQL backend) each save writes its
events at once.

One statement numbers each aggregate's versions (an upsert on `outbox_aggregate`, which locks the
aggregate's row until commit), inserts the events and queues them for the relay
(`outbox_pending`); a trigger (migration 0002) notifies the relay, and PostgreSQL delivers the
notification on commit.
"""

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from outbox.backends import ops
from outbox.emit.context import current
from outbox.emit.schemas import current_version
from outbox.errors import NotInTransactionError
from outbox.eventlog.keys import seal_key
from outbox.eventlog.tagging import tag


# Plain slotted dataclasses: every save builds a few, and frozen ones cost more to build.
@dataclass(slots=True)
class NewEvent:
    """An event about to be written."""

    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    # None: a new random one, given when the event is written (the write-time tag covers it).
    event_id: uuid.UUID | None = None


@dataclass(slots=True)
class Row:
    """An event with the context it was emitted in, serialized when it was emitted.

    Serializing at emission makes a payload that cannot be encoded fail the save that made it,
    inside its atomic block, rather than the COMMIT.
    """

    actor: str
    correlation_id: str
    source: str
    doc: bytes  # JSON: the whole event on PostgreSQL (but its tag), the payload elsewhere (see _row)
    event_id: str  # the UUID's 32 hex digits
    key: bytes
    # What the tag covers, as emitted, whatever the caller does with its objects until the commit.
    payload: bytes
    names: tuple[str, str, str]  # type, aggregate type, aggregate id
    schema_version: int = 1  # the type's current one (outbox/emit/schemas.py)
    tag: str = ""  # computed when the row is written (row_tag), for all of a transaction's at once


def row_tag(row: Row) -> str:
    """Return the row's write-time tag (outbox.eventlog.tagging), computing it the first time."""
    if not row.tag:
        event_type, aggregate_type, aggregate_id = row.names
        row.tag = tag(
            event_id=row.event_id,
            event_type=event_type,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=orjson.loads(row.payload),
            actor=row.actor,
            correlation_id=row.correlation_id,
            source=row.source,
            schema_version=row.schema_version,
            key=row.key,
        )
    return row.tag


_django_encoder = DjangoJSONEncoder()


def _default(value: Any) -> Any:
    # orjson encodes datetimes, dates, times and UUIDs itself (ISO 8601); the rest as Django would.
    if isinstance(value, Decimal):
        return str(value)
    return _django_encoder.default(value)


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_default)


def _uuid4_hex() -> str:
    """A random (version 4) UUID's hex digits: what uuid.uuid4().hex gives, in a third of the time."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _row(event: NewEvent, actor: str, correlation_id: str, source: str, *, whole: bool, key: bytes) -> Row:
    """Return the event as a row to write: `doc` is the whole event's JSON when `whole` (for a
    backend whose insert unpacks whole events, PostgreSQL's), else only the payload's (for the
    portable insert)."""
    event_id = event.event_id.hex if event.event_id is not None else _uuid4_hex()
    payload = _dumps(event.payload)
    names = (event.event_type, event.aggregate_type, event.aggregate_id)
    version = current_version(event.event_type)
    if not whole:
        return Row(actor, correlation_id, source, payload, event_id, key, payload, names, version)
    doc: dict[str, Any] = {
        "type": names[0],
        "aggregatetype": names[1],
        "aggregateid": names[2],
        "actor": actor,
        "correlation_id": correlation_id,
        "source": source,
        "payload": orjson.Fragment(payload),
        "event_id": event_id,
    }
    if version != 1:  # the insert reads a missing version as 1: most events' docs stay as short as before
        doc["schema_version"] = version
    return Row(actor, correlation_id, source, _dumps(doc), event_id, key, payload, names, version)


def require_atomic(connection: BaseDatabaseWrapper) -> None:
    """Raise NotInTransactionError unless the connection is inside an atomic block."""
    if not connection.in_atomic_block:
        raise NotInTransactionError(
            "Outbox events must be written inside the transaction of the change they describe. "
            "Wrap the change in django.db.transaction.atomic()."
        )


def events_write(events: Sequence[NewEvent], *, using: str = "default") -> None:
    """Write the events in the current transaction, numbering each aggregate's versions.

    Raises NotInTransactionError outside an atomic block: there the event could commit without
    the change it describes, or the change without its event.
    """
    connection = connections[using]
    require_atomic(connection)
    write(connection, events)


def write(connection: BaseDatabaseWrapper, events: Sequence[NewEvent]) -> None:
    """Write the events on a connection already known to be in an atomic block."""
    if not events:
        return
    ctx = current()
    actor = ctx.resolved_actor()
    backend = ops(connection)
    whole = backend.whole_event_rows
    key = seal_key()
    rows = [_row(e, actor, ctx.correlation_id, ctx.source, whole=whole, key=key) for e in events]
    pending = getattr(connection, "outbox_pending", None)
    if pending is not None:
        pending.extend(rows)
    else:
        backend.events_insert(connection, rows)


def events_flush(*, using: str = "default") -> None:
    """Write the events held for the current transaction now, instead of at its commit.

    Only needed to read a transaction's own events before it commits.
    """
    connection = connections[using]
    pending = getattr(connection, "outbox_pending", None)
    if pending:
        rows = list(pending)
        pending.clear()
        ops(connection).events_insert(connection, rows)
