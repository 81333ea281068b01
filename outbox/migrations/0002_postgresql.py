"""On PostgreSQL, notify the relay when events are inserted; the notification arrives on commit.

Also a BRIN index on created_at: nearly free to maintain on an append-ordered table, and enough
for time-range filters.

A statement-level trigger sends one notification per insert statement, and PostgreSQL folds
identical notifications of one transaction into one, so a busy transaction costs one NOTIFY.
"""

from typing import Any

from django.db import migrations

CREATE = """
CREATE FUNCTION outbox_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_event', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_event_notify AFTER INSERT ON outbox_event
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_event_notify();
CREATE INDEX outbox_event_created_brin ON outbox_event USING brin (created_at);
"""

DROP = """
DROP INDEX IF EXISTS outbox_event_created_brin;
DROP TRIGGER IF EXISTS outbox_event_notify ON outbox_event;
DROP FUNCTION IF EXISTS outbox_event_notify();
"""


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
