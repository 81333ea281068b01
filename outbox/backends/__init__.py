"""The database seam: what the outbox does differently on one database than on another.

The concern modules (so far the writer, the relay's claims, sweeper, heartbeats and loop, and the
event log's seals, selectors, checkpoints and purge) hold the logic and call `ops()` for the few
statements a database runs its own way. `ops()` returns the operations object for the current
connection's vendor (`connection.vendor`), made once per vendor and kept, so that a hot path pays a
dictionary lookup for it and no query.

What a backend provides is the class `outbox.backends.portable.Operations`:

- the statements: the writer's event insert, the relay's claim, mark and release of a batch,
  the sweeper's take and give-back of overdue deliveries, the relay's heartbeat and session, the
  event log's last seals, distinct values and checkpoint statements, and the purge's delete;
- capabilities, which the callers ask instead of naming a database: whether the insert takes
  whole events as JSON (`whole_event_rows`), and whether inserts are notified so that an idle
  relay can LISTEN instead of polling (`notifies_inserts`, `insert_listener()`).

`portable.Operations` is the ORM path (a few portable SQL statements aside): what the embedded
SQLite runs, and any database without a backend of its own. PostgreSQL's
(`outbox.backends.postgresql.operations`) subclasses it with single statements (`FOR UPDATE
SKIP LOCKED`, `DELETE … RETURNING` into an upsert, server-side clocks) and psycopg's prepared
statements.

Another database gets its own `Operations` the same way: subclass `portable.Operations`, override
what it does better in one statement (anything not overridden keeps the ORM path), set its
capabilities, and name its module under its vendor in `OPERATIONS` below. The outbox's database
backend `outbox.backends.postgresql` (a Django engine, `base.py`) is a separate matter: it holds a
transaction's events and inserts them with the COMMIT; `ops()` serves Django's own PostgreSQL
engine as well. Migrations branch on the vendor themselves (their index changes: `ddl.py`).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Protocol

from django.db import connection as default_connection

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from outbox.backends.portable import Operations

__all__ = ["OPERATIONS", "Claimed", "InsertListener", "Overdue", "Routes", "ops"]

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
