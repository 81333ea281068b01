"""Indexes for the daily sales summary (core/reports.py): the orders placed on a day, and those
cancelled on a day. Without them the summary reads every order each morning. Partial, so drafts
and open orders cost them nothing.

Built CONCURRENTLY, outside a transaction: business users go on saving orders meanwhile.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import index_create, index_drop

INDEXES = {
    "order_placed_at_idx": ("placed_at", "placed_at IS NOT NULL"),
    "order_cancelled_at_idx": ("closed_at", "status = 'cancelled'"),
}


def create(apps: Any, schema_editor: Any) -> None:
    for name, (column, where) in INDEXES.items():
        index_create(schema_editor, name=name, table="core_order", columns=column, where=where)


def drop(apps: Any, schema_editor: Any) -> None:
    for name in INDEXES:
        index_drop(schema_editor, name=name)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("core", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(
                        condition=models.Q(("placed_at__isnull", False)),
                        fields=["placed_at"],
                        name="order_placed_at_idx",
                    ),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(
                        condition=models.Q(("status", "cancelled")),
                        fields=["closed_at"],
                        name="order_cancelled_at_idx",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
