"""The stock ledger's index by product becomes (product_id, id): the admin's list of one
product's movements, newest first, reads just the page it shows, where the foreign key's own
index on product_id made it read and sort every movement of the product. The new index answers
every lookup by product too, so the old one is dropped.

Built and dropped CONCURRENTLY, outside a transaction: the inventory consumer goes on writing.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import foreign_key_index, index_create, index_drop

NEW = "inventory_movement_product_idx"


def _product_index(schema_editor: Any) -> str:
    return foreign_key_index(schema_editor, table="inventory_movement", column="product_id")


def forward(apps: Any, schema_editor: Any) -> None:
    # The old index goes only once the new one is built: a failed build stops here.
    index_create(schema_editor, name=NEW, table="inventory_movement", columns="product_id, id")
    index_drop(schema_editor, name=_product_index(schema_editor))


def backward(apps: Any, schema_editor: Any) -> None:
    index_create(schema_editor, name=_product_index(schema_editor), table="inventory_movement", columns="product_id")
    index_drop(schema_editor, name=NEW)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("consumers", "0003_notice_token"), ("core", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="stockmovement",
                    name="product",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.DO_NOTHING,
                        related_name="movements",
                        to="core.product",
                    ),
                ),
                migrations.AddIndex(
                    model_name="stockmovement",
                    index=models.Index(fields=["product", "id"], name=NEW),
                ),
            ],
            database_operations=[migrations.RunPython(forward, backward)],
        ),
    ]
