"""The event insert on PostgreSQL: one statement for a whole transaction's events.

Used by the outbox's database backend (base.py), which sends it with the COMMIT, and by the
operations (operations.py) where events are written at once. It imports no model: the database
backend loads before the apps.
"""

from collections.abc import Sequence
from typing import Any

import psycopg

from outbox import conf
from outbox.emit.writer import Row, row_tag


def _tagged_doc(row: Row) -> bytes:
    # The doc is a JSON object: its tag goes in before the closing brace.
    return row.doc[:-1] + b',"tag":"' + row_tag(row).encode() + b'"}'


# The whole batch travels as one JSON array and PostgreSQL unpacks it: one parameter to send,
# instead of an array per column that the client would have to encode element by element.
_INSERT = """
WITH b AS (
    SELECT *, count(*) OVER (PARTITION BY aggregatetype, aggregateid ORDER BY seq DESC) - 1 AS from_end
    FROM ROWS FROM (
        jsonb_to_recordset(%s::jsonb) AS (
            event_id uuid, type text, aggregatetype text, aggregateid text, payload jsonb, schema_version smallint,
            actor text, correlation_id text, source text, tag text)
    ) WITH ORDINALITY AS b(
        event_id, type, aggregatetype, aggregateid, payload, schema_version, actor, correlation_id, source, tag, seq)
), v AS (
    INSERT INTO outbox_aggregate AS a (aggregatetype, aggregateid, version)
    SELECT aggregatetype, aggregateid, count(*) FROM b GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = a.version + EXCLUDED.version
    RETURNING aggregatetype, aggregateid, version
), e AS (
    INSERT INTO outbox_event
        (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, schema_version, actor,
         correlation_id, source, tag)
    SELECT b.event_id, b.type, b.aggregatetype, b.aggregateid,
           v.version - b.from_end, b.payload, coalesce(b.schema_version, 1), b.actor, b.correlation_id, b.source,
           b.tag
    FROM b JOIN v USING (aggregatetype, aggregateid)
    ORDER BY b.seq
    RETURNING id, type
)
INSERT INTO outbox_pending (event_id, type, claimed_by, claims) SELECT id, type, '', 0 FROM e
"""


def batch(rows: Sequence[Row]) -> bytes:
    """Return the rows as the JSON array that the insert statement unpacks."""
    return b"[" + b",".join([_tagged_doc(r) for r in rows]) + b"]"


def insert(pg_connection: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    """Insert the rows with one statement on a psycopg connection (errors are psycopg's)."""
    # A plain psycopg cursor binds on the server and can prepare; Django's binds on the client.
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(_INSERT, (batch(rows).decode(),), prepare=conf.prepared_statements() or None)


PREPARE_NAME = "outbox_event_insert"
PREPARE = f"PREPARE {PREPARE_NAME} (jsonb) AS {_INSERT.replace('%s::jsonb', '$1')}"


def prepare(pg_connection: psycopg.Connection[Any]) -> None:
    """Prepare the insert statement on this session (prepared statements outlive a rollback)."""
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(PREPARE.encode())


def is_prepared(pg_connection: psycopg.Connection[Any]) -> bool:
    """Whether the insert statement is still prepared on this session."""
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (PREPARE_NAME,))
        return cursor.fetchone() is not None


def insert_and_commit(pg_connection: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    """Insert the rows and COMMIT in a single round trip (errors are psycopg's).

    Needs prepare() once per session. Each commit then sends `EXECUTE …; COMMIT` as one simple
    query, the batch inlined as a literal escaped by libpq. If the insert fails, PostgreSQL skips
    the COMMIT and the transaction stays aborted for the caller to roll back.
    """
    literal = psycopg.pq.Escaping(pg_connection.pgconn).escape_literal(batch(rows))
    with psycopg.Cursor(pg_connection) as cursor:
        cursor.execute(b"EXECUTE " + PREPARE_NAME.encode() + b"(" + literal + b"); COMMIT")
