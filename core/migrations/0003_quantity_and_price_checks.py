"""Quantities from 1 to 1,000,000 and unit prices not below zero, checked by the database too;
product stock becomes 64-bit, so that no sum of receipts and lines can overflow it.

The CHECK constraints are added NOT VALID (a moment's lock: from then on every write is checked)
and validated separately, which reads the table without blocking writers. Rows that break a new
rule stop the migration with their ids, to be corrected first: nothing is changed silently.
Outside a transaction, so that the validation does not hold the first step's lock.
"""

from decimal import Decimal
from typing import Any

import django.core.validators
from django.db import migrations, models

import core.models

QUANTITY_IN_RANGE = models.Q(("quantity__gte", 1), ("quantity__lte", 1000000))

# (model, constraint, its condition as SQL, what to do about a row that breaks it)
CHECKS = [
    (
        "orderline",
        models.CheckConstraint(condition=QUANTITY_IN_RANGE, name="order_line_quantity_in_range"),
        "quantity >= 1 AND quantity <= 1000000",
        "correct their quantities in the admin (an open order's lines; split a larger line in several)",
    ),
    (
        "orderline",
        models.CheckConstraint(condition=models.Q(("unit_price__gte", 0)), name="order_line_unit_price_not_negative"),
        "unit_price >= 0",
        "correct their unit prices in the admin (an open order's lines)",
    ),
    (
        "stockreceipt",
        models.CheckConstraint(condition=QUANTITY_IN_RANGE, name="stock_receipt_quantity_in_range"),
        "quantity >= 1 AND quantity <= 1000000",
        "correct their quantities in the admin (Stock receipts: a receipt's quantity can be corrected)",
    ),
]


def add_checks(apps: Any, schema_editor: Any) -> None:
    for model_name, constraint, condition, fix in CHECKS:
        model = apps.get_model("core", model_name)
        if schema_editor.connection.vendor != "postgresql":
            schema_editor.add_constraint(model, constraint)
            continue
        table, name = model._meta.db_table, constraint.name
        # A run stopped by bad rows leaves its NOT VALID constraint behind: the next run starts over.
        schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        schema_editor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {table} WHERE NOT ({condition}) ORDER BY id LIMIT 20")  # noqa: S608
            bad = [row[0] for row in cursor.fetchall()]
        if bad:
            raise RuntimeError(
                f"{table} has rows that break {name} ({condition}), ids {bad} (the first 20): {fix}, "
                "then run the migration again. New writes are already checked."
            )
        schema_editor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")


def drop_checks(apps: Any, schema_editor: Any) -> None:
    for model_name, constraint, _, _ in CHECKS:
        schema_editor.remove_constraint(apps.get_model("core", model_name), constraint)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("core", "0002_order_summary_indexes")]

    operations = [
        migrations.AlterField(model_name="orderline", name="quantity", field=core.models.QuantityField()),
        migrations.AlterField(model_name="stockreceipt", name="quantity", field=core.models.QuantityField()),
        migrations.AlterField(
            model_name="orderline",
            name="unit_price",
            field=models.DecimalField(
                blank=True,
                decimal_places=2,
                help_text="Leave empty to use the product's current price.",
                max_digits=10,
                validators=[
                    django.core.validators.MinValueValidator(
                        Decimal("0"),
                        message="A unit price cannot be negative (got %(value)s). Enter 0 for a free item, "
                        "or leave it empty for the product's current price.",
                    )
                ],
            ),
        ),
        migrations.AlterField(
            model_name="product", name="stock", field=models.BigIntegerField(default=0, editable=False)
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddConstraint(model_name=model_name, constraint=constraint)
                for model_name, constraint, _, _ in CHECKS
            ],
            database_operations=[migrations.RunPython(add_checks, drop_checks)],
        ),
        # The old rules (quantity > 0) are part of the new ones; dropped only once those hold.
        migrations.RemoveConstraint(model_name="orderline", name="order_line_quantity_positive"),
        migrations.RemoveConstraint(model_name="stockreceipt", name="stock_receipt_quantity_positive"),
    ]
