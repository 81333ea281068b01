"""On PostgreSQL, the indexes behind the event log's admin filters that nothing else serves.

- (type, id): events of one type, newest first, and the list of types (an index skip scan).
- (actor, id): what one user did, newest first, and the list of actors.
- (created_at): a date range, newest first. The BRIN index (0002) finds a range's rows, but
  only all of them: a month of a busy shop is hundreds of thousands of rows read and sorted to
  show fifty, and PostgreSQL, not knowing that ids follow time, prefers walking the primary key
  back from the newest event, through every event after the range. With the admin ordering a
  date-filtered list by time, this one reads fifty rows.
  Its key grows with time, so an insert touches only its rightmost page, as the primary key's does.
- outbox_delivery (consumer, status, event_id) for failed and dead ones: the events of one
  consumer's failures, newest first, read from the index alone. A delivery enters it only when
  its consumer fails, so saves, the relay and consumers that succeed never write to it. (In-flight
  deliveries would have cost the relay an index entry per delivery: the filter lists their events
  from the partial index on published ones instead, outbox.admin_volume.)

Every index on outbox_event costs each business save, so these three are the only ones there.
The rest is served already: the newest events by the primary key, an aggregate's timeline and
an aggregate id by the unique (aggregatetype, aggregateid, aggregate_version) index, an event
UUID by its unique index, done deliveries by the unique (event_id, consumer) one. The three
raise save_overhead_ratio (`outbox_bench --only save`) from 1.164 to 1.181, medians of five runs
each, interleaved with runs without them.

Built CONCURRENTLY, outside a transaction: on a table of millions of events, a plain CREATE
INDEX would block every business save while it runs.
"""

from typing import Any

from django.db import migrations

INDEXES = {
    "outbox_event_type_id_idx": "outbox_event (type, id)",
    "outbox_event_actor_id_idx": "outbox_event (actor, id)",
    "outbox_event_created_idx": "outbox_event (created_at)",
    "outbox_delivery_failed_event_idx": (
        "outbox_delivery (consumer, status, event_id) WHERE status IN ('failed', 'dead')"
    ),
}


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for name, definition in INDEXES.items():
            schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}")


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for name in INDEXES:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("outbox", "0006_job_run")]

    operations = [migrations.RunPython(create, drop)]
