"""Django's PostgreSQL backend, with outbox events written in the round trip of COMMIT.

A transaction's events are held on the connection (`outbox_pending`) and inserted by one
prepared statement sent together with the COMMIT: a save pays for its events in CPU and server
time only, not in an extra round trip. Savepoints keep the held events honest: rolling back to a
savepoint drops the events written after it, exactly as PostgreSQL drops the rows.

Behind a transaction-pooling PgBouncer, which cannot keep prepared statements, set
`OUTBOX_PREPARED_STATEMENTS = False`: events are then inserted by a plain statement before COMMIT.
"""

from typing import Any

from django.db.backends.postgresql import base
from django.db.backends.utils import debug_transaction  # type: ignore[attr-defined]

from outbox import conf
from outbox.backends.postgresql import insert


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox_pending: list[Any] = []
        self._outbox_marks: dict[str, int] = {}
        self._outbox_prepared = False
        # psycopg deallocates every prepared statement of the session (ours too) when a rollback,
        # to a savepoint or not, follows one of its own (the relay's statements, operations.py):
        # after a rollback, the next commit with events checks that the insert is still prepared.
        self._outbox_recheck = False

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        self._outbox_prepared = False
        if connection.prepare_threshold is None and conf.prepared_statements():
            # Django turns prepared statements off; the event insert asks for one explicitly
            # (prepare=True), and a threshold no query reaches keeps every other query unprepared.
            connection.prepare_threshold = 2**31 - 1
        return connection

    def _outbox_discard(self) -> None:
        self.outbox_pending.clear()
        self._outbox_marks.clear()

    def _commit(self) -> None:
        if not self.outbox_pending or self.connection is None:
            self._outbox_discard()
            super()._commit()  # type: ignore[misc]  # private in the stubs
            return
        rows = list(self.outbox_pending)
        self._outbox_discard()
        with debug_transaction(self, "COMMIT"), self.wrap_database_errors:
            # If the insert fails, the COMMIT is not run and Django's atomic block rolls the
            # transaction back: neither the change nor its events are kept.
            if conf.prepared_statements():
                if self._outbox_prepared and self._outbox_recheck:
                    self._outbox_prepared = insert.is_prepared(self.connection)
                self._outbox_recheck = False
                if not self._outbox_prepared:
                    insert.prepare(self.connection)
                    self._outbox_prepared = True
                insert.insert_and_commit(self.connection, rows)
            else:
                insert.insert(self.connection, rows)
                self.connection.commit()

    def _rollback(self) -> None:
        self._outbox_discard()
        self._outbox_recheck = True
        super()._rollback()  # type: ignore[misc]  # private in the stubs

    def _savepoint(self, sid: str) -> None:
        self._outbox_marks[sid] = len(self.outbox_pending)
        super()._savepoint(sid)  # type: ignore[misc]  # private in the stubs

    def _savepoint_rollback(self, sid: str) -> None:
        mark = self._outbox_marks.pop(sid, None)
        if mark is not None:
            del self.outbox_pending[mark:]
        self._outbox_recheck = True
        super()._savepoint_rollback(sid)  # type: ignore[misc]  # private in the stubs

    def _savepoint_commit(self, sid: str) -> None:
        self._outbox_marks.pop(sid, None)
        super()._savepoint_commit(sid)  # type: ignore[misc]  # private in the stubs

    def close(self) -> None:
        self._outbox_discard()
        super().close()
