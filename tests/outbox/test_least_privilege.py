"""The event log holds against the application's own database role, as an intruder would try it.

The suite creates a role that owns nothing, gives it the grants `outbox_grants` prints, and runs
each attack through it over a real PostgreSQL connection. The owner's powers (TRUNCATE, triggers
off) are tried through the test's own connection, which owns the tables: verify must name them.
"""

import json
import time
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from outbox import testing
from outbox.eventlog.checkpoints import checkpoint_take
from outbox.eventlog.sealing import verify
from outbox.models import Checkpoint, Dedupe, Delivery, Event, Pending, Seal
from outbox.relay.routing import consumers_for
from tests.outbox.helpers import as_role
from tests.outbox_app import services
from tests.outbox_app.models import Item
from tests.processes import app_role_env, database_url, manage_run, processes
from tests.smtp import smtp_server
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LONG_GRACE = timedelta(days=1)


def settle_all() -> list[int]:
    """Relay nothing, but handle every event as the consumers would: done, applied and sealed
    (the stocktake applies the stock events; the journal takes and seals every event)."""
    ids = list(Event.objects.order_by("id").values_list("id", flat=True))
    Pending.objects.filter(event_id__in=ids).delete()
    stock = [e.id for e in Event.objects.order_by("id") if "stocktake" in consumers_for(e.event_type)]
    testing.deliver("stocktake", stock)
    testing.deliver("journal", ids)
    return ids


def item_create(sku: str, name: str = "Item") -> Item:
    return Item.objects.create(sku=sku, name=name, price=Decimal("10.00"))


def a_sealed_log() -> list[int]:
    for i in range(3):
        item_create(f"C-{i}", f"C{i}")
    ids = settle_all()
    assert checkpoint_take() is not None
    return ids


def kinds(**options: object) -> list[str]:
    return sorted(p.kind for p in verify(**options).problems or [])  # type: ignore[arg-type]


ATTACKS = [
    "TRUNCATE outbox_event, outbox_seal, outbox_aggregate CASCADE",
    "TRUNCATE outbox_checkpoint",
    "ALTER TABLE outbox_event DISABLE TRIGGER USER",
    "ALTER TABLE outbox_seal DISABLE TRIGGER outbox_seal_append_only",
    "DROP TRIGGER outbox_event_append_only ON outbox_event",
    "CREATE OR REPLACE FUNCTION outbox_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$",
    "DROP FUNCTION outbox_purge_events(bigint[])",
    "ALTER TABLE outbox_event RENAME TO outbox_event_old",
    "DELETE FROM outbox_event",
    "UPDATE outbox_event SET actor = 'user:mallory'",
    "DELETE FROM outbox_seal",
    "UPDATE outbox_seal SET purged_at = now()",
    "DELETE FROM outbox_aggregate",
    "UPDATE outbox_aggregate SET version = version - 1",
    "DELETE FROM outbox_checkpoint",
    "UPDATE outbox_checkpoint SET sealed = 0",
    "DELETE FROM outbox_delivery",
    "DELETE FROM outbox_replay",
    "SELECT setval(pg_get_serial_sequence('outbox_event', 'id'), 1)",
    "ALTER TABLE outbox_event OWNER TO CURRENT_USER",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_app_role_can_neither_change_nor_empty_nor_unguard_the_event_log(app_role: str, attack: str) -> None:
    ids = a_sealed_log()
    with as_role(app_role) as intruder, pytest.raises(psycopg.errors.InsufficientPrivilege):
        intruder.execute(attack)
    assert list(Event.objects.order_by("id").values_list("id", flat=True)) == ids
    assert Seal.objects.filter(purged_at__isnull=True).count() == len(ids)
    assert kinds() == []


def test_no_session_setting_opens_the_guard_for_anyone(app_role: str) -> None:
    """0005 let `SET LOCAL outbox.purge = on` delete an unpublished event with its pending row."""
    item_create("ADA-1", "Ada")
    event = Event.objects.get()
    with as_role(app_role) as intruder, pytest.raises(psycopg.errors.InsufficientPrivilege), intruder.transaction():
        intruder.execute("SET LOCAL outbox.purge = 'on'")
        intruder.execute("DELETE FROM outbox_pending WHERE event_id = %s", [event.id])
        intruder.execute("DELETE FROM outbox_event WHERE id = %s", [event.id])
    # Not even the owner: the setting opens nothing, and an unsealed event is never purged.
    with (
        pytest.raises(DatabaseError, match="only settled events may be purged"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SET LOCAL outbox.purge = 'on'")
        cursor.execute("DELETE FROM outbox_pending WHERE event_id = %s", [event.id])
        cursor.execute("DELETE FROM outbox_event WHERE id = %s", [event.id])
    assert Event.objects.filter(pk=event.id).exists()
    # What the app role can do, drop the event from the relay's queue, verify names: never sealed.
    with as_role(app_role) as intruder:
        intruder.execute("DELETE FROM outbox_pending WHERE event_id = %s", [event.id])
    assert kinds(unsealed_grace=timedelta(0)) == ["unsealed"]


def test_the_app_role_purges_only_settled_events_through_the_owners_function(app_role: str) -> None:
    ids = a_sealed_log()
    item_create("LATE-1", "Late")
    unsettled = Event.objects.order_by("-id").values_list("id", flat=True)[0]
    with as_role(app_role) as app:
        row = app.execute("SELECT outbox_purge_events(%s::bigint[])", [[*ids[:2], unsettled]]).fetchone()
    assert row == (2,)
    assert sorted(Event.objects.values_list("id", flat=True)) == [ids[2], unsettled]
    assert Seal.objects.filter(event_id__in=ids[:2], purged_at__isnull=False).count() == 2
    assert not Delivery.objects.filter(event_id__in=ids[:2]).exists()
    assert kinds(unsealed_grace=LONG_GRACE) == []


def test_outbox_purge_runs_as_the_app_role(app_role: str, tmp_path: Path) -> None:
    """The retention purge works for the processes' own role: no owner URL in the relay."""
    ids = a_sealed_log()
    time.sleep(1.1)  # the purge takes events older than a whole second
    env = {
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": database_url().replace("postgres://postgres@", f"postgres://{app_role}@"),
        "PATH": "/usr/bin:/bin",
    }
    result = manage_run("outbox_purge", "--older-than", "1s", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not Event.objects.filter(id__in=ids).exists()
    assert kinds(unsealed_grace=LONG_GRACE) == []


def forge_restock(role: str, item: Item, quantity: int) -> int:
    """Insert a restock's event by SQL, as an intruder holding the app role would."""
    with as_role(role) as intruder, intruder.transaction():
        version = intruder.execute(
            "INSERT INTO outbox_aggregate AS a (aggregatetype, aggregateid, version) VALUES ('item', %s, 1) "
            "ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = a.version + 1 RETURNING version",
            [str(item.pk)],
        ).fetchone()
        assert version is not None
        payload = {"state": {"id": 999_999, "item_id": item.pk, "quantity": quantity}}
        row = intruder.execute(
            "INSERT INTO outbox_event (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor,"
            " correlation_id, source) VALUES (gen_random_uuid(), 'item.restocked', 'item', %s, %s, %s, "
            "'user:admin', 'c0ffee', 'admin') RETURNING id",
            [str(item.pk), version[0], json.dumps(payload)],
        ).fetchone()
        assert row is not None
        intruder.execute(
            "INSERT INTO outbox_pending (event_id, type, claimed_by, claims) VALUES (%s, %s, '', 0)",
            [row[0], "item.restocked"],
        )
    return int(row[0])


def test_an_event_inserted_by_sql_is_refused_not_applied_and_not_sealed(app_role: str) -> None:
    item = item_create("KB-1", "Keyboard")
    services.restock(item=item, quantity=5)
    settle_all()
    forged = forge_restock(app_role, item, 500)
    # A copy of a real event's facts and tag under a new event id does not verify either.
    with as_role(app_role) as intruder, intruder.transaction():
        intruder.execute("UPDATE outbox_aggregate SET version = version + 1 WHERE aggregatetype = 'item'")
        copied = intruder.execute(
            "INSERT INTO outbox_event (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, actor,"
            " correlation_id, source, tag) SELECT gen_random_uuid(), e.type, e.aggregatetype, e.aggregateid,"
            " a.version, e.payload, e.actor, e.correlation_id, e.source, e.tag FROM outbox_event e JOIN"
            " outbox_aggregate a USING (aggregatetype, aggregateid) WHERE e.type = 'item.restocked' AND e.id <> %s "
            "RETURNING id",
            [forged],
        ).fetchone()
    assert copied is not None
    testing.deliver("stocktake", [forged, copied[0]])
    testing.deliver("journal", [forged, copied[0]])
    item.refresh_from_db()
    assert item.stock == 5
    for event_id in (forged, copied[0]):
        for consumer in ("stocktake", "journal"):
            delivery = Delivery.objects.get(event_id=event_id, consumer=consumer)
            assert delivery.status == "dead"
            assert "was not written by the outbox's writer" in delivery.last_error
    assert not Seal.objects.filter(event_id__in=[forged, copied[0]]).exists()
    # The item's later events still apply and seal: the chain goes past the refused row.
    services.restock(item=item, quantity=2)
    settle_all()
    item.refresh_from_db()
    assert item.stock == 7
    problems = verify(unsealed_grace=LONG_GRACE).problems or []
    assert sorted((p.kind, p.event_id) for p in problems) == [("forged", forged), ("forged", copied[0])]


def test_the_pipeline_runs_as_the_app_role_and_refuses_a_forged_event(app_role: str, tmp_path: Path) -> None:
    """Relay and worker processes connected as the role that owns nothing: every consumer works
    (transactional and external), seals and checkpoints are written, and a forged row is refused
    by the real worker."""
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    item = item_create("KB-1", "Keyboard")
    services.restock(item=item, quantity=5)
    routed = consumers_for("item.restocked")
    assert {"stocktake", "journal", "outbox_seal"} <= set(routed)
    with smtp_server() as mail:
        env = app_role_env(app_role, smtp_host=mail.host, smtp_port=mail.port)
        with processes(tmp_path, **env) as procs:
            procs.relay("r1")
            procs.worker()
            shipment = services.shipment_create(recipient="ada@example.com", lines=[(item, 2)], send=True)
            forged = forge_restock(app_role, item, 500)

            def settled() -> bool:
                return (
                    not Pending.objects.exists()
                    and Delivery.objects.filter(status="published").count() == 0
                    and Delivery.objects.filter(event_id=forged, status="dead").count() == len(routed)
                )

            wait_until(settled, timeout=60, what="every delivery to be done or dead")
            wait_until(lambda: mail.count() == 1, timeout=30, what="the shipment's notice")
            wait_until(
                lambda: Checkpoint.objects.filter(last_event_id__gte=forged - 1).exists(),
                timeout=30,
                what="a checkpoint from the relay",
            )
    item.refresh_from_db()
    assert item.stock == 3
    assert Delivery.objects.filter(event__aggregate_id=str(shipment.pk), status="done").count() >= 2
    assert Dedupe.objects.get(consumer="courier").status == Dedupe.Status.SENT
    assert not Seal.objects.filter(event_id=forged).exists()
    assert set(Delivery.objects.exclude(event_id=forged).values_list("status", flat=True)) == {"done"}
    assert sorted((p.kind, p.event_id) for p in verify(unsealed_grace=LONG_GRACE).problems or []) == [
        ("forged", forged)
    ]


def test_outbox_grants_prints_exactly_what_it_applies_and_refuses_a_role_that_owns_the_log(app_role: str) -> None:
    out = StringIO()
    call_command("outbox_grants", role=app_role, stdout=out)
    sql = out.getvalue()
    assert "GRANT SELECT, INSERT ON TABLE " in sql
    granted = next(line for line in sql.splitlines() if line.startswith("GRANT SELECT, INSERT ON TABLE"))
    for table in ("outbox_event", "outbox_seal", "outbox_checkpoint", "outbox_replay", "outbox_replay_item"):
        assert f'"{table}"' in granted
    assert "TRUNCATE" not in sql
    assert "GRANT EXECUTE ON FUNCTION" in sql
    owner = connection.settings_dict["USER"]
    with pytest.raises(CommandError, match="privileges do not bind it"):
        call_command("outbox_grants", role=owner)
    with pytest.raises(CommandError, match="does not exist"):
        call_command("outbox_grants", role="no_such_role_here")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = %s "
            "AND table_name = 'outbox_event' ORDER BY 1",
            [app_role],
        )
        assert [row[0] for row in cursor.fetchall()] == ["INSERT", "SELECT"]


# --- what the owner can do, verify names ---------------------------------------------------------


def test_verify_names_a_log_its_owner_emptied() -> None:
    ids = a_sealed_log()
    checkpoint = Checkpoint.objects.get()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_event, outbox_seal, outbox_aggregate CASCADE")
    problems = verify().problems or []
    assert [p.kind for p in problems] == ["cut"]
    assert f"counted {len(ids)} sealed events" in problems[0].detail
    # The checkpoints gone too: the ids the database handed out still tell.
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_checkpoint")
    assert kinds() == ["emptied"]
    # A token kept outside the database names what it held, whatever else is gone.
    assert kinds(expect=checkpoint.token) == ["checkpoints_removed", "cut", "emptied"]


def test_verify_names_a_tail_cut_with_its_seal_and_counter() -> None:
    """The owner turns the guards off and removes an aggregate's last event, its seal and one count."""
    item = item_create("ADA-1", "Ada")
    item.name = "Ada L."
    item.save()
    settle_all()
    checkpoint_take()
    last = Event.objects.order_by("-aggregate_version").first()
    assert last is not None
    with connection.cursor() as cursor:
        for table in ("outbox_event", "outbox_seal", "outbox_aggregate"):
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cursor.execute("DELETE FROM outbox_event WHERE id = %s", [last.id])
        cursor.execute("DELETE FROM outbox_seal WHERE event_id = %s", [last.id])
        cursor.execute("UPDATE outbox_aggregate SET version = version - 1")
        for table in ("outbox_event", "outbox_seal", "outbox_aggregate"):
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    problems = verify().problems or []
    assert [p.kind for p in problems] == ["cut"]
    assert "1 were removed with their seals" in problems[0].detail


def test_a_forged_checkpoint_is_named_and_never_built_on(app_role: str) -> None:
    a_sealed_log()
    with as_role(app_role) as intruder:
        intruder.execute(
            "INSERT INTO outbox_checkpoint (sealed, last_event_id, taken_at, previous, signature) "
            "VALUES (1000000, 1000000, now(), '', repeat('0', 64))"
        )
    assert kinds() == ["forged_checkpoint"]
    item_create("NEXT-1", "Next")
    settle_all()
    taken = checkpoint_take()
    assert taken is not None
    assert taken.previous == Checkpoint.objects.order_by("id").first().signature  # type: ignore[union-attr]
    assert kinds() == ["forged_checkpoint"]


def test_outbox_verify_json_says_ok_and_prints_the_checkpoint_to_keep() -> None:
    a_sealed_log()
    env = {"DJANGO_SETTINGS_MODULE": "settings.test", "DATABASE_URL": database_url(), "PATH": "/usr/bin:/bin"}
    result = manage_run("outbox_verify", "--json", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["events"], report["problems"]) == (True, 3, [])
    assert report["checkpoint"] == Checkpoint.objects.get().token
    bad = manage_run("outbox_verify", "--expect", "12:banana", env=env, timeout=60)
    assert bad.returncode != 0
    assert "is not a checkpoint token" in bad.stderr


def test_events_written_before_tags_existed_are_tagged_by_the_migration() -> None:
    """An existing database keeps working: 0010 tags the events already there, as the owner."""
    item = item_create("ADA-1", "Ada")
    call_command("migrate", "outbox", "0009", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO outbox_event (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, "
                "actor, correlation_id, source) VALUES (gen_random_uuid(), 'item.updated', 'item', %s, 2, "
                "'{\"state\": {\"price\": 1.0, \"n\": 2}}', 'system', 'c', 'command:shell')",
                [str(item.pk)],
            )
    finally:
        call_command("migrate", verbosity=0)  # every app: migrating back unapplied what depends on outbox too
    old = Event.objects.order_by("id")
    assert all(len(event.tag) == 64 for event in old)
    Pending.objects.all().delete()
    testing.deliver("journal", [event.id for event in old])
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}
    assert kinds(unsealed_grace=LONG_GRACE) == []


ADMIN_SCRIPT = """
from django.contrib.auth.models import User
from django.test import Client
from outbox.models import Event
from tests.outbox_app.models import Item

user = User.objects.create_superuser("app-admin", "a@example.com", "pw")
client = Client()
client.force_login(user)
item = Item.objects.get(sku="KB-1")
response = client.post("/admin/outbox_app/shipment/add/", {
    "recipient": "ada@example.com", "status": "sent",
    "lines-TOTAL_FORMS": "1", "lines-INITIAL_FORMS": "0", "lines-MIN_NUM_FORMS": "0", "lines-MAX_NUM_FORMS": "1000",
    "lines-0-item": str(item.pk), "lines-0-quantity": "2",
})
assert response.status_code == 302, response.content.decode()[:3000]
pages = ("/admin/outbox_app/shipment/", "/admin/outbox/event/", "/admin/outbox/delivery/", "/admin/outbox/dashboard/")
for url in pages:
    assert client.get(url).status_code == 200, url
print("EVENTS", Event.objects.filter(aggregate_type="shipment").count())
"""


def test_the_admin_works_as_the_app_role(app_role: str) -> None:
    """A user's save through the admin, on a connection of the role that owns nothing."""
    item_create("KB-1", "Keyboard")
    env = {
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": database_url().replace("postgres://postgres@", f"postgres://{app_role}@"),
        "PATH": "/usr/bin:/bin",
    }
    env["ALLOWED_HOSTS"] = "testserver"
    result = manage_run("shell", "-c", ADMIN_SCRIPT, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EVENTS 2" in result.stdout


def test_the_tag_survives_what_jsonb_does_to_a_payload() -> None:
    """jsonb renormalises numbers and key order: the writer's tag must still verify on read."""
    import collections
    import dataclasses
    import enum
    from datetime import datetime
    from datetime import timezone as dt_timezone

    from outbox.emit.writer import NewEvent, events_write
    from outbox.eventlog.tagging import tag_valid

    @dataclasses.dataclass
    class Reading:
        value: float

    class Scale(enum.Enum):
        DOUBLE = 2.0

    payload = {
        "ns": 2.0**60,
        "ordered": collections.OrderedDict(q=4.0),
        "reading": Reading(5.0),
        "scale": Scale.DOUBLE,
        "z": 1.0,
        "a": [1e20, 0.1, 2.5e-7, -0.0, {"y": 3, "b": 'ü\\n"'}],
        "when": datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=dt_timezone.utc),
        "price": Decimal("89.00"),
        "none": None,
    }
    with transaction.atomic():
        events_write([NewEvent("thing.happened", "thing", "1", payload)])
    event = Event.objects.get(event_type="thing.happened")
    assert tag_valid(event)


def test_a_copy_of_a_purged_event_is_refused(app_role: str) -> None:
    """Purge a restock's event, then insert it again with its own UUID and tag: it was sealed once."""
    item = item_create("KB-1", "Keyboard")
    restock = services.restock(item=item, quantity=5)
    settle_all()
    received = Event.objects.get(event_type="item.restocked")
    restock.delete()
    settle_all()
    item.refresh_from_db()
    assert item.stock == 0
    with as_role(app_role) as intruder:
        assert intruder.execute("SELECT outbox_purge_events(%s::bigint[])", [[received.id]]).fetchone() == (1,)
        with intruder.transaction():
            intruder.execute(
                "UPDATE outbox_aggregate SET version = version + 1 WHERE aggregatetype = 'item' AND aggregateid = %s",
                [str(item.pk)],
            )
            row = intruder.execute(
                "INSERT INTO outbox_event (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, "
                "actor, correlation_id, source, tag) SELECT %s, %s, 'item', %s, a.version, %s, %s, %s, %s, %s "
                "FROM outbox_aggregate a WHERE aggregatetype = 'item' AND aggregateid = %s RETURNING id",
                [
                    received.event_id,
                    received.event_type,
                    str(item.pk),
                    json.dumps(received.payload),
                    received.actor,
                    received.correlation_id,
                    received.source,
                    received.tag,
                    str(item.pk),
                ],
            ).fetchone()
    assert row is not None
    copy = row[0]
    testing.deliver("stocktake", [copy])
    testing.deliver("journal", [copy])
    item.refresh_from_db()
    assert item.stock == 0
    delivery = Delivery.objects.get(event_id=copy, consumer="stocktake")
    assert (delivery.status, f"is a copy of event {received.id}") == ("dead", f"is a copy of event {received.id}")
    assert f"is a copy of event {received.id}" in delivery.last_error
    assert not Seal.objects.filter(event_id=copy).exists()
    assert [(p.kind, p.event_id) for p in verify(unsealed_grace=LONG_GRACE).problems or []] == [("forged", copy)]


@pytest.mark.parametrize("purged", [True, False], ids=["born-purged", "unpurged"])
def test_the_app_role_cannot_add_a_seal_for_an_event_the_log_does_not_hold(app_role: str, purged: bool) -> None:
    """A seal born purged once hid a gap, and one with a huge id stopped every later checkpoint."""
    a_sealed_log()
    with as_role(app_role) as intruder, pytest.raises(psycopg.errors.CheckViolation):
        intruder.execute(
            "INSERT INTO outbox_seal (event_id, aggregatetype, aggregateid, aggregate_version, seal, event_uuid, "
            "sealed_at, purged_at) VALUES (999999999, 'zz', 'zz', 1, repeat('a', 64), gen_random_uuid(), now(), "
            "CASE WHEN %s THEN now() END)",
            [purged],
        )
    item_create("NEXT-1", "Next")
    settle_all()
    assert checkpoint_take() is not None
    assert kinds() == []


def test_an_event_never_delivered_is_not_purged_even_once_sealed(app_role: str) -> None:
    """The app role drops an event from the relay's queue; a later event of its aggregate seals it."""
    item = item_create("ADA-1", "Ada")
    first = Event.objects.get()
    with as_role(app_role) as intruder:
        intruder.execute("DELETE FROM outbox_pending WHERE event_id = %s", [first.id])
    item.name = "Ada L."
    item.save()
    second = Event.objects.exclude(pk=first.id).get()
    Pending.objects.filter(event_id=second.id).delete()
    testing.deliver("journal", [second.id])
    assert Seal.objects.filter(event_id=first.id).exists()
    with as_role(app_role) as intruder:
        assert intruder.execute("SELECT outbox_purge_events(%s::bigint[])", [[first.id]]).fetchone() == (0,)
    assert Event.objects.filter(pk=first.id).exists()


def test_outbox_grants_takes_create_on_the_schema_from_the_app_role(app_role: str) -> None:
    """A role that may create functions in the schema could shadow what the owner's purge calls."""
    with connection.cursor() as cursor:
        cursor.execute(f'GRANT CREATE ON SCHEMA public TO "{app_role}"')
        cursor.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    call_command("outbox_grants", role=app_role, apply=True, stdout=StringIO())
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [app_role])
        assert cursor.fetchone() == (False,)
    with as_role(app_role) as intruder, pytest.raises(psycopg.errors.InsufficientPrivilege):
        intruder.execute(
            "CREATE FUNCTION public.array_length(bigint[], integer) RETURNS integer LANGUAGE sql AS 'SELECT 1'"
        )


def test_verify_names_checkpoints_that_stopped(settings: object) -> None:
    """A relay that takes none (stopped, or blocked by a lock another session holds) is named."""
    a_sealed_log()
    item_create("LATE-1", "Late")
    settle_all()
    settings.OUTBOX_CHECKPOINT_SECONDS = 0.01  # type: ignore[attr-defined]
    time.sleep(0.3)
    assert kinds() == ["stale_checkpoint"]
    assert checkpoint_take() is not None
    assert kinds() == []


def test_a_payload_changed_after_it_was_written_keeps_its_event_valid() -> None:
    """The tag covers the payload as written, even where the caller reuses the dict before COMMIT."""
    from outbox.emit.writer import NewEvent, events_write
    from outbox.eventlog.tagging import tag_valid

    payload = {"n": 1}
    with transaction.atomic():
        events_write([NewEvent("thing.counted", "thing", "1", payload)])
        payload["n"] = 2
        events_write([NewEvent("thing.counted", "thing", "1", payload)])
        payload["n"] = 3
    counted = list(Event.objects.checked().filter(event_type="thing.counted").order_by("id"))
    assert [(event.payload["n"], tag_valid(event)) for event in counted] == [(1, True), (2, True)]
