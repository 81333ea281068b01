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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from outbox import conf
from outbox.emit.context import current
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
class _Row:
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
    tag: str = ""  # computed when the row is written (row_tag), for all of a transaction's at once


def row_tag(row: _Row) -> str:
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
            key=row.key,
        )
    return row.tag


def _tagged_doc(row: _Row) -> bytes:
    # The doc is a JSON object: its tag goes in before the closing brace.
    return row.doc[:-1] + b',"tag":"' + row_tag(row).encode() + b'"}'


# The whole batch travels as one JSON array and PostgreSQL unpacks it: one parameter to send,
# instead of an array per column that the client would have to encode element by element.
_PG_INSERT = """
WITH b AS (
    SELECT *, count(*) OVER (PARTITION BY aggregatetype, aggregateid ORDER BY seq DESC) - 1 AS from_end
    FROM ROWS FROM (
        jsonb_to_recordset(%s::jsonb) AS (
            event_id uuid, type text, aggregatetype text, aggregateid text, payload jsonb, actor text,
            correlation_id text, source text, tag text)
    ) WITH ORDINALITY AS b(event_id, type, aggregatetype, aggregateid, payload, actor, correlation_id, source, tag, seq)
), v AS (
    INSERT INTO outbox_aggregate AS a (aggregatetype, aggregateid, version)
    SELECT aggregatetype, aggregateid, count(*) FROM b GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = a.version + EXCLUDED.version
    RETURNING aggregatetype, aggregateid, version
), e AS (
    INSERT INTO outbox_event
        (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor, correlation_id, source, tag)
    SELECT b.event_id, b.type, b.aggregatetype, b.aggregateid,
           v.version - b.from_end, b.payload, b.actor, b.correlation_id, b.source, b.tag
    FROM b JOIN v USING (aggregatetype, aggregateid)
    ORDER BY b.seq
    RETURNING id, type
)
INSERT INTO outbox_pending (event_id, type, claimed_by, claims) SELECT id, type, '', 0 FROM e
"""

_PORTABLE_VERSION = """
INSERT INTO outbox_aggregate (aggregatetype, aggregateid, version) VALUES (%s, %s, %s)
ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = version + excluded.version
RETURNING version
"""

_PORTABLE_PENDING = """
INSERT INTO outbox_pending (event_id, type, claimed_by, claims)
SELECT id, type, '', 0 FROM outbox_event WHERE event_id IN ({})
"""

_PORTABLE_EVENT = """
INSERT INTO outbox_event
    (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor, correlation_id, source, tag)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


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


def _row(event: NewEvent, actor: str, correlation_id: str, source: str, *, whole: bool, key: bytes) -> _Row:
    """Return the event as a row to write: `doc` is the whole event's JSON when `whole` (for the
    PostgreSQL statement, which unpacks it), else only the payload's (for the portable insert)."""
    event_id = event.event_id.hex if event.event_id is not None else _uuid4_hex()
    payload = _dumps(event.payload)
    names = (event.event_type, event.aggregate_type, event.aggregate_id)
    if not whole:
        return _Row(actor, correlation_id, source, payload, event_id, key, payload, names)
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
    return _Row(actor, correlation_id, source, _dumps(doc), event_id, key, payload, names)


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
    whole = connection.vendor == "postgresql"
    key = seal_key()
    rows = [_row(e, actor, ctx.correlation_id, ctx.source, whole=whole, key=key) for e in events]
    pending = getattr(connection, "outbox_pending", None)
    if pending is not None:
        pending.extend(rows)
    elif connection.vendor == "postgresql":
        connection.ensure_connection()
        with connection.wrap_database_errors:
            pg_insert(connection.connection, rows)
    else:
        _portable_insert(connection, rows)


def events_flush(*, using: str = "default") -> None:
    """Write the events held for the current transaction now, instead of at its commit.

    Only needed to read a transaction's own events before it commits.
    """
    connection = connections[using]
    pending = getattr(connection, "outbox_pending", None)
    if pending:
        rows = list(pending)
        pending.clear()
        connection.ensure_connection()
        with connection.wrap_database_errors:
            pg_insert(connection.connection, rows)


def pg_batch(rows: Sequence[_Row]) -> bytes:
    """Return the rows as the JSON array that the insert statement unpacks."""
    return b"[" + b",".join([_tagged_doc(r) for r in rows]) + b"]"


def pg_insert(pg_connection: psycopg.Connection[Any], rows: Sequence[_Row]) -> None:
    """Insert the rows with one statement on a psycopg connection (errors are psycopg's)."""
    # A plain psycopg cursor binds on the server and can prepare; Django's binds on the client.
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(_PG_INSERT, (pg_batch(rows).decode(),), prepare=conf.prepared_statements() or None)


PG_PREPARE_NAME = "outbox_event_insert"
PG_PREPARE = f"PREPARE {PG_PREPARE_NAME} (jsonb) AS {_PG_INSERT.replace('%s::jsonb', '$1')}"


def pg_prepare(pg_connection: psycopg.Connection[Any]) -> None:
    """Prepare the insert statement on this session (prepared statements outlive a rollback)."""
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(PG_PREPARE.encode())


def pg_insert_and_commit(pg_connection: psycopg.Connection[Any], rows: Sequence[_Row]) -> None:
    """Insert the rows and COMMIT in a single round trip (errors are psycopg's).

    Needs pg_prepare() once per session. Each commit then sends `EXECUTE …; COMMIT` as one simple
    query, the batch inlined as a literal escaped by libpq. If the insert fails, PostgreSQL skips
    the COMMIT and the transaction stays aborted for the caller to roll back.
    """
    literal = psycopg.pq.Escaping(pg_connection.pgconn).escape_literal(pg_batch(rows))
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(b"EXECUTE " + PG_PREPARE_NAME.encode() + b"(" + literal + b"); COMMIT")


def _portable_insert(connection: Any, rows: Sequence[_Row]) -> None:
    counts = Counter(r.names[1:] for r in rows)
    next_version: dict[tuple[str, str], int] = {}
    with connection.cursor() as cursor:
        for key, n in counts.items():
            cursor.execute(_PORTABLE_VERSION, (*key, n))
            next_version[key] = cursor.fetchone()[0] - n + 1
        values = []
        for r in rows:
            key = r.names[1:]
            values.append(
                (
                    r.event_id,
                    r.names[0],
                    *key,
                    next_version[key],
                    r.doc.decode(),
                    r.actor,
                    r.correlation_id,
                    r.source,
                    row_tag(r),
                )
            )
            next_version[key] += 1
        cursor.executemany(_PORTABLE_EVENT, values)
        ids = [v[0] for v in values]
        cursor.execute(_PORTABLE_PENDING.format(", ".join(["%s"] * len(ids))), ids)
