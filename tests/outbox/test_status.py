"""`outbox_status` and the relay heartbeats it reports, on real PostgreSQL (and real relay processes)."""

import json
import signal
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from outbox.emit.writer import events_flush
from outbox.models import Delivery, Event, Pending, RelayHeartbeat
from outbox.ops.status import delivery_counts
from tests.outbox.helpers import conninfo
from tests.outbox_app.models import Item
from tests.processes import processes
from tooling.processes import wait_until

# The relays here publish to Redis: empty it around each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("empty_queues")


def make_events(n: int) -> list[int]:
    """Write `n` new items' events (flushed, in the test's transaction); return their ids."""
    for i in range(n):
        Item.objects.create(sku=f"STATUS-{i}", name=f"C{i}", price=1)
    events_flush()
    return list(Event.objects.order_by("id").values_list("id", flat=True))


def status_json(*args: str) -> dict:
    out = StringIO()
    call_command("outbox_status", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def deliver(event_ids: list[int], consumer: str, status: str) -> None:
    now = timezone.now()
    for event_id in event_ids:
        Delivery.objects.create(
            event_id=event_id, consumer=consumer, status=status, publications=1, published_at=now, updated_at=now
        )


@pytest.mark.django_db
def test_status_reports_backlog_oldest_pending_and_unsettled_deliveries_per_consumer() -> None:
    """Three unpublished events, and deliveries in every status: the JSON says how many of each, per consumer."""
    ids = make_events(9)
    events_ids = ids[:6]  # published below; the other three stay in the backlog
    Pending.objects.filter(event_id__in=events_ids).delete()
    deliver(events_ids[:2], "stocktake", "done")
    deliver(events_ids[2:3], "stocktake", "dead")
    deliver(events_ids[3:5], "courier", "failed")
    deliver(events_ids[5:], "courier", "published")
    deliver(events_ids[:1], "journal", "dead")

    status = status_json()

    assert status["backlog"] == 3
    assert status["oldest_pending_age_seconds"] >= 0
    assert status["deliveries"] == {
        "courier": {"published": 1, "waiting": 0, "failed": 2, "dead": 0},
        "journal": {"published": 0, "waiting": 0, "failed": 0, "dead": 1},
        "stocktake": {"published": 0, "waiting": 0, "failed": 0, "dead": 1},
    }
    assert (status["dead"], status["failed"], status["published"]) == (2, 2, 1)
    assert any("2 dead deliveries (journal 1, stocktake 1)" in note for note in status["attention"])


@pytest.mark.django_db
def test_done_deliveries_are_estimated_from_the_planner_not_counted() -> None:
    """After ANALYZE, the done figure is the table's row estimate less the unsettled deliveries."""
    ids = make_events(5)
    deliver(ids[:4], "stocktake", "done")
    deliver(ids[4:], "stocktake", "dead")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_delivery")

    assert status_json()["done_estimate"] == 4


@pytest.mark.django_db
def test_empty_outbox_with_no_relay_says_to_start_one() -> None:
    """No backlog, no relay: the text output says so, and --check exits 1."""
    out = StringIO()
    call_command("outbox_status", stdout=out)
    text = out.getvalue()
    assert "Backlog: 0 events waiting" in text
    assert "No relay is running: start `python manage.py outbox_relay`." in text
    with pytest.raises(CommandError) as raised:
        call_command("outbox_status", "--check", stdout=StringIO())
    assert raised.value.returncode == 1


@pytest.mark.django_db
def test_unsettled_counts_read_only_the_partial_indexes() -> None:
    """The delivery counts are planned on the partial indexes: their cost follows the unsettled rows,
    not the history of done ones (checked with sequential scans priced out)."""
    with CaptureQueriesContext(connection) as queries:
        delivery_counts()
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in queries.captured_queries:
            cursor.execute("EXPLAIN " + query["sql"])
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    assert len(plans) == 3
    assert "outbox_delivery_inflight_idx" in plans[0], plans[0]
    assert "outbox_delivery_waiting_idx" in plans[1], plans[1]
    # Either partial index over failed and dead deliveries serves it (the event log has one too).
    assert any(name in plans[2] for name in ("outbox_delivery_unsettled_idx", "outbox_delivery_failed_event_idx"))
    assert not any("Seq Scan" in plan for plan in plans), plans


@pytest.mark.django_db(transaction=True)
def test_relay_heartbeat_is_reported_then_flagged_stale_when_the_relay_is_killed(tmp_path: Path) -> None:
    """A running relay beats; status shows its name, host, pid and events relayed. Killed, it goes
    stale and needs attention; --forget-stale removes it."""
    make_events(4)
    env = {"OUTBOX_RELAY_POLL_SECONDS": "0.2", "OUTBOX_HEARTBEAT_SECONDS": "0.3"}
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("beating")
        wait_until(
            lambda: RelayHeartbeat.objects.filter(name="beating", events_relayed=4).exists(),
            timeout=60,
            what="a heartbeat counting the 4 relayed events",
        )
        status = status_json()
        [reported] = status["relays"]
        assert reported["name"] == "beating"
        assert reported["pid"] == relay.popen.pid
        assert reported["events_relayed"] == 4
        assert reported["stale"] is False
        assert not any("relay" in note.lower() for note in status["attention"]), status["attention"]
        relay.stop(signal.SIGKILL)

    with override_settings(OUTBOX_HEARTBEAT_STALE_SECONDS=1):
        wait_until(lambda: status_json()["relays"][0]["stale"], timeout=30, what="the heartbeat to go stale")
        status = status_json()
        assert any("Relay beating on" in note and "stuck or dead" in note for note in status["attention"])
        err = StringIO()
        call_command("outbox_status", "--json", "--forget-stale", stdout=StringIO(), stderr=err)
    assert "Forgot stale relay beating." in err.getvalue()
    assert not RelayHeartbeat.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_relay_stopped_cleanly_removes_its_heartbeat(tmp_path: Path) -> None:
    """SIGTERM: the relay finishes and deletes its row, so it is neither live nor stale."""
    with processes(tmp_path, OUTBOX_RELAY_POLL_SECONDS="0.2", OUTBOX_HEARTBEAT_SECONDS="0.3") as procs:
        relay = procs.relay("clean")
        wait_until(lambda: RelayHeartbeat.objects.filter(name="clean").exists(), timeout=60, what="a heartbeat")
        assert relay.stop() == 0
    assert not RelayHeartbeat.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_heartbeat_resumes_after_the_relay_loses_its_database_connection(tmp_path: Path) -> None:
    """The relay's session is killed under it: it logs the outage, reconnects, and beats again."""
    with processes(tmp_path, OUTBOX_RELAY_POLL_SECONDS="0.2", OUTBOX_HEARTBEAT_SECONDS="0.3") as procs:
        relay = procs.relay("survivor")
        wait_until(lambda: RelayHeartbeat.objects.filter(name="survivor").exists(), timeout=60, what="a heartbeat")
        with psycopg.connect(conninfo(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                ["outbox_relay survivor%"],
            )
            killed_at = admin.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        wait_until(
            lambda: RelayHeartbeat.objects.filter(name="survivor", beat_at__gt=killed_at).exists(),
            timeout=60,
            what="a beat after the outage",
        )
        assert relay.stop() == 0
    assert "Database unavailable" in relay.output()
    assert "Database available again" in relay.output()
