"""Drop two indexes that others already serve; each cost every write of its table.

- outbox_event_created_brin (0002): 0007's btree on created_at answers every time range, and
  in time order.
- outbox_delivery's index on event_id, which Django makes for every foreign key: the unique
  (event_id, consumer) index answers every lookup by event_id. The relay writes three deliveries
  per event, each of which paid for it.

Dropped CONCURRENTLY, outside a transaction: business saves and relays go on meanwhile.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import foreign_key_index, index_create, index_drop

BRIN = "outbox_event_created_brin"  # PostgreSQL only (0002)


def _delivery_event_index(schema_editor: Any) -> str:
    return foreign_key_index(schema_editor, table="outbox_delivery", column="event_id")


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        index_drop(schema_editor, name=BRIN)
    index_drop(schema_editor, name=_delivery_event_index(schema_editor))


def create(apps: Any, schema_editor: Any) -> None:
    index_create(schema_editor, name=_delivery_event_index(schema_editor), table="outbox_delivery", columns="event_id")
    if schema_editor.connection.vendor == "postgresql":
        index_create(schema_editor, name=BRIN, table="outbox_event", columns="created_at", method="brin")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("outbox", "0008_delivery_plural")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="delivery",
                    name="event",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.DO_NOTHING,
                        related_name="deliveries",
                        to="outbox.event",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop, create)],
        ),
    ]
