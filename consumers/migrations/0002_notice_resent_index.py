"""A partial index behind the e-mail notices' "sent more than once" filter: the duplicate
window's evidence. A notice enters it only when it is sent again, so it stays small whatever the
table holds; and `sends` changes only then, so marking a notice sent stays a HOT update.

On PostgreSQL built CONCURRENTLY, outside a transaction: consumers go on writing meanwhile.
"""

from typing import Any

from django.db import migrations, models

from outbox.backends.ddl import index_create, index_drop

INDEXES = [
    models.Index(fields=["id"], name="email_notice_resent_idx", condition=models.Q(sends__gt=1)),
]
WHERE = {"email_notice_resent_idx": "sends > 1"}


def create(apps: Any, schema_editor: Any) -> None:
    for index in INDEXES:
        index_create(schema_editor, name=index.name, table="email_notice", columns="id", where=WHERE[index.name])


def drop(apps: Any, schema_editor: Any) -> None:
    for index in INDEXES:
        index_drop(schema_editor, name=index.name)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("consumers", "0001_ledger_and_notices")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="emailnotice", index=index) for index in INDEXES],
            database_operations=[migrations.RunPython(create, drop)],
        ),
    ]
