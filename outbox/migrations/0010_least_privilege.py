"""The event log holds against the application's own database role.

- outbox_event gets `tag`, the writer's HMAC over each event's facts (outbox/eventlog/tagging.py); events
  written before it are tagged here, by the owner, with the seal key in use.
- No session setting opens the guards any more (0005 let `SET LOCAL outbox.purge = on` do it):
  an event may be deleted only by a member of the table's owner role, and only once settled and
  sealed; a seal may only be stamped `purged_at`, by the owner, once its event is gone. The
  application's role gets neither UPDATE nor DELETE on these tables (`outbox_grants`) and
  purges through `outbox_purge_events()`, a SECURITY DEFINER function owned by the owner that
  deletes settled events only.
- outbox_aggregate only counts up: a version may not go down, nor a counter be deleted.
- outbox_seal keeps each event's UUID (filled in here for the events still in the log), so a copy
  of a purged event inserted later is refused; a seal may only be added for an event as the log
  holds it, and never born purged.
- outbox_checkpoint: signed counts of the sealed events (outbox/eventlog/checkpoints.py), append-only.

Stop the processes that write events (web, relays, workers) before migrating: an event written by
code from before this migration, while it runs or after, has no tag and would be refused as
forged. The migration rewrites every event (its tag) and every seal (its UUID) once.

Run as the owner of the tables. TRUNCATE and ALTER TABLE need ownership, which the
application's role must not have: see docs/operations.md#database-roles.
"""

import importlib
from typing import Any

from django.db import migrations, models

TAG_BATCH = 5000

GUARDS = """
CREATE OR REPLACE FUNCTION outbox_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
       AND NOT EXISTS (SELECT 1 FROM outbox_pending WHERE event_id = OLD.id)
       AND NOT EXISTS (SELECT 1 FROM outbox_delivery WHERE event_id = OLD.id AND status <> 'done')
       AND EXISTS (SELECT 1 FROM outbox_seal WHERE event_id = OLD.id) THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'outbox_event is append-only: DELETE of event % refused: only settled events may be purged (this one is pending, failed, in flight or unsealed), and only by the owner''s retention purge (outbox_purge)', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'outbox_event is append-only: % of event % refused. Events are facts; only outbox_purge deletes settled ones.', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE FUNCTION outbox_seal_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL
       AND NEW.event_id = OLD.event_id AND NEW.seal = OLD.seal
       AND NEW.aggregatetype = OLD.aggregatetype AND NEW.aggregateid = OLD.aggregateid
       AND NEW.aggregate_version = OLD.aggregate_version AND NEW.sealed_at = OLD.sealed_at
       AND NOT EXISTS (SELECT 1 FROM outbox_event WHERE id = OLD.event_id)
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox_seal is append-only: % of the seal of event % refused', TG_OP, OLD.event_id
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION outbox_aggregate_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.aggregatetype = OLD.aggregatetype AND NEW.aggregateid = OLD.aggregateid
       AND NEW.version > OLD.version THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox_aggregate only counts up: % of %:% (version %) refused', TG_OP, OLD.aggregatetype, OLD.aggregateid, OLD.version
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER outbox_aggregate_counts_up BEFORE UPDATE OR DELETE ON outbox_aggregate
    FOR EACH ROW EXECUTE FUNCTION outbox_aggregate_guard();

CREATE TRIGGER outbox_checkpoint_append_only BEFORE UPDATE OR DELETE ON outbox_checkpoint
    FOR EACH ROW EXECUTE FUNCTION outbox_record_guard();

CREATE FUNCTION outbox_seal_insert_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.purged_at IS NULL AND EXISTS (
        SELECT 1 FROM outbox_event e
        WHERE e.id = NEW.event_id AND e.event_id = NEW.event_uuid
          AND e.aggregatetype = NEW.aggregatetype AND e.aggregateid = NEW.aggregateid
          AND e.aggregate_version = NEW.aggregate_version) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox_seal: a seal for event % refused: a seal names an event of the log as it is (its id, UUID, aggregate and version) and is never added purged', NEW.event_id
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER outbox_seal_names_its_event BEFORE INSERT ON outbox_seal
    FOR EACH ROW EXECUTE FUNCTION outbox_seal_insert_guard();
"""

# {schema} is the migration's own schema, quoted. The function runs as the owner, so nothing in
# it may resolve to an object another role could create: pg_catalog comes first, the tables are
# named with their schema, and functions and operators with pg_catalog's (outbox_grants also
# takes CREATE on the schema from the app's role).
PURGE = """
CREATE FUNCTION outbox_purge_events(ids bigint[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, {schema}, pg_temp AS $$
DECLARE
    purged bigint[];
BEGIN
    -- A replay of one of these events waits for the purge's decision, or the purge for the replay.
    PERFORM 1 FROM {schema}.outbox_delivery d WHERE d.event_id OPERATOR(pg_catalog.=) ANY(ids) FOR UPDATE;
    PERFORM 1 FROM {schema}.outbox_pending p WHERE p.event_id OPERATOR(pg_catalog.=) ANY(ids) FOR UPDATE;
    WITH gone AS (
        DELETE FROM {schema}.outbox_event e
        WHERE e.id OPERATOR(pg_catalog.=) ANY(ids)
          AND NOT EXISTS (SELECT 1 FROM {schema}.outbox_pending p WHERE p.event_id OPERATOR(pg_catalog.=) e.id)
          AND EXISTS (SELECT 1 FROM {schema}.outbox_delivery d
                      WHERE d.event_id OPERATOR(pg_catalog.=) e.id AND d.status OPERATOR(pg_catalog.=) 'done')
          AND NOT EXISTS (SELECT 1 FROM {schema}.outbox_delivery d
                          WHERE d.event_id OPERATOR(pg_catalog.=) e.id AND d.status OPERATOR(pg_catalog.<>) 'done')
          AND EXISTS (SELECT 1 FROM {schema}.outbox_seal s WHERE s.event_id OPERATOR(pg_catalog.=) e.id)
        RETURNING e.id
    )
    SELECT COALESCE(pg_catalog.array_agg(id), '{{}}') INTO purged FROM gone;
    DELETE FROM {schema}.outbox_delivery d WHERE d.event_id OPERATOR(pg_catalog.=) ANY(purged);
    UPDATE {schema}.outbox_seal s SET purged_at = pg_catalog.now()
    WHERE s.event_id OPERATOR(pg_catalog.=) ANY(purged) AND s.purged_at IS NULL;
    RETURN COALESCE(pg_catalog.array_length(purged, 1), 0);
END
$$;
REVOKE ALL ON FUNCTION outbox_purge_events(bigint[]) FROM PUBLIC;
"""

# Back to 0005: what this migration added goes, then 0005's own statements put its guards back.
DROP_ADDED = """
DROP FUNCTION IF EXISTS outbox_purge_events(bigint[]);
DROP TRIGGER IF EXISTS outbox_seal_names_its_event ON outbox_seal;
DROP FUNCTION IF EXISTS outbox_seal_insert_guard();
DROP TRIGGER IF EXISTS outbox_checkpoint_append_only ON outbox_checkpoint;
DROP TRIGGER IF EXISTS outbox_aggregate_counts_up ON outbox_aggregate;
DROP FUNCTION IF EXISTS outbox_aggregate_guard();
"""


def tag_existing(apps: Any, schema_editor: Any) -> None:
    """Tag the events written before tags existed, with the seal key in use (as the owner)."""
    from outbox.eventlog.keys import seal_key
    from outbox.eventlog.tagging import event_tag

    Event = apps.get_model("outbox", "Event")
    pending = Event.objects.filter(tag="").order_by("id")
    if not pending.exists():
        return
    key = seal_key()
    postgresql = schema_editor.connection.vendor == "postgresql"
    if postgresql:
        schema_editor.execute("ALTER TABLE outbox_event DISABLE TRIGGER outbox_event_append_only")
    try:
        after = 0
        while True:
            batch = list(pending.filter(id__gt=after)[:TAG_BATCH])
            if not batch:
                break
            for event in batch:
                event.tag = event_tag(event, key)
            Event.objects.bulk_update(batch, ["tag"])
            after = batch[-1].id
    finally:
        if postgresql:
            schema_editor.execute("ALTER TABLE outbox_event ENABLE TRIGGER outbox_event_append_only")


def seal_uuids(apps: Any, schema_editor: Any) -> None:
    """Give each seal its event's UUID, for the events still in the log (as the owner)."""
    postgresql = schema_editor.connection.vendor == "postgresql"
    if postgresql:
        schema_editor.execute("ALTER TABLE outbox_seal DISABLE TRIGGER outbox_seal_append_only")
    try:
        schema_editor.execute(
            "UPDATE outbox_seal SET event_uuid = (SELECT e.event_id FROM outbox_event e WHERE e.id = outbox_seal.event_id) "
            "WHERE event_uuid IS NULL"
        )
    finally:
        if postgresql:
            schema_editor.execute("ALTER TABLE outbox_seal ENABLE TRIGGER outbox_seal_append_only")


def guards_create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(GUARDS, params=None)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT quote_ident(current_schema())")
        schema = cursor.fetchone()[0]
    schema_editor.execute(PURGE.format(schema=schema), params=None)


def guards_drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        append_only = importlib.import_module("outbox.migrations.0005_append_only")
        schema_editor.execute(DROP_ADDED, params=None)
        schema_editor.execute(append_only.DROP, params=None)
        schema_editor.execute(append_only.CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0009_redundant_indexes")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="tag",
            field=models.CharField(blank=True, db_default="", default="", editable=False, max_length=64),
        ),
        migrations.RunPython(tag_existing, migrations.RunPython.noop),
        migrations.AddField(
            model_name="seal",
            name="event_uuid",
            field=models.UUIDField(null=True, unique=True),
        ),
        migrations.RunPython(seal_uuids, migrations.RunPython.noop),
        migrations.CreateModel(
            name="Checkpoint",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                (
                    "sealed",
                    models.BigIntegerField(help_text="Seals of events with ids up to last_event_id, counted so far."),
                ),
                ("last_event_id", models.BigIntegerField()),
                ("taken_at", models.DateTimeField()),
                ("previous", models.CharField(blank=True, max_length=64)),
                ("signature", models.CharField(max_length=64)),
            ],
            options={"db_table": "outbox_checkpoint"},
        ),
        migrations.RunPython(guards_create, guards_drop),
    ]
