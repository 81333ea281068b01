"""Index changes for migrations that must not block writers: CONCURRENTLY on PostgreSQL.

A CREATE INDEX CONCURRENTLY that fails or is interrupted leaves an INVALID index under its
name, which `IF NOT EXISTS` would then take for done: `index_create()` drops such a leftover and
builds it again. Other databases (the embedded SQLite) get the plain statements.
"""

from typing import Any


def _concurrently(schema_editor: Any) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""


def _invalid(schema_editor: Any, name: str) -> bool:
    if schema_editor.connection.vendor != "postgresql":
        return False
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = %s AND NOT i.indisvalid",
            [name],
        )
        return cursor.fetchone() is not None


def foreign_key_index(schema_editor: Any, *, table: str, column: str) -> str:
    """The name Django gives a foreign key's own index (<table>_<column>_<hash>)."""
    return str(schema_editor._create_index_name(table, [column], suffix=""))


def index_create(schema_editor: Any, *, name: str, table: str, columns: str, where: str = "", method: str = "") -> None:
    """Create the index `name` on `table (columns)`: partial when `where` is given (SQL text), of
    another access method than btree when `method` names one (PostgreSQL's `brin`, say)."""
    if _invalid(schema_editor, name):
        index_drop(schema_editor, name=name)
    using = f" USING {method}" if method else ""
    condition = f" WHERE {where}" if where else ""
    schema_editor.execute(
        f"CREATE INDEX {_concurrently(schema_editor)}IF NOT EXISTS {name} ON {table}{using} ({columns}){condition}"
    )


def index_drop(schema_editor: Any, *, name: str) -> None:
    """Drop the index `name` if it exists."""
    schema_editor.execute(f"DROP INDEX {_concurrently(schema_editor)}IF EXISTS {name}")
