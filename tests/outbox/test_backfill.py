"""outbox_backfill: a consumer declared after the fact gets the retained history, in order, once,
resumable after a kill, beside live traffic."""

import json
import signal
import threading
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from outbox.models import Backfill, Delivery, Event, Pending
from outbox.ops import backfill
from outbox.ops.status import backfill_states, database_now
from tests.outbox_app.models import Item, JournalEntry
from tests.processes import private_redis, processes, queued
from tooling.processes import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_queues")]


def items(n: int, *, prefix: str = "B") -> list[int]:
    """Make `n` items and return their events' ids, as published before the journal existed:
    not pending, with no delivery to it."""
    start = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for i in range(n):
        Item.objects.create(sku=f"{prefix}-{i}", name=f"{prefix}{i}", price=1)
    ids = list(Event.objects.filter(id__gt=start).order_by("id").values_list("id", flat=True))
    Pending.objects.filter(event_id__in=ids).delete()
    return ids


def run(*args: str) -> str:
    out = StringIO()
    call_command("outbox_backfill", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def messages(queue: str = "journal") -> list[list[int]]:
    """The event ids of each message waiting on the queue."""
    raw = redis.Redis.from_url(settings.REDIS_URL).hvals(f"dramatiq:{queue}.msgs")
    return [json.loads(message)["args"][0] for message in raw]


def test_a_dry_run_counts_what_it_would_send_and_sends_nothing() -> None:
    ids = items(4)
    Delivery.objects.create(event_id=ids[1], consumer="journal", status="done")
    out = run("journal", "--dry-run")
    assert f"Would send 3 of 4 events (every type it takes; events 1 to {ids[-1]}) to journal" in out
    assert "the other 1 have a delivery to it already" in out
    assert not Backfill.objects.exists()
    assert Delivery.objects.count() == 1
    assert queued("journal") == []


def test_a_backfill_sends_the_events_it_has_no_delivery_for_in_order_and_leaves_the_rest() -> None:
    ids = items(6)
    Delivery.objects.create(event_id=ids[1], consumer="journal", status="done")  # live, or replayed, before
    Pending.objects.create(event_id=ids[5], event_type="item.created")  # not published yet: the relay's to send
    out = run("journal", "--chunk", "2")
    record = Backfill.objects.get()
    assert f"Backfill {record.pk} of journal done: 4 deliveries sent, 1 events skipped" in out
    expected = [ids[0], ids[2], ids[3], ids[4]]
    assert queued("journal") == expected
    assert all(message == sorted(message) and len(message) <= 2 for message in messages())
    published = Delivery.objects.filter(consumer="journal", status="published")
    assert sorted(published.values_list("event_id", flat=True)) == expected
    assert not Delivery.objects.filter(event_id=ids[5]).exists()
    assert (record.status, record.created, record.skipped, record.cursor) == ("done", 4, 1, record.upto)
    assert record.upto == ids[-1]
    assert record.requested_by.startswith("command:")

    # Run again: a new backfill, which finds every delivery there.
    assert "0 deliveries sent, 5 events skipped" in run("journal")
    assert queued("journal") == expected


def test_since_and_types_narrow_it_and_later_events_are_left_to_the_relay() -> None:
    old = items(3, prefix="O")
    cut = timezone.now()
    time.sleep(0.01)
    new = items(2, prefix="N")
    out = run("journal", "--since", str(old[1]))
    assert f"events {old[1] + 1} to {new[-1]}" in out
    assert "done: 3 deliveries sent, 0 events skipped" in out
    assert queued("journal") == [old[2], *new]
    Delivery.objects.all().delete()
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    run("journal", "--since", cut.isoformat(), "--types", "item.created")
    assert queued("journal") == new

    record, _ = backfill.begin("journal", requested_by="test")
    after = items(1, prefix="L")  # saved after the backfill began: the relay sends it
    backfill.run(record)
    assert after[0] > record.upto
    assert not Delivery.objects.filter(event_id=after[0]).exists()


def test_a_killed_backfill_resumes_where_it_stopped_and_sends_each_event_once(tmp_path: Path) -> None:
    ids = items(120)
    with processes(tmp_path) as started:
        child = started.manage("outbox_backfill", "journal", "--rate", "40", "--chunk", "10", name="backfill")
        deadline = time.monotonic() + 30
        while Backfill.objects.filter(cursor__gte=ids[30]).count() == 0:
            assert child.popen.poll() is None, child.output()
            assert time.monotonic() < deadline, child.output()
            time.sleep(0.05)
        child.stop(signal.SIGKILL)
    record = Backfill.objects.get()
    assert record.status == "running"
    assert ids[0] < record.cursor < ids[-1]

    out = run("journal")
    assert f"Resuming backfill {record.pk} of journal at event" in out
    assert f"Backfill {record.pk} of journal done: " in out
    # One delivery per event; each event in one message at most (a chunk the kill left committed
    # but unsent is `published`, for the sweeper to send after the redelivery deadline).
    assert sorted(Delivery.objects.filter(consumer="journal").values_list("event_id", flat=True)) == ids
    sent = queued("journal")
    assert len(sent) == len(set(sent))
    assert len(sent) >= len(ids) - 10
    assert set(ids) - set(sent) <= set(Delivery.objects.filter(status="published").values_list("event_id", flat=True))
    assert Backfill.objects.get().created == len(ids)


def test_a_backfill_says_what_is_wrong_and_changes_nothing() -> None:
    items(3)
    unknown = r"Consumer 'nobody' is not declared\. Enabled consumers: .*\. Nothing was done\."
    with pytest.raises(CommandError, match=unknown):
        run("nobody")
    with pytest.raises(CommandError, match=r"Consumer 'stocktake' does not take item\.created; it takes"):
        run("stocktake", "--types", "item.created")
    with pytest.raises(CommandError, match="--rate is events per second, at least 1"):
        run("journal", "--rate", "0")
    with pytest.raises(CommandError, match=r"--since takes an event id \(digits only, e.g. 41000\) or a date"):
        run("journal", "--since", "last week")
    far = str(10**9)
    assert f"No event after event {far}: nothing to send to journal." in run("journal", "--since", far, "--dry-run")
    assert not Backfill.objects.exists()

    record, _ = backfill.begin("journal", types=["item.created"], requested_by="test")
    with pytest.raises(CommandError, match=rf"Backfill {record.pk} of journal is unfinished .* --abandon"):
        run("journal")
    Backfill.objects.filter(pk=record.pk).update(runner="elsewhere:1", beat_at=timezone.now())
    with pytest.raises(CommandError, match=r"is being run by elsewhere:1 .*let it finish"):
        run("journal", "--types", "item.created")
    assert "Abandoned backfill" in run("journal", "--abandon")
    assert Backfill.objects.get().status == "abandoned"
    assert "No backfill of journal is unfinished" in run("journal", "--abandon")
    assert Delivery.objects.count() == 0


def test_a_backfill_under_live_traffic_killed_halfway_and_resumed_reaches_each_event_once(tmp_path: Path) -> None:
    """A real relay and worker run the live traffic while the backfill gives the journal the
    history; the backfill is SIGKILLed halfway and run again. Every event, of the history and of
    the live traffic, ends with exactly one journal entry."""
    history = items(150, prefix="H")
    env = {"OUTBOX_RELAY_POLL_SECONDS": "0.2", "OUTBOX_REDELIVERY_SECONDS": "2", "REDIS_URL": settings.REDIS_URL}
    with processes(tmp_path, **env) as started:
        started.worker()
        started.relay("live")
        child = started.manage("outbox_backfill", "journal", "--rate", "100", "--chunk", "10", name="backfill")
        made = 0
        deadline = time.monotonic() + 60
        while not Backfill.objects.filter(cursor__gte=history[70]).exists():
            assert child.popen.poll() is None, child.output()
            assert time.monotonic() < deadline, child.output()
            Item.objects.create(sku=f"L-{made}", name=f"L{made}", price=1)  # live traffic meanwhile
            made += 1
            time.sleep(0.02)
        child.stop(signal.SIGKILL)
        assert Backfill.objects.get().status == "running"
        for i in range(5):
            Item.objects.create(sku=f"M-{i}", name=f"M{i}", price=1)
        resumed = started.manage("outbox_backfill", "journal", "--chunk", "10", name="resume")
        assert resumed.popen.wait(timeout=60) == 0, resumed.output()
        assert "Resuming backfill" in resumed.output()
        every = list(Event.objects.order_by("id").values_list("id", flat=True))
        assert len(every) == len(history) + made + 5

        def journalled() -> bool:
            return JournalEntry.objects.count() >= len(every)

        wait_until(journalled, timeout=90, what="a journal entry for every event")
        time.sleep(1)  # a duplicate, if any, would land now
    entries = sorted(JournalEntry.objects.values_list("event_id", flat=True))
    assert entries == every
    assert Backfill.objects.get().status == "done"


def test_outbox_status_shows_an_unfinished_backfill_and_names_a_stalled_one() -> None:
    ids = items(10)
    record, _ = backfill.begin("journal", requested_by="test")
    Backfill.objects.filter(pk=record.pk).update(cursor=ids[4], created=5)
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    (shown,) = json.loads(out.getvalue())["backfills"]
    assert (shown["consumer"], shown["cursor"], shown["created"], shown["stalled"]) == ("journal", ids[4], 5, False)
    assert 0 < shown["progress"] < 1

    Backfill.objects.filter(pk=record.pk).update(beat_at=timezone.now() - timedelta(minutes=5))
    out = StringIO()
    call_command("outbox_status", stdout=out)
    text = out.getvalue()
    assert f"{record.pk} of journal: " in text
    assert "STALLED" in text
    assert f"Backfill {record.pk} of journal stopped at event {ids[4]}" in text
    assert "run `outbox_backfill journal` with its options to resume it" in text


def test_a_slow_rate_beats_while_it_waits_so_it_never_looks_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """At one event a second the throttle sleeps longer than a stalled run's silence: the run
    beats during the sleep, so no status calls it stalled and no second run takes it over."""
    items(3)
    monkeypatch.setattr(backfill, "STALE_SECONDS", 0.4)
    record, _ = backfill.begin("journal", rate=1, requested_by="test")

    def walk() -> None:
        try:
            backfill.run(record, chunk=1)
        finally:
            connection.close()

    worker = threading.Thread(target=walk)
    worker.start()
    try:
        time.sleep(1.5)  # inside the second chunk's pause
        beat = Backfill.objects.values_list("beat_at", flat=True).get()
        assert beat is not None
        assert (timezone.now() - beat).total_seconds() < 0.4
        (state,) = backfill_states(now=database_now())
        assert state.stalled is False
    finally:
        worker.join(timeout=30)
    assert Backfill.objects.get().status == "done"


def test_a_backfill_rides_out_a_broker_restart_and_loses_nothing(tmp_path: Path) -> None:
    """Redis goes away in the middle of a backfill: the backfill waits and tries again instead of
    dying, and every chunk after the restart reaches the new Redis; the deliveries of the messages
    the restart lost stay `published`, for the relay's sweeper."""
    ids = items(60)
    with private_redis(tmp_path) as server, processes(tmp_path, REDIS_URL=server.url) as started:
        child = started.manage("outbox_backfill", "journal", "--rate", "40", "--chunk", "10", name="backfill")
        wait_until(
            lambda: Backfill.objects.filter(cursor__gte=ids[10]).exists() or child.popen.poll() is not None,
            timeout=30,
            what="the backfill's second chunk",
        )
        server.stop()
        wait_until(lambda: "the broker is unreachable" in child.output(), timeout=30, what="the backfill to wait")
        assert child.popen.poll() is None, child.output()
        server.start()
        assert child.popen.wait(timeout=60) == 0, child.output()
        assert "trying again in" in child.output()
        after = Backfill.objects.get().cursor
        sent = sorted(
            i
            for raw in redis.Redis.from_url(server.url).hvals("dramatiq:journal.msgs")
            for i in json.loads(raw)["args"][0]
        )
    assert after == ids[-1]
    assert sorted(Delivery.objects.filter(consumer="journal").values_list("event_id", flat=True)) == ids
    assert sent, "nothing reached Redis after its restart"
    assert sent == ids[ids.index(sent[0]) :], "a chunk after the restart did not reach Redis"
    assert set(sent) < set(ids)  # the messages sent before the restart were lost with its data
