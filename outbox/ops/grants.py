"""The privileges of the application's database role: exactly what the web, relay and workers need.

The processes connect as a role that owns nothing. On every table of the installed apps it may
read and write rows, except where a model narrows it with `outbox_privileges` (the event log:
SELECT and INSERT only; counters and deliveries: no DELETE). It may use the tables' sequences
but not reset them, read django_migrations, and purge settled events through
outbox_purge_events(). It can never TRUNCATE, ALTER, disable a trigger or drop anything: those
need ownership, which only the owner role (the one that runs `migrate`) has; nor create objects
in the schema, where they could shadow what the owner's functions call.
"""

from dataclasses import dataclass

from django.apps import apps
from django.db import connections
from django.db.backends.utils import CursorWrapper

from outbox.backends import Roles, ops
from outbox.errors import OutboxError

FULL = ("SELECT", "INSERT", "UPDATE", "DELETE")
PURGE_FUNCTION = "outbox_purge_events(bigint[])"


class GrantError(OutboxError):
    """The role cannot be given least privilege (it does not exist, or it owns the tables)."""


@dataclass(frozen=True)
class Plan:
    """The statements that give a role its privileges, and what they cover."""

    role: str
    statements: list[str]
    tables: int


def _quote(connection: object, name: str) -> str:
    return str(connection.ops.quote_name(name))  # type: ignore[attr-defined]


def table_privileges(*, using: str = "default") -> dict[str, tuple[str, ...]]:
    """Return {table: privileges} for every existing table of the installed apps."""
    connection = connections[using]
    existing = set(connection.introspection.table_names())
    wanted: dict[str, tuple[str, ...]] = {}
    for model in apps.get_models(include_auto_created=True):
        table = model._meta.db_table
        if model._meta.managed and not model._meta.proxy and table in existing:
            wanted[table] = tuple(getattr(model, "outbox_privileges", FULL))
    if "django_migrations" in existing:
        # Read at start-up (unapplied-migration warnings); written only by the owner's migrate.
        wanted["django_migrations"] = ("SELECT",)
    return dict(sorted(wanted.items()))


def _role_check(roles: Roles, cursor: CursorWrapper, role: str) -> None:
    row = roles.standing(cursor, role)
    if row is None:
        raise GrantError(
            f"Role {role!r} does not exist. Create it first, as a role that owns nothing: "
            f"CREATE ROLE {role} LOGIN PASSWORD '…' (see docs/operations.md#database-roles)."
        )
    superuser, owner = row
    if superuser or owner:
        what = "is a superuser" if superuser else "owns the event tables (or is a member of their owner)"
        raise GrantError(
            f"Role {role!r} {what}: privileges do not bind it, so it could change or empty the event log. "
            "Connect the application as a separate role that owns nothing and give that one the grants."
        )


def grants_plan(*, role: str, using: str = "default") -> Plan:
    """Return the statements that give `role` exactly its privileges (idempotent: revoke, then grant).

    Raises GrantError if the role does not exist, is a superuser or owns the event tables.
    """
    connection = connections[using]
    roles = ops(connection).roles
    if roles is None:
        raise GrantError("Database roles exist on PostgreSQL only; the embedded default (SQLite) has none.")
    tables = table_privileges(using=using)
    with connection.cursor() as cursor:
        _role_check(roles, cursor, role)
        sequences = roles.sequences(cursor, list(tables))
        schema = roles.schema(cursor)
    who = _quote(connection, role)
    names = ", ".join(_quote(connection, t) for t in tables)
    statements = [
        f"REVOKE ALL ON TABLE {names} FROM {who}",
        # A role that may create objects in the schema could shadow what the owner's functions
        # call: only the owner creates there (PostgreSQL 15's default for PUBLIC, said for older ones).
        f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC, {who}",
        f"GRANT USAGE ON SCHEMA {schema} TO {who}",
    ]
    by_privileges: dict[tuple[str, ...], list[str]] = {}
    for table, privileges in tables.items():
        by_privileges.setdefault(privileges, []).append(_quote(connection, table))
    for privileges, group in by_privileges.items():
        statements.append(f"GRANT {', '.join(privileges)} ON TABLE {', '.join(group)} TO {who}")
    if sequences:
        statements.append(f"REVOKE ALL ON SEQUENCE {', '.join(sequences)} FROM {who}")
        # nextval() and currval(), never setval(): the event id sequence cannot be reset.
        statements.append(f"GRANT USAGE, SELECT ON SEQUENCE {', '.join(sequences)} TO {who}")
    statements.append(f"GRANT EXECUTE ON FUNCTION {schema}.{PURGE_FUNCTION} TO {who}")
    return Plan(role=role, statements=statements, tables=len(tables))


def grants_apply(*, role: str, using: str = "default") -> Plan:
    """Give `role` exactly its privileges, in one transaction; return what was run."""
    plan = grants_plan(role=role, using=using)
    connection = connections[using]
    roles = ops(connection).roles
    assert roles is not None  # grants_plan() said so
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        try:
            for statement in plan.statements:
                cursor.execute(statement)
            if roles.may_create(cursor, role):
                raise GrantError(
                    f"Role {role!r} may still create objects in the schema, through a role it belongs to: "
                    "revoke CREATE on the schema from that role too, so that nothing the owner's functions "
                    "call can be shadowed."
                )
        except Exception:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    return plan
