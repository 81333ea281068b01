"""Every event carries its payload's schema version (outbox/emit/schemas.py).

- outbox_event.schema_version, a small integer, 1 by default: every event written before is of
  version 1, which is what it is. A column with a constant default is added to PostgreSQL's
  catalogue only (PostgreSQL 11 and later): no row is rewritten, and the table's lock is held for
  an instant. The default stays, so an insert that names no version (a process of the code
  before this one, during a deploy) writes version 1, which is what that code wrote.
- A check that the version is at least 1. Added as one statement, PostgreSQL would scan every
  event under the lock that holds off every save: it is added NOT VALID (new rows are checked
  from then on), then validated, a scan that lets saves go on.
- outbox_event_schema_idx on (type, schema_version) for the events above version 1 only, so
  that the system check of the versions in the log (outbox.E008) reads it instead of the table,
  and saves pay for it only once their type's version has gone up. Built CONCURRENTLY, outside
  a transaction: business saves go on meanwhile.

The application's role needs no new grant: its SELECT and INSERT on outbox_event cover every
column. Existing tags and seals still verify: they cover the version only when it is above 1.

What a save pays for the version (`outbox_bench --only save`, medians of five runs each,
interleaved with runs of the code before, on a shared machine): save_overhead_ratio 1.261 →
1.273, bulk_save_overhead_ratio 1.376 → 1.383. The index costs a version 1 event nothing.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import index_create, index_drop

INDEX = "outbox_event_schema_idx"
CHECK = "outbox_event_schema_version_positive"


class AddCheckNotValidFirst(migrations.AddConstraint):
    """AddConstraint, except that on PostgreSQL the check is added NOT VALID, then validated: no
    scan of the table under the lock that blocks its writers."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
            return
        # Outside a transaction (atomic = False): the validating scan holds only a lock that saves pass.
        schema_editor.execute(f"ALTER TABLE outbox_event ADD CONSTRAINT {CHECK} CHECK (schema_version >= 1) NOT VALID")
        schema_editor.execute(f"ALTER TABLE outbox_event VALIDATE CONSTRAINT {CHECK}")


def create(apps: Any, schema_editor: Any) -> None:
    index_create(
        schema_editor, name=INDEX, table="outbox_event", columns="type, schema_version", where="schema_version > 1"
    )


def drop(apps: Any, schema_editor: Any) -> None:
    index_drop(schema_editor, name=INDEX)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("outbox", "0014_delivery_waiting")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="schema_version",
            field=models.SmallIntegerField(db_default=1, default=1, editable=False),
        ),
        AddCheckNotValidFirst(
            model_name="event",
            constraint=models.CheckConstraint(condition=models.Q(("schema_version__gte", 1)), name=CHECK),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="event",
                    index=models.Index(
                        condition=models.Q(("schema_version__gt", 1)),
                        fields=["event_type", "schema_version"],
                        name=INDEX,
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
