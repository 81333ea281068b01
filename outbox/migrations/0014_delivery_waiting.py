"""Ordered consumers: a delivery may be `waiting` for its aggregate's earlier event.

The new status is a choice only (no database constraint lists the statuses). Its partial index
holds only waiting deliveries, so saves, the relay and consumers that are not held back never
write to it; the sweeper reads it to re-examine the oldest. Built CONCURRENTLY, outside a
transaction: relays and workers go on meanwhile.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import index_create, index_drop

NAME = "outbox_delivery_waiting_idx"


def create(apps: Any, schema_editor: Any) -> None:
    index_create(schema_editor, name=NAME, table="outbox_delivery", columns="updated_at", where="status = 'waiting'")


def drop(apps: Any, schema_editor: Any) -> None:
    index_drop(schema_editor, name=NAME)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("outbox", "0013_backfill")]

    operations = [
        migrations.AlterField(
            model_name="delivery",
            name="status",
            field=models.CharField(
                choices=[
                    ("published", "Published"),
                    ("waiting", "Waiting for an earlier event"),
                    ("done", "Done"),
                    ("failed", "Failed"),
                    ("dead", "Dead"),
                ],
                max_length=20,
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="delivery",
                    index=models.Index(condition=models.Q(("status", "waiting")), fields=["updated_at"], name=NAME),
                ),
            ],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
