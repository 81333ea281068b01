"""PostgreSQL's operations: single statements, run as prepared statements where the relay runs them.

Many relays claim side by side (`FOR UPDATE SKIP LOCKED`), a batch's mark is one statement
(`DELETE … RETURNING` into an upsert), clocks are the database's, and the catalogue answers what
the ORM cannot (planner estimates, sequences, roles). The callers say why each step is as it is:
outbox/relay/claims.py, relay/sweeper.py, relay/heartbeats.py, relay/loop.py, emit/writer.py
(whose insert statement is in insert.py), eventlog/sealing.py, eventlog/selectors.py,
eventlog/checkpoints.py, eventlog/purge.py, ops/status.py, ops/grants.py and ops/checks.py.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import connection, transaction

from outbox import conf
from outbox.backends import Claimed, InsertListener, Overdue, Routes, portable
from outbox.backends.postgresql import insert

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    from outbox.emit.writer import Row
    from outbox.models import Seal

# --- external consumers (outbox/consume/external.py): leases on the database's clock ------------

_DEDUPE_CLAIM = portable.DEDUPE_CLAIM.format(
    lease_until="statement_timestamp() + make_interval(secs => %s)", now="statement_timestamp()"
)
_DEDUPE_SENT = portable.DEDUPE_SENT.format(now="statement_timestamp()")

# --- the relay (outbox/relay/claims.py) -----------------------------------------------------------

_CLAIM = """
WITH c AS (
    SELECT event_id FROM outbox_pending
    WHERE claimed_until IS NULL OR claimed_until < now()
    ORDER BY event_id LIMIT %s
    FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE outbox_pending p
    SET claimed_by = %s, claimed_until = now() + make_interval(secs => %s), claims = p.claims + 1
    FROM c WHERE p.event_id = c.event_id
    RETURNING p.event_id, p.type
)
SELECT event_id, type FROM u ORDER BY event_id
"""
# Deletes the claim and records a published delivery per routed consumer, unless the claim was
# lost (its lease ran out and another relay took it: that relay records its own publication).
# A consumer that finished first keeps its done row; one waiting for an earlier event (an ordered
# consumer's, outbox/consume/ordering.py) stays waiting, its publication counted. The routes arrive as (type, consumer)
# pairs, each once, for exactly the types in the batch.
_MARK = """
WITH d AS (
    DELETE FROM outbox_pending WHERE event_id = ANY(%s) AND claimed_by = %s RETURNING event_id, type, claims
)
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, updated_at)
SELECT d.event_id, r.consumer, 'published', d.claims, 0, '', now(), now()
FROM d JOIN unnest(%s::text[], %s::text[]) AS r(type, consumer) ON r.type = d.type
ORDER BY d.event_id, r.consumer
ON CONFLICT (event_id, consumer) DO UPDATE
    SET publications = outbox_delivery.publications + EXCLUDED.publications,
        published_at = EXCLUDED.published_at, updated_at = EXCLUDED.updated_at
    WHERE outbox_delivery.status IN ('published', 'waiting')
"""
_RELEASE = """
UPDATE outbox_pending
SET claimed_by = '', claimed_until = NULL, claims = claims - %s
WHERE event_id = ANY(%s) AND claimed_by = %s
"""
# --- the sweeper (outbox/relay/sweeper.py) --------------------------------------------------------

_TAKE = """
WITH s AS (
    SELECT id FROM outbox_delivery
    WHERE (status = 'published' AND published_at < now() - make_interval(secs => %s))
       OR (status = 'failed' AND updated_at < now() - make_interval(secs => %s))
    ORDER BY published_at LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox_delivery d
SET published_at = now(), publications = d.publications + 1, updated_at = now()
FROM s WHERE d.id = s.id
RETURNING d.id, d.event_id, d.consumer
"""
_GIVE_BACK = """
UPDATE outbox_delivery
SET published_at = now() - make_interval(secs => %s), updated_at = now() - make_interval(secs => %s),
    publications = publications - 1
WHERE id = ANY(%s) AND status IN ('published', 'failed')
"""
# --- heartbeats (outbox/relay/heartbeats.py) ------------------------------------------------------

_BEAT = """
INSERT INTO outbox_relay_heartbeat (name, host, pid, started_at, beat_at, events_relayed)
VALUES (%s, %s, %s, %s, now(), %s)
ON CONFLICT (name) DO UPDATE
    SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = EXCLUDED.started_at,
        beat_at = EXCLUDED.beat_at, events_relayed = EXCLUDED.events_relayed
"""
# --- the event log (outbox/eventlog/) -------------------------------------------------------------

_LAST_SEALS = """
SELECT DISTINCT ON (aggregatetype, aggregateid) aggregatetype, aggregateid, aggregate_version, seal
FROM outbox_seal
WHERE (aggregatetype, aggregateid) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY aggregatetype, aggregateid, aggregate_version DESC
"""
_SEALS_INSERT = """
INSERT INTO outbox_seal (event_id, event_uuid, aggregatetype, aggregateid, aggregate_version, seal)
SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::text[], %s::integer[], %s::text[])
ON CONFLICT DO NOTHING
"""
_SKIP_SCAN = """
WITH RECURSIVE v(value) AS (
    (SELECT {column} FROM outbox_event ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT {column} FROM outbox_event WHERE {column} > v.value ORDER BY {column} LIMIT 1)
    FROM v WHERE v.value IS NOT NULL
)
SELECT value FROM v WHERE value IS NOT NULL LIMIT %s
"""
# The same skip through the partial index on (type, schema_version) of the events above version 1
# (migration 0015): one descent per pair, however many events each has.
_SCHEMA_VERSIONS = """
WITH RECURSIVE v(type, schema_version) AS (
    (SELECT type, schema_version FROM outbox_event WHERE schema_version > 1 ORDER BY type, schema_version LIMIT 1)
    UNION ALL
    SELECT n.type, n.schema_version FROM v CROSS JOIN LATERAL (
        SELECT e.type, e.schema_version FROM outbox_event e
        WHERE e.schema_version > 1 AND (e.type, e.schema_version) > (v.type, v.schema_version)
        ORDER BY e.type, e.schema_version LIMIT 1
    ) n
)
SELECT type, schema_version FROM v LIMIT %s
"""
# One relay at a time takes a checkpoint (the others skip): the chain never forks.
_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('outbox_checkpoint'))"
_COUNT_RANGES = """
SELECT (SELECT count(*) FROM outbox_seal s WHERE s.event_id > r.lo AND s.event_id <= r.hi)
FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS r(lo, hi, n)
ORDER BY r.n
"""

# --- roles (outbox/ops/grants.py, ops/checks.py) --------------------------------------------------

# The role this connection uses; the tables it owns, itself or as a member of their owner.
_CONNECTED_ROLE = "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
_OWNED_TABLES = """
    SELECT c.relname, pg_get_userbyid(c.relowner)
    FROM pg_class c
    WHERE c.oid IN (SELECT to_regclass(name) FROM unnest(%s::text[]) AS name)
      AND pg_has_role(current_user, c.relowner, 'MEMBER')
    ORDER BY c.relname
"""


def execute(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Run one of the relay's statements as a prepared statement; return its rows, if any.

    The relay runs the same few statements all day: preparing them saves their planning.
    """
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=conf.prepared_statements() or None)
        return cursor.fetchall() if cursor.description else []


class Listener:
    """A session of its own, LISTENing for the insert trigger's notifications (`outbox_event`)."""

    def __init__(self) -> None:
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        self._session: psycopg.Connection[Any] = psycopg.connect(**params, autocommit=True)
        try:
            self._session.execute("LISTEN outbox_event")
        except BaseException:
            self._session.close()
            raise

    @property
    def closed(self) -> bool:
        return self._session.closed

    def wait(self, *, timeout: float) -> None:
        for _ in self._session.notifies(timeout=timeout, stop_after=1):
            pass

    def close(self) -> None:
        self._session.close()


class Roles:
    """PostgreSQL's catalogue of roles (outbox/ops/grants.py, outbox/ops/checks.py)."""

    def standing(self, cursor: "CursorWrapper", role: str) -> tuple[bool, bool] | None:
        cursor.execute(
            "SELECT rolsuper, pg_has_role(%s, (SELECT relowner FROM pg_class WHERE oid = 'outbox_event'::regclass), "
            "'MEMBER') FROM pg_roles WHERE rolname = %s",
            [role, role],
        )
        row = cursor.fetchone()
        return None if row is None else (bool(row[0]), bool(row[1]))

    def sequences(self, cursor: "CursorWrapper", tables: list[str]) -> list[str]:
        cursor.execute(
            "SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(s.relname) FROM pg_class s "
            "JOIN pg_namespace n ON n.oid = s.relnamespace JOIN pg_depend d ON d.objid = s.oid "
            "JOIN pg_class t ON t.oid = d.refobjid "
            "WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') AND t.relname = ANY(%s) "
            "AND t.relnamespace = s.relnamespace AND n.nspname = current_schema() ORDER BY 1",
            [tables],
        )
        return [row[0] for row in cursor.fetchall()]

    def schema(self, cursor: "CursorWrapper") -> str:
        cursor.execute("SELECT quote_ident(current_schema())")
        return str(cursor.fetchone()[0])

    def may_create(self, cursor: "CursorWrapper", role: str) -> bool:
        cursor.execute("SELECT has_schema_privilege(%s, current_schema(), 'CREATE')", [role])
        return bool(cursor.fetchone()[0])

    def connected(self, tables: list[str]) -> tuple[str, bool, list[tuple[str, str]]]:
        with connection.cursor() as cursor:
            cursor.execute(_CONNECTED_ROLE)
            user, superuser = cursor.fetchone()
            cursor.execute(_OWNED_TABLES, [tables])
            owned = cursor.fetchall()
        return user, superuser, owned


class Operations(portable.Operations):
    """The outbox's steps on PostgreSQL."""

    whole_event_rows = True
    notifies_inserts = True
    listener_errors = (psycopg.Error,)
    roles = Roles()

    # --- emit ---------------------------------------------------------------------------------

    def events_insert(self, connection: "BaseDatabaseWrapper", rows: Sequence["Row"]) -> None:
        connection.ensure_connection()
        with connection.wrap_database_errors:
            insert.insert(connection.connection, rows)

    # --- relay --------------------------------------------------------------------------------

    def claim(self, *, relay: str, limit: int, lease: float) -> Claimed:
        return [(row[0], row[1]) for row in execute(_CLAIM, [limit, relay, lease])]

    def mark_published(self, *, relay: str, event_ids: list[int], routes: Routes) -> None:
        types, consumers = routes
        execute(_MARK, [event_ids, relay, types, consumers])

    def release(self, *, relay: str, event_ids: list[int], undo: int) -> None:
        execute(_RELEASE, [undo, event_ids, relay])

    def take_overdue(self, *, deadline: float, limit: int) -> Overdue:
        return [(row[0], row[1], row[2]) for row in execute(_TAKE, [deadline, deadline, limit])]

    def give_back(self, *, deadline: float, ids: list[int]) -> None:
        execute(_GIVE_BACK, [deadline + 1, deadline + 1, ids])

    def heartbeat_beat(self, *, name: str, host: str, pid: int, started_at: datetime, events_relayed: int) -> None:
        """Upsert the relay's heartbeat row, beating now on the database's clock."""
        execute(_BEAT, [name, host, pid, started_at, events_relayed])

    def relay_session(self, *, name: str) -> None:
        """Name the session after the relay (pg_stat_activity) and let its commits skip the WAL flush."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('application_name', %s, false)", [f"outbox_relay {name}"[:63]])
            cursor.execute("SET synchronous_commit = off")

    def insert_listener(self) -> InsertListener:
        return Listener()

    # --- event log ----------------------------------------------------------------------------

    def last_seals(self, aggregates: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
        with connection.cursor() as cursor:
            cursor.execute(_LAST_SEALS, [[a[0] for a in aggregates], [a[1] for a in aggregates]])
            return {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()}

    def seals_insert(self, seals: list["Seal"]) -> None:
        """One statement of six arrays, whatever the number of seals."""
        if not seals:
            return
        rows = [
            (seal.event_id, seal.event_uuid, seal.aggregate_type, seal.aggregate_id, seal.aggregate_version, seal.seal)
            for seal in seals
        ]
        columns = [list(column) for column in zip(*rows, strict=True)]
        with connection.cursor() as cursor:
            cursor.execute(_SEALS_INSERT, columns)

    def distinct_values(self, column: str, *, limit: int) -> list[str]:
        """A loose index scan: one descent of the column's index per value."""
        with connection.cursor() as cursor:
            cursor.execute(_SKIP_SCAN.format(column=column), [limit])
            return [row[0] for row in cursor.fetchall()]

    def schema_versions(self, cursor: "CursorWrapper", *, limit: int) -> list[tuple[str, int]]:
        """A loose index scan of the partial index: one descent per (type, version) pair."""
        cursor.execute(_SCHEMA_VERSIONS, [limit])
        return [(row[0], row[1]) for row in cursor.fetchall()]

    def checkpoint_lock(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(_LOCK)
            return bool(cursor.fetchone()[0])

    def checkpoint_id(self, cursor: "CursorWrapper") -> int | None:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('outbox_checkpoint', 'id'))")
        return int(cursor.fetchone()[0])

    def checkpoint_ids_issued(self) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence('outbox_checkpoint', 'id')")
            sequence = cursor.fetchone()[0]
            if not sequence:
                return 0
            cursor.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608 - a name PostgreSQL gave, quoted
            row = cursor.fetchone()
        return int(row[0]) if row and row[1] else 0

    def seal_counts(self, lows: list[int], highs: list[int]) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(_COUNT_RANGES, [lows, highs])
            return [int(row[0]) for row in cursor.fetchall()]

    def events_purge(self, ids: list[int]) -> int:
        """Through outbox_purge_events() (migration 0010), which runs as the tables' owner."""
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT outbox_purge_events(%s::bigint[])", [ids])
            return int(cursor.fetchone()[0])

    # --- external consumers -------------------------------------------------------------------

    def dedupe_claim(
        self, *, consumer: str, key: str, event_id: int, token: "uuid.UUID | str", lease: float
    ) -> tuple | None:
        """Take the dedupe record unless sent or leased, the lease judged on the database's clock, so
        that workers whose clocks disagree agree on whose lease has run out."""
        with connection.cursor() as cursor:
            cursor.execute(_DEDUPE_CLAIM, [consumer, key, event_id, token, lease])
            row: tuple | None = cursor.fetchone()
            return row

    def dedupe_sent(self, *, consumer: str, key: str) -> None:
        """Mark the dedupe record sent, stamped on the lease's clock."""
        with connection.cursor() as cursor:
            cursor.execute(_DEDUPE_SENT, [consumer, key])

    def dedupe_made(self, *, consumer: str, key: str, event_id: int) -> None:
        """The record sent and the delivery done in one statement: one round trip fewer inside the
        duplicate window (from the outside system's accept to this transaction's commit)."""
        from outbox.consume.deliveries import BEGIN, attempt_start
        from outbox.emit.writer import require_atomic

        require_atomic(connection)
        params: list[Any] = [consumer, key, event_id, consumer, attempt_start()]
        with connection.cursor() as cursor:
            cursor.execute(f"WITH sent AS ({_DEDUPE_SENT}) {BEGIN}", params)

    # --- status -------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The database's clock."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement_timestamp()")
            value: datetime = cursor.fetchone()[0]
            return value

    def deliveries_done_estimate(self, counted: int) -> int | None:
        """The planner's row estimate of the table, less the `counted` unsettled deliveries; None
        when the table was not analysed yet."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'outbox_delivery'::regclass")
            row = cursor.fetchone()
        if row is None or row[0] < 0:
            return None
        return max(0, int(row[0]) - counted)
