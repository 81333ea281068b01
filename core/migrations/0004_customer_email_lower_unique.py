"""One customer per e-mail address whatever its case: a unique index on lower(email).

Built CONCURRENTLY, outside a transaction: business users go on saving meanwhile. Customers that
already share an address in different cases stop the migration, named, for someone to merge or
correct by hand: which of them the orders belong to is a business decision, not a migration's.
"""

from typing import Any

from django.db import migrations, models
from django.db.models import Count
from django.db.models.functions import Lower

NAME = "customer_email_lower_uniq"
CONSTRAINT = models.UniqueConstraint(
    Lower("email"),
    name=NAME,
    violation_error_message="Another customer already has this e-mail address in another case. "
    "Open that customer instead of adding another.",
)


def create(apps: Any, schema_editor: Any) -> None:
    model = apps.get_model("core", "Customer")
    by_address = model.objects.using(schema_editor.connection.alias).annotate(address=Lower("email"))
    shared = by_address.values("address").annotate(n=Count("id")).filter(n__gt=1).order_by("address")
    duplicates = [
        (
            row["address"],
            ", ".join(
                f"#{pk} {email}"
                for pk, email in by_address.filter(address=row["address"]).order_by("id").values_list("id", "email")
            ),
        )
        for row in shared[:20]
    ]
    if duplicates:
        listed = "; ".join(f"{address}: customers {ids}" for address, ids in duplicates)
        raise RuntimeError(
            f"Customers share an e-mail address in different cases ({listed}; at most 20 shown). "
            "Merge each set into one customer (move their orders), or correct the addresses, then "
            "run the migration again."
        )
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.add_constraint(model, CONSTRAINT)
        return
    with schema_editor.connection.cursor() as cursor:
        # A concurrent build that failed (a duplicate inserted meanwhile) leaves an invalid index.
        cursor.execute(
            "SELECT 1 FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s AND NOT i.indisvalid",
            [NAME],
        )
        if cursor.fetchone() is not None:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")
    schema_editor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {NAME} ON core_customer ((lower(email)))")


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.remove_constraint(apps.get_model("core", "Customer"), CONSTRAINT)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("core", "0003_quantity_and_price_checks")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddConstraint(model_name="customer", constraint=CONSTRAINT)],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
