"""Helpers for outbox tests: look at the database the way another process would; the outbox
tests' app's admin forms."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection
from django.db.models import QuerySet

from outbox.emit.writer import events_flush
from outbox.models import Event

SHIPMENT_ADD_URL = "/admin/outbox_app/shipment/add/"


def conninfo() -> str:
    """Return a libpq connection string for the test database."""
    s = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        host=s["HOST"] or "127.0.0.1", port=str(s["PORT"] or 5432), user=s["USER"], dbname=s["NAME"]
    )


def committed_count(table: str) -> int:
    """Count the committed rows of a table, from a separate connection."""
    with psycopg.connect(conninfo(), autocommit=True) as other:
        row = other.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - test-chosen names
        assert row is not None
        return int(row[0])


@contextmanager
def failing_insert(table: str) -> Iterator[None]:
    """Make every insert into `table` fail inside PostgreSQL for the duration of the block."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'insert refused by test trigger'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_fail_insert BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION test_fail_insert()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS test_fail_insert ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS test_fail_insert()")


def events() -> QuerySet[Event]:
    """Return all events, the current transaction's included.

    Tests that run inside a transaction never commit it, so the events it holds for its commit
    are written first.
    """
    events_flush()
    return Event.objects.all()


def aggregate_events(aggregate_type: str, aggregate_id: object) -> list[Event]:
    """Return an aggregate's events in version order, the current transaction's included."""
    return list(
        events().filter(aggregate_type=aggregate_type, aggregate_id=str(aggregate_id)).order_by("aggregate_version")
    )


def as_role(role: str) -> psycopg.Connection:
    """Connect to the test database as `role`, in autocommit mode."""
    return psycopg.connect(conninfo() + f" user={role}", autocommit=True)


def shipment_form(
    lines: list[tuple[Any, Any]], status: str = "sent", recipient: str = "ada@example.com"
) -> dict[str, Any]:
    """The POST body of the shipment add form with its inline lines, (item id, quantity) each."""
    data: dict[str, Any] = {
        "recipient": recipient,
        "status": status,
        "lines-TOTAL_FORMS": len(lines),
        "lines-INITIAL_FORMS": 0,
        "lines-MIN_NUM_FORMS": 0,
        "lines-MAX_NUM_FORMS": 1000,
    }
    for i, (item, quantity) in enumerate(lines):
        data.update({f"lines-{i}-item": item, f"lines-{i}-quantity": quantity})
    return data


_LOCK_WAITERS = "FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"


def lock_waiters(query_like: str) -> int:
    """How many sessions wait for a lock while running a query LIKE `query_like` (a worker's actor
    held by a test's table lock, say)."""
    with psycopg.connect(conninfo(), autocommit=True) as probe:
        row = probe.execute(f"SELECT count(*) {_LOCK_WAITERS}", [query_like]).fetchone()
        return int(row[0]) if row else 0


def lock_waiters_terminate(query_like: str) -> None:
    """End the sessions lock_waiters() counts (a killed worker's, which PostgreSQL would notice late)."""
    with psycopg.connect(conninfo(), autocommit=True) as admin:
        admin.execute(f"SELECT pg_terminate_backend(pid) {_LOCK_WAITERS}", [query_like])
