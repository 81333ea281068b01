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


def _delivery_event_index(schema_editor: Any) -> str:
    # The name Django gave the foreign key's index (outbox_delivery_event_id_<hash>).
    return str(schema_editor._create_index_name("outbox_delivery", ["event_id"], suffix=""))


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox_event_created_brin")
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_delivery_event_index(schema_editor)}")
    else:
        schema_editor.execute(f"DROP INDEX IF EXISTS {_delivery_event_index(schema_editor)}")


def create(apps: Any, schema_editor: Any) -> None:
    name = _delivery_event_index(schema_editor)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON outbox_delivery (event_id)")
        schema_editor.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_event_created_brin ON outbox_event USING brin (created_at)"
        )
    else:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON outbox_delivery (event_id)")


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
