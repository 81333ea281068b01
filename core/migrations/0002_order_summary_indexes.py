"""Indexes for the daily sales summary (core/reports.py): the orders placed on a day, and those
cancelled on a day. Without them the summary reads every order each morning. Partial, so drafts
and open orders cost them nothing.

Built CONCURRENTLY, outside a transaction: business users go on saving orders meanwhile.
"""

from typing import Any

from django.db import migrations, models

INDEXES = {
    "order_placed_at_idx": ("placed_at", "placed_at IS NOT NULL"),
    "order_cancelled_at_idx": ("closed_at", "status = 'cancelled'"),
}


def _concurrently(schema_editor: Any) -> str:
    return "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""


def create(apps: Any, schema_editor: Any) -> None:
    for name, (column, where) in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX {_concurrently(schema_editor)}IF NOT EXISTS {name} ON core_order ({column}) WHERE {where}"
        )


def drop(apps: Any, schema_editor: Any) -> None:
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX {_concurrently(schema_editor)}IF EXISTS {name}")


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
