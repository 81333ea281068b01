"""The relay, as real processes against PostgreSQL and each broker (invariants 2, 4 and 5)."""

import itertools
import json
import signal
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from outbox.emit.writer import events_flush
from outbox.models import Delivery, Pending
from outbox.relay.routing import consumers_for
from tests.brokers import SuiteBroker
from tests.outbox.helpers import committed_count, conninfo, lock_waiters, lock_waiters_terminate
from tests.outbox_app.models import Item
from tests.processes import Process, Processes, private_redis, processes
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# The suite's own Redis database (settings.test; REDIS_URL overrides it).
REDIS_DB_URL = settings.REDIS_URL
FAST = {"OUTBOX_RELAY_POLL_SECONDS": "0.2"}


@pytest.fixture(autouse=True)
def empty_queues() -> None:
    redis.Redis.from_url(REDIS_DB_URL).flushdb()


SKUS = itertools.count()  # unique within the run, however often make_events() is called


def make_events(n: int) -> list[int]:
    """Commit `n` new items (an item.created event each); return their event ids."""
    for i in range(n):
        Item.objects.create(sku=f"C{next(SKUS)}", name=f"C{i}", price=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM outbox_event ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def queued_event_ids(url: str = REDIS_DB_URL, queue: str = "journal") -> Counter[int]:
    """Count, per event id, the messages waiting in a Dramatiq Redis queue (the journal's)."""
    client = redis.Redis.from_url(url)
    counts: Counter[int] = Counter()
    for raw in client.hvals(f"dramatiq:{queue}.msgs"):
        message = json.loads(raw)
        assert message["actor_name"] == "journal"
        counts.update(message["args"][0])
    return counts


def journal_lines(log: str, event_id: int) -> int:
    """Count the journal consumer's lines for the event in a worker's output."""
    return log.count(f"Journal entry for event {event_id}.")


def test_relay_publishes_every_committed_event_once_and_records_it(tmp_path: Path, broker: SuiteBroker) -> None:
    """`outbox_relay --once` empties the backlog: one message per event and consumer, deliveries recorded."""
    ids = make_events(30)
    with processes(tmp_path, **FAST, **broker.env()) as procs:
        relay = procs.relay("r1", "--once", "--batch-size", "7")
        assert relay.popen.wait(timeout=60) == 0, relay.output()
    assert "Relayed 30 events in 5 batches." in relay.output()
    assert committed_count("outbox_pending") == 0
    assert broker.queued_event_ids() == Counter(dict.fromkeys(ids, 1))
    routed = consumers_for("item.created")
    assert {"journal", "outbox_seal"} <= set(routed)
    rows = list(Delivery.objects.values_list("event_id", "consumer", "status", "publications"))
    assert sorted(rows) == sorted((i, consumer, "published", 1) for i in ids for consumer in routed)


def test_four_relays_share_one_backlog_without_duplicates(tmp_path: Path, broker: SuiteBroker) -> None:
    """Four relays woken by one commit of 3000 events drain it together: each event published
    once, and every relay did a share."""
    with processes(tmp_path, **FAST, **broker.env()) as procs:
        relays = [procs.relay(f"r{n}", "--batch-size", "10") for n in range(4)]
        wait_until(lambda: all("started" in r.output() for r in relays), timeout=60, what="the relays to start")
        Item.objects.bulk_create(Item(sku=f"BULK-{i}", name=f"C{i}", price=1) for i in range(3000))
        wait_until(lambda: committed_count("outbox_pending") == 0, timeout=120, what="the backlog to drain")
        codes = [r.stop(signal.SIGTERM) for r in relays]
    assert codes == [0, 0, 0, 0], [r.output()[-2000:] for r in relays]
    counts = [int(r.output().rsplit("Relayed ", 1)[1].split(" ")[0]) for r in relays]
    assert sum(counts) == 3000
    assert min(counts) > 0, counts
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM outbox_event")
        ids = [row[0] for row in cursor.fetchall()]
    assert broker.queued_event_ids() == Counter(dict.fromkeys(ids, 1))
    assert set(Delivery.objects.values_list("publications", flat=True)) == {1}


def test_event_committed_late_with_a_lower_id_is_still_published(tmp_path: Path) -> None:
    """A transaction that took its event id first but commits last is not skipped."""
    holding = threading.Event()
    release = threading.Event()
    low_id: list[int] = []

    def slow_transaction() -> None:
        try:
            with transaction.atomic():
                Item.objects.create(sku="SLOW-1", name="Slow", price=1)
                events_flush()  # the event row, and its id, exist now; the commit comes later
                with connection.cursor() as cursor:
                    cursor.execute("SELECT max(id) FROM outbox_event")
                    low_id.append(cursor.fetchone()[0])
                holding.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_transaction)
    thread.start()
    assert holding.wait(timeout=30)
    later = make_events(5)
    with processes(tmp_path, **FAST) as procs:
        relay = procs.relay("r1")
        wait_until(lambda: len(queued_event_ids()) == 5, timeout=60, what="the later events")
        release.set()
        thread.join(timeout=30)
        wait_until(lambda: low_id[0] in queued_event_ids(), timeout=60, what="the late low-id event")
        assert relay.stop() == 0
    assert low_id[0] < min(later)
    assert queued_event_ids() == Counter(dict.fromkeys([low_id[0], *later], 1))


def test_relay_killed_after_publishing_before_marking_loses_nothing(tmp_path: Path, broker: SuiteBroker) -> None:
    """SIGKILL between publish and mark: the lease runs out, another relay publishes again, and
    the delivery records that it was published twice."""
    ids = make_events(10)
    env = {**FAST, **broker.env(), "OUTBOX_RELAY_LEASE_SECONDS": "2"}
    with psycopg.connect(conninfo()) as blocker, processes(tmp_path, **env) as procs:
        # Hold the delivery table so that the relay's mark step waits after it has published.
        blocker.execute("LOCK TABLE outbox_delivery IN EXCLUSIVE MODE")
        first = procs.relay("first", "--batch-size", "100")
        wait_until(lambda: len(broker.queued_event_ids()) == 10, timeout=60, what="the first publication")
        first.stop(signal.SIGKILL)
        with psycopg.connect(conninfo(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                ["outbox_relay first%"],
            )
        blocker.rollback()
        second = procs.relay("second")
        wait_until(lambda: committed_count("outbox_pending") == 0, timeout=60, what="the second relay")
        assert second.stop() == 0
    assert broker.queued_event_ids() == Counter(dict.fromkeys(ids, 2))
    assert sorted(Delivery.objects.filter(consumer="journal").values_list("event_id", "publications")) == [
        (i, 2) for i in ids
    ]


def test_relay_killed_before_publishing_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL while the broker holds the publish: the claim lapses and another relay publishes."""
    ids = make_events(10)
    env = {**FAST, "OUTBOX_RELAY_LEASE_SECONDS": "2"}
    client = redis.Redis.from_url(REDIS_DB_URL)
    with processes(tmp_path, **env) as procs:
        client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            first = procs.relay("first", "--batch-size", "100")
            wait_until(lambda: Pending.objects.filter(claimed_by="first").count() == 10, timeout=60, what="the claim")
            first.stop(signal.SIGKILL)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
        assert queued_event_ids() == Counter()
        second = procs.relay("second")
        wait_until(lambda: committed_count("outbox_pending") == 0, timeout=60, what="the second relay")
        assert second.stop() == 0
    assert queued_event_ids() == Counter(dict.fromkeys(ids, 1))
    # Two claims: the delivery says it may have gone out twice, though it went out once.
    assert set(Delivery.objects.values_list("publications", flat=True)) == {2}


def test_redis_outage_burns_no_attempt_and_the_backlog_drains(tmp_path: Path) -> None:
    """With Redis down the relay backs off, logs once, counts no claim; when it returns, all drain."""
    with (
        private_redis(tmp_path) as redis_server,
        processes(tmp_path, OUTBOX_RELAY_POLL_SECONDS="0.2", REDIS_URL=redis_server.url) as procs,
    ):
        redis_server.stop()
        ids = make_events(50)
        relay = procs.relay("r1", "--batch-size", "10")
        wait_until(lambda: "Broker unavailable" in relay.output(), timeout=60, what="the outage to be noticed")
        assert committed_count("outbox_pending") == 50
        assert set(Pending.objects.values_list("claims", flat=True)) == {0}
        redis_server.start()
        wait_until(lambda: committed_count("outbox_pending") == 0, timeout=60, what="the backlog to drain")
        assert relay.stop() == 0
        log = relay.output()
        assert log.count("Broker unavailable") == 1
        assert log.count("Broker available again") == 1
        assert queued_event_ids(redis_server.url) == Counter(dict.fromkeys(ids, 1))
    assert set(Delivery.objects.values_list("publications", flat=True)) == {1}


def test_sweeper_republishes_a_lost_delivery_and_the_worker_applies_it_once(
    tmp_path: Path, broker: SuiteBroker
) -> None:
    """A published message that vanished (the broker lost it) is published again after the deadline;
    a real worker then applies it exactly once."""
    ids = make_events(5)
    env = {**FAST, **broker.env(), "OUTBOX_REDELIVERY_SECONDS": "2"}
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("r1")
        wait_until(lambda: len(broker.queued_event_ids()) == 5, timeout=60, what="the publication")
        broker.lose_messages()  # as if the broker restarted without persistence
        wait_until(lambda: len(broker.queued_event_ids()) == 5, timeout=60, what="the sweeper's republication")
        worker = procs.worker()
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 5,
            timeout=90,
            what="the worker to finish",
        )
        assert relay.stop() == 0
        assert worker.stop() == 0
        log = worker.output()
    # Every routed consumer's delivery of the five events, in one sweep.
    assert f"Republished {5 * len(consumers_for('item.created'))} deliveries" in relay.output()
    # Each records when the worker started it: the commit-to-consumer latency.
    assert Delivery.objects.filter(consumer="journal", status="done", started_at__isnull=False).count() == 5
    for event_id in ids:
        assert journal_lines(log, event_id) == 1, f"journal line for event {event_id}"
    assert all(p >= 2 for p in Delivery.objects.values_list("publications", flat=True))


def test_sweeper_marks_dead_a_delivery_whose_consumer_no_longer_exists(tmp_path: Path) -> None:
    """An overdue delivery to a consumer that was removed is marked dead with the reason; the relay
    keeps running."""
    ids = make_events(1)
    Delivery.objects.create(
        event_id=ids[0], consumer="retired_consumer", status="published", publications=1, published_at=timezone.now()
    )
    Pending.objects.all().delete()
    env = {**FAST, "OUTBOX_REDELIVERY_SECONDS": "1"}
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("r1")
        wait_until(
            lambda: Delivery.objects.filter(consumer="retired_consumer", status="dead").exists(),
            timeout=60,
            what="the orphan delivery to be marked dead",
        )
        assert relay.stop() == 0
    delivery = Delivery.objects.get(consumer="retired_consumer")
    assert "retired_consumer is no longer defined" in delivery.last_error
    assert "Marking 1 deliveries dead" in relay.output()


def test_sweeper_republishes_a_failed_delivery_whose_retry_never_came(tmp_path: Path) -> None:
    """A delivery left `failed` (its delayed retry was in Redis when Redis lost it) is published
    again after the deadline, and a worker then applies it."""
    ids = make_events(2)
    Pending.objects.all().delete()
    stale = timezone.now() - timedelta(seconds=30)
    for event_id in ids:
        Delivery.objects.create(
            event_id=event_id,
            consumer="journal",
            status="failed",
            publications=1,
            attempts=1,
            last_error="boom",
            published_at=stale,
            updated_at=stale,
        )
    env = {**FAST, "OUTBOX_REDELIVERY_SECONDS": "2"}
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("r1")
        worker = procs.worker()
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 2,
            timeout=60,
            what="the retry",
        )
        assert relay.stop() == 0
        assert worker.stop() == 0
    assert "Republished 2 deliveries" in relay.output()
    assert set(Delivery.objects.values_list("publications", "attempts")) == {(2, 2)}


def published_then_held(procs: Processes, blocker: psycopg.Connection[Any]) -> Process:
    """Start a relay, wait until the three events' journal deliveries are published, then hold the
    delivery table on `blocker`: an actor then blocks where it would record its delivery done.
    Return the relay."""
    relay = procs.relay("r1")
    wait_until(
        lambda: Delivery.objects.filter(consumer="journal", status="published").count() == 3,
        timeout=60,
        what="publication",
    )
    blocker.execute("LOCK TABLE outbox_delivery IN EXCLUSIVE MODE")
    return relay


def test_a_worker_killed_mid_actor_leaves_its_messages_to_another_worker_before_any_redelivery(
    tmp_path: Path, broker: SuiteBroker
) -> None:
    """A worker SIGKILLed inside the actor, its messages unacknowledged: RabbitMQ gives them back
    as the connection drops; on Redis a relay gives them back once the dead worker's heartbeat is
    stale. Another worker applies each exactly once, and the sweeper's deadline (five minutes
    here) never comes into it."""
    ids = make_events(3)
    env = {**FAST, **broker.env(), "OUTBOX_REDELIVERY_SECONDS": "300"}
    with psycopg.connect(conninfo()) as blocker, processes(tmp_path, **env) as procs:
        relay = published_then_held(procs, blocker)
        doomed = procs.worker("doomed")
        wait_until(lambda: lock_waiters("%started_at%"), timeout=60, what="the actor to start and block")
        doomed.kill_group()
        lock_waiters_terminate("%started_at%")
        blocker.rollback()
        survivor = procs.worker("survivor")
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 3,
            timeout=90,
            what="redelivery",
        )
        assert relay.stop() == 0
        assert survivor.stop() == 0
    assert "Republished" not in relay.output()
    for event_id in ids:
        assert journal_lines(survivor.output(), event_id) == 1, f"journal line for event {event_id}"
        assert journal_lines(doomed.output(), event_id) == 0
    # Published once: the broker gave the message to the survivor.
    assert set(Delivery.objects.filter(consumer="journal").values_list("publications", flat=True)) == {1}


def test_a_busy_worker_keeps_its_messages_while_another_waits(tmp_path: Path, broker: SuiteBroker) -> None:
    """A worker inside a long handler is alive, so its messages are not given to the idle worker
    beside it, however long past the stale figure (2 s here) the handler takes."""
    make_events(3)
    env = {**FAST, **broker.env(), "OUTBOX_REDELIVERY_SECONDS": "300", "OUTBOX_WORKER_STALE_SECONDS": "2"}

    def blocked_backends() -> int:
        return lock_waiters("%started_at%")

    with psycopg.connect(conninfo()) as blocker, processes(tmp_path, **env) as procs:
        relay = published_then_held(procs, blocker)
        busy = procs.worker("busy")
        wait_until(blocked_backends, timeout=60, what="the busy worker's actor to start and block")
        threading.Event().wait(1)
        held = blocked_backends()  # one per thread of the busy worker that took a message; it took them all
        idle = procs.worker("idle")
        wait_until(lambda: "Worker process is ready" in idle.output(), timeout=60, what="the idle worker to start")
        # Well past the stale figure, with the relays requeueing dead workers' messages every second.
        for _ in range(6):
            threading.Event().wait(1)
            assert blocked_backends() == held, "the busy worker's messages went to the idle worker"
        blocker.rollback()
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 3,
            timeout=60,
            what="the busy worker to finish",
        )
        assert relay.stop() == 0
        assert busy.stop() == 0
        assert idle.stop() == 0
    assert "Journal entry for event" not in idle.output()


def sealer_messages() -> list[list[int]]:
    """The event ids of each message waiting on the outbox's sealer queue."""
    raw = redis.Redis.from_url(REDIS_DB_URL).hvals("dramatiq:outbox_seal.msgs")
    return sorted(sorted(json.loads(m)["args"][0]) for m in raw)


def test_the_sealers_messages_are_held_and_sent_together_while_other_consumers_get_theirs_at_once() -> None:
    """The sealer declares `coalesce`: the relay sends it one message for the events of several
    batches, after its wait, while the journal gets a message per batch at once; `--once` sends
    what it holds before it returns."""
    from outbox.eventlog.sealer import COALESCE_SECONDS
    from outbox.relay.loop import Relay
    from outbox.relay.routing import load_actors

    load_actors()
    relay = Relay(name="coalescing", batch_size=3, poll=0.05)
    ids = make_events(3)
    assert relay.relay_batch() == 3
    more = make_events(3)[3:]  # make_events() returns every event's id
    assert relay.relay_batch() == 3
    relay.flush_held()
    assert len(queued_event_ids()) == 6  # the journal's: at once, two messages
    assert sealer_messages() == []  # held, its deliveries recorded published
    assert set(Delivery.objects.filter(consumer="outbox_seal").values_list("status", flat=True)) == {"published"}

    def flushed() -> bool:
        relay.flush_held()
        return sealer_messages() != []

    wait_until(flushed, timeout=COALESCE_SECONDS * 10, what="the held messages to go out")
    assert sealer_messages() == [sorted(ids + more)]  # one message for both batches

    # --once: everything it held is sent when the backlog is empty.
    last = make_events(3)[6:]
    stats = Relay(name="once", batch_size=2, poll=0.05).run(once=True)
    assert stats.published == 3
    assert sealer_messages() == sorted([sorted(ids + more), sorted(last)])
