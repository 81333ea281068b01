"""The event log as a record: append-only in PostgreSQL, sealed, verified, purged only when settled."""

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from outbox import testing
from outbox.eventlog.purge import parse_age, purge_settled
from outbox.eventlog.sealing import verify
from outbox.models import Delivery, Event, Pending, Replay, Seal
from tests.outbox.helpers import events
from tests.outbox_app.models import Item
from tests.processes import database_url, manage_run

pytestmark = pytest.mark.django_db(transaction=True)


def registered(n: int) -> list[int]:
    for i in range(n):
        Item.objects.create(sku=f"C-{i}", name=f"C{i}", price=1)
    return list(Event.objects.order_by("id").values_list("id", flat=True))


def settle(ids: list[int]) -> None:
    """As if relayed and handled: not pending, done, sealed (the journal consumer seals)."""
    Pending.objects.filter(event_id__in=ids).delete()
    testing.deliver("journal", ids)


def behind_the_back(sql: str, params: list[Any] | None = None) -> None:
    """Change outbox_event as someone with direct database access would: triggers off."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE outbox_event DISABLE TRIGGER outbox_event_append_only")
        try:
            cursor.execute(sql, params or [])
        finally:
            cursor.execute("ALTER TABLE outbox_event ENABLE TRIGGER outbox_event_append_only")


def test_the_application_can_neither_update_nor_delete_an_event() -> None:
    event_id = registered(1)[0]
    with pytest.raises(DatabaseError, match="outbox_event is append-only: UPDATE"), transaction.atomic():
        Event.objects.filter(pk=event_id).update(actor="someone else")
    with pytest.raises(DatabaseError, match="outbox_event is append-only: DELETE"), transaction.atomic():
        Event.objects.filter(pk=event_id).delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE outbox_event SET payload = '{}' WHERE id = %s", [event_id])
    assert Event.objects.get(pk=event_id).actor == "system"


def test_seals_and_replay_records_cannot_be_changed_either() -> None:
    ids = registered(1)
    settle(ids)
    with pytest.raises(DatabaseError, match="outbox_seal is append-only"), transaction.atomic():
        Seal.objects.filter(event_id=ids[0]).update(seal="0" * 64)
    with pytest.raises(DatabaseError, match="outbox_seal is append-only"), transaction.atomic():
        Seal.objects.filter(event_id=ids[0]).delete()
    replay = Replay.objects.create(requested_by="x", reason="y", source="test")
    with pytest.raises(DatabaseError, match="outbox_replay is append-only"), transaction.atomic():
        Replay.objects.filter(pk=replay.pk).update(reason="changed")


def test_verify_passes_on_an_untouched_log_and_names_an_edited_event() -> None:
    ids = registered(3)
    Item.objects.create(sku="D-1", name="D", price=1)
    item_events = list(Event.objects.order_by("id").values_list("id", flat=True))
    settle(item_events)
    assert verify().problems == []
    behind_the_back("UPDATE outbox_event SET actor = 'user:mallory' WHERE id = %s", [ids[1]])
    problems = verify().problems or []
    assert [(p.kind, p.event_id) for p in problems] == [("changed", ids[1])]
    assert "no longer match its seal" in str(problems[0])


def test_verify_names_a_removed_event_and_versions_removed_before_sealing() -> None:
    item = Item.objects.create(sku="A-1", name="A", price=1)
    for i in range(3):
        item.name = f"A{i}"
        item.save()
    ids = list(Event.objects.order_by("aggregate_version").values_list("id", flat=True))
    settle(ids[:2])  # versions 1 and 2 sealed; 3 and 4 not yet
    behind_the_back("DELETE FROM outbox_event WHERE id = ANY(%s)", [[ids[1], ids[2]]])
    problems = verify(unsealed_grace=timedelta(0)).problems or []
    assert sorted((p.kind, p.event_id, p.version) for p in problems if p.kind != "missing_versions") == [
        ("removed", ids[1], 2),
        ("unsealed", ids[3], 4),
    ]
    assert [str(p) for p in problems if p.kind == "missing_versions"] == [
        f"MISSING_VERSIONS: (item:{item.pk}): versions 3..3 have neither an event nor a seal: removed"
    ]
    # The consumer refuses to seal past the gap, and says where to look.
    Pending.objects.all().delete()
    testing.deliver("journal", [ids[3]])
    delivery = Delivery.objects.get(event_id=ids[3], consumer="journal")
    assert delivery.status == "dead"
    assert "outbox_verify" in delivery.last_error


def test_outbox_verify_command_reports_and_exits_1_on_tampering() -> None:
    ids = registered(2)
    settle(ids)
    env = {"DJANGO_SETTINGS_MODULE": "settings.test", "DATABASE_URL": database_url(), "PATH": "/usr/bin:/bin"}
    ok = manage_run("outbox_verify", env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "Verified 2 events in 2 aggregates: the chains hold." in ok.stdout
    behind_the_back("UPDATE outbox_event SET payload = '{\"state\": {}}' WHERE id = %s", [ids[0]])
    bad = manage_run("outbox_verify", "--json", env=env, timeout=60)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert [(p["kind"], p["event_id"]) for p in report["problems"]] == [("changed", ids[0])]


def test_purge_deletes_only_settled_events_archives_them_and_the_chain_still_verifies(tmp_path: Path) -> None:
    ids = registered(5)
    settle(ids[:3])
    Pending.objects.filter(event_id=ids[3]).delete()
    Delivery.objects.create(event_id=ids[3], consumer="journal", status="dead", last_error="boom")
    # ids[4] is still pending.
    archive = tmp_path / "archive.jsonl"
    dry = purge_settled(older_than=timedelta(0), dry_run=True)
    assert (dry.events, Event.objects.count()) == (3, 5)
    summary = purge_settled(older_than=timedelta(0), batch_size=2, archive=archive)
    assert (summary.events, summary.batches, summary.kept_unsettled) == (3, 2, 2)
    assert sorted(Event.objects.values_list("id", flat=True)) == ids[3:]
    archived = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [row["id"] for row in archived] == ids[:3]
    assert all(row["seal"] for row in archived)
    assert Seal.objects.filter(event_id__in=ids[:3], purged_at__isnull=False).count() == 3
    assert [p.kind for p in verify(unsealed_grace=timedelta(days=1)).problems or []] == []
    # Younger than the cutoff: kept.
    assert purge_settled(older_than=timedelta(days=1)).events == 0


def test_the_database_refuses_to_purge_an_unsettled_event() -> None:
    ids = registered(1)
    with pytest.raises(DatabaseError, match="only settled events may be purged"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL outbox.purge = 'on'")
        Event.objects.filter(pk=ids[0]).delete()
    assert Event.objects.filter(pk=ids[0]).exists()


@pytest.mark.parametrize("text", ["90", "d", "0d", "-1d", "3w", "1.5h"])
def test_an_age_that_is_not_one_says_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"Write a whole number and a unit: 90d"):
        parse_age(text)


def test_ages_parse() -> None:
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert events().count() == 0
    assert timezone.now()


def test_seals_read_back_the_seals_of_events_sealed_before_in_one_query() -> None:
    """A consumer that asks for seals another consumer wrote first (the sealer, say) reads them in
    one query for the whole message, not one per aggregate."""
    from outbox import seals

    registered(6)  # six items: six aggregates
    first = seals(list(Event.objects.checked().order_by("id")))
    again = list(Event.objects.checked().order_by("id"))
    with CaptureQueriesContext(connection) as queries:
        assert seals(again) == first
    assert len(queries) == 2, [q["sql"] for q in queries]  # the aggregates' last seals, then the seals
    assert Seal.objects.count() == 6


def test_the_sealer_marks_done_what_another_consumer_sealed_without_loading_it() -> None:
    """The journal seals the events it handles (outbox.seals()); the outbox's sealer, coming
    after it, finds their seals in one query: their deliveries are done, the events are neither
    loaded nor sealed again. An event nobody sealed yet is sealed as before."""
    ids = registered(3)
    testing.deliver("journal", ids[:2])
    sealed_before = dict(Seal.objects.values_list("event_id", "seal"))
    assert set(sealed_before) == set(ids[:2])

    with CaptureQueriesContext(connection) as queries:
        outcome = testing.deliver("outbox_seal", ids[:2])
    assert sorted(outcome.done) == ids[:2]
    assert not [q["sql"] for q in queries if '"outbox_event"."payload"' in q["sql"]]  # no event was loaded
    assert set(Delivery.objects.filter(consumer="outbox_seal").values_list("event_id", "status")) == {
        (ids[0], "done"),
        (ids[1], "done"),
    }

    outcome = testing.deliver("outbox_seal", ids)
    assert (outcome.done, sorted(outcome.skipped)) == ([ids[2]], ids[:2])
    assert Seal.objects.filter(event_id__in=ids).count() == 3
    assert dict(Seal.objects.filter(event_id__in=ids[:2]).values_list("event_id", "seal")) == sealed_before
    assert verify().problems == []
