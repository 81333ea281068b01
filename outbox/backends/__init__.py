"""The database seam: what the outbox does differently on one database than on another.

The concern modules (the writer, the relay's claims, sweeper, heartbeats and loop, the event log's
seals, selectors, checkpoints and purge, the external consumers' dedupe records, the status,
grants and checks) hold the logic and say why;
for the few steps a database runs its own way they call `ops()`, never `connection.vendor`.
`ops(connection=None)` returns the operations object for the connection's vendor (the default
connection's unless another is given, as the writer and the grants do for `using`), made once per
vendor and kept: a hot path pays a dictionary lookup for it and no query. One object serves every
thread, so it holds no state: its methods run on the thread's `django.db.connection`, or on the
connection or cursor they are given.

What a backend provides is the class `outbox.backends.portable.Operations`, and the protocols
below for what it hands out:

- the statements: the writer's event insert, the relay's claim, mark and release of a batch,
  the sweeper's take and give-back of overdue deliveries, the relay's heartbeat and session, the
  event log's last seals, distinct values and checkpoint statements, the purge's delete, the
  external consumers' dedupe claim and mark, the status's clock and estimate of settled
  deliveries, and the schema versions above 1 that the log holds (for a system check);
- capabilities, which the callers ask instead of naming a database: whether the insert takes
  whole events as JSON (`whole_event_rows`), whether inserts are notified so that an idle relay
  can LISTEN instead of polling (`notifies_inserts`, `insert_listener()`, `listener_errors`), and
  whether the database has roles that the outbox can give least privilege to (`roles`, its
  catalogue of roles, or None where it has none: `outbox_grants` and the deploy check then say so).

`portable.Operations` is the ORM path (a few portable SQL statements aside): what the embedded
SQLite runs, and any database without a backend of its own. PostgreSQL's
(`outbox.backends.postgresql.operations`) subclasses it with single statements (`FOR UPDATE
SKIP LOCKED`, `DELETE … RETURNING` into an upsert, the database's clock, the catalogue), the
relay's run as psycopg prepared statements.

Another database gets its own the same way: a module with an `Operations` class that subclasses
`portable.Operations`, overrides what the database does better (anything not overridden keeps the
ORM path, which must stay correct there) and sets its capabilities, named under its vendor in
`OPERATIONS` below. tests/outbox runs PostgreSQL's operations; tests/test_embedded.py runs the
portable ones on SQLite.

The Django engine `outbox.backends.postgresql` (`base.py`, which holds a transaction's events and
inserts them in the round trip of COMMIT) is a separate matter: settings select it, and `ops()`
serves Django's own PostgreSQL engine as well, whose saves insert their events at once.
Migrations branch on the vendor themselves (their index changes: `ddl.py`).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from django.db import connection as default_connection

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    from outbox.backends.portable import Operations

__all__ = ["OPERATIONS", "Claimed", "InsertListener", "Overdue", "Roles", "Routes", "ops"]

Claimed = list[tuple[int, str]]  # (event id, event type), in id order
Overdue = list[tuple[int, int, str]]  # (delivery id, event id, consumer)
# A batch's routes as parallel lists (event types, consumers), each pair once, for exactly the
# types in the batch.
Routes = tuple[list[str], list[str]]

# Vendor → the module whose `Operations` serve it; any other vendor gets the portable path.
OPERATIONS = {"postgresql": "outbox.backends.postgresql.operations"}
PORTABLE = "outbox.backends.portable"

_by_vendor: dict[str, "Operations"] = {}


def ops(connection: "BaseDatabaseWrapper | None" = None) -> "Operations":
    """Return the operations for the connection's database (by default the default connection's)."""
    vendor = (default_connection if connection is None else connection).vendor
    found = _by_vendor.get(vendor)
    if found is None:
        found = _by_vendor[vendor] = import_module(OPERATIONS.get(vendor, PORTABLE)).Operations()
    return found


class InsertListener(Protocol):
    """A session of its own on which a relay waits for the insert trigger's notifications."""

    @property
    def closed(self) -> bool: ...

    def wait(self, *, timeout: float) -> None:
        """Return on the first notification, or after `timeout` seconds without one."""

    def close(self) -> None: ...


class Roles(Protocol):
    """The database's catalogue of roles, for `outbox_grants` and the deploy checks."""

    def standing(self, cursor: "CursorWrapper", role: str) -> tuple[bool, bool] | None:
        """Whether `role` is a superuser and whether it owns the event tables (or is a member of
        their owner); None when there is no such role."""

    def sequences(self, cursor: "CursorWrapper", tables: list[str]) -> list[str]:
        """The sequences the tables own (their ids' and the like), qualified and quoted."""

    def schema(self, cursor: "CursorWrapper") -> str:
        """The current schema's name, quoted."""

    def may_create(self, cursor: "CursorWrapper", role: str) -> bool:
        """Whether `role` may create objects in the current schema, through any role it belongs to."""

    def connected(self, tables: list[str]) -> tuple[str, bool, list[tuple[str, str]]]:
        """The role this connection uses, whether it is a superuser, and (table, owner) for each of
        `tables` that it owns or whose owner it is a member of."""
