"""Index changes for migrations (outbox/backends/ddl.py), on PostgreSQL: concurrent, and a failed build's
INVALID leftover is built again rather than taken for done."""

from collections.abc import Iterator

import pytest
from django.db import connection

from outbox.backends.ddl import index_create, index_drop

pytestmark = pytest.mark.django_db(transaction=True)


def _valid(name: str) -> bool | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s", [name]
        )
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


@pytest.fixture
def table() -> Iterator[str]:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE ddl_check (id bigint PRIMARY KEY, v int)")
        cursor.execute("INSERT INTO ddl_check SELECT g, g % 3 FROM generate_series(1, 30) AS g")
    yield "ddl_check"
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS ddl_check")


def test_a_failed_concurrent_build_is_built_again(table: str) -> None:
    # A unique index over repeated values fails, and CONCURRENTLY leaves it behind, INVALID.
    with connection.cursor() as cursor, pytest.raises(Exception, match="could not create unique index"):
        cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY ddl_check_v_idx ON {table} (v)")
    assert _valid("ddl_check_v_idx") is False

    with connection.schema_editor(atomic=False) as editor:
        index_create(editor, name="ddl_check_v_idx", table=table, columns="v", where="v > 0")

    assert _valid("ddl_check_v_idx") is True
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'ddl_check_v_idx'")
        definition = cursor.fetchone()[0]
    assert "UNIQUE" not in definition
    assert "WHERE (v > 0)" in definition

    with connection.schema_editor(atomic=False) as editor:
        index_drop(editor, name="ddl_check_v_idx")
    assert _valid("ddl_check_v_idx") is None


def test_a_valid_index_is_left_as_it_is(table: str) -> None:
    with connection.schema_editor(atomic=False) as editor:
        index_create(editor, name="ddl_check_v_idx", table=table, columns="v")
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_class WHERE relname = 'ddl_check_v_idx'")
        before = cursor.fetchone()[0]
    with connection.schema_editor(atomic=False) as editor:
        index_create(editor, name="ddl_check_v_idx", table=table, columns="v")
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_class WHERE relname = 'ddl_check_v_idx'")
        assert cursor.fetchone()[0] == before
