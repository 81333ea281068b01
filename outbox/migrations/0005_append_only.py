"""On PostgreSQL, the event log and its records are append-only, enforced by the database.

- outbox_event: UPDATE is refused; DELETE only by the retention purge (which sets
  `outbox.purge = on` for its transaction), and only of settled events: not pending, and done
  by every consumer that has a delivery for it.
- outbox_seal: only the purge may change a seal, and only to stamp `purged_at`; no DELETE.
- outbox_replay and outbox_replay_item: no UPDATE, no DELETE.

A trigger guards every connection, the application's included. In production, also give the
application's database role no TRUNCATE on these tables (TRUNCATE fires no row triggers).
"""

from typing import Any

from django.db import migrations

CREATE = """
CREATE FUNCTION outbox_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('outbox.purge', true) = 'on' THEN
        IF EXISTS (SELECT 1 FROM outbox_pending WHERE event_id = OLD.id)
           OR EXISTS (SELECT 1 FROM outbox_delivery WHERE event_id = OLD.id AND status <> 'done') THEN
            RAISE EXCEPTION 'outbox_event %: only settled events may be purged; this one is pending, failed or in flight', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'outbox_event is append-only: % of event % refused. Events are facts; only outbox_purge deletes settled ones.', TG_OP, OLD.id
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER outbox_event_append_only BEFORE UPDATE OR DELETE ON outbox_event
    FOR EACH ROW EXECUTE FUNCTION outbox_event_guard();

CREATE FUNCTION outbox_seal_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('outbox.purge', true) = 'on'
       AND NEW.event_id = OLD.event_id AND NEW.seal = OLD.seal
       AND NEW.aggregatetype = OLD.aggregatetype AND NEW.aggregateid = OLD.aggregateid
       AND NEW.aggregate_version = OLD.aggregate_version AND NEW.sealed_at = OLD.sealed_at THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox_seal is append-only: % of the seal of event % refused', TG_OP, OLD.event_id
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER outbox_seal_append_only BEFORE UPDATE OR DELETE ON outbox_seal
    FOR EACH ROW EXECUTE FUNCTION outbox_seal_guard();

CREATE FUNCTION outbox_record_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER outbox_replay_append_only BEFORE UPDATE OR DELETE ON outbox_replay
    FOR EACH ROW EXECUTE FUNCTION outbox_record_guard();
CREATE TRIGGER outbox_replay_item_append_only BEFORE UPDATE OR DELETE ON outbox_replay_item
    FOR EACH ROW EXECUTE FUNCTION outbox_record_guard();
"""

DROP = """
DROP TRIGGER IF EXISTS outbox_replay_item_append_only ON outbox_replay_item;
DROP TRIGGER IF EXISTS outbox_replay_append_only ON outbox_replay;
DROP FUNCTION IF EXISTS outbox_record_guard();
DROP TRIGGER IF EXISTS outbox_seal_append_only ON outbox_seal;
DROP FUNCTION IF EXISTS outbox_seal_guard();
DROP TRIGGER IF EXISTS outbox_event_append_only ON outbox_event;
DROP FUNCTION IF EXISTS outbox_event_guard();
"""


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0004_record_tables")]

    operations = [migrations.RunPython(create, drop)]
