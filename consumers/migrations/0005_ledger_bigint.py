"""The ledger's quantity and running stock become 64-bit, like the product's stock (core 0003):
a sum that overflowed 32 bits failed every retry of its event ("integer out of range").

A plain column change: PostgreSQL rewrites the table under a lock, so the inventory consumer
waits for it; its deliveries are retried, nothing is lost.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("consumers", "0004_movement_product_index"), ("core", "0003_quantity_and_price_checks")]

    operations = [
        migrations.AlterField(
            model_name="stockmovement",
            name="quantity",
            field=models.BigIntegerField(help_text="Signed: negative takes stock out, positive puts it back."),
        ),
        migrations.AlterField(model_name="stockmovement", name="stock_after", field=models.BigIntegerField()),
    ]
