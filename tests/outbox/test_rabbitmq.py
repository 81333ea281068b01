"""RabbitMQ: confirmed batches, refused and unroutable publishes, a restart mid-backlog, and the
worker's screening, against the real server (the suite's virtual host, tests/brokers.py)."""

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from django.test import Client
from dramatiq import Message

from outbox.consume.publish import PublishFailed, enqueue_all
from outbox.consume.rabbitmq import NotConfirmed, OutboxRabbitmqBroker
from outbox.models import Delivery, Pending
from tests.brokers import RABBITMQ_URL, SuiteBroker, brokers, rabbitmq_channel, rabbitmq_start, rabbitmq_stop
from tests.outbox.helpers import committed_count
from tests.outbox_app.models import Item
from tests.processes import processes
from tooling.processes import free_port, wait_until

VHOST = RABBITMQ_URL.rsplit("/", 1)[1]


@pytest.fixture
def rabbitmq() -> Iterator[SuiteBroker]:
    chosen = brokers()["rabbitmq"]
    chosen.empty()
    yield chosen
    chosen.empty()


@pytest.fixture
def publisher(rabbitmq: SuiteBroker) -> Iterator[OutboxRabbitmqBroker]:
    broker = OutboxRabbitmqBroker(url=RABBITMQ_URL)
    yield broker
    broker.close()


def messages(queue: str, *batches: list[int]) -> list[Message[None]]:
    return [Message(queue_name=queue, actor_name="journal", args=(ids,), kwargs={}, options={}) for ids in batches]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def test_a_batch_is_published_once_confirmed_and_lands_whole(
    publisher: OutboxRabbitmqBroker, rabbitmq: SuiteBroker
) -> None:
    enqueue_all(messages("journal", [1, 2], [3], [4, 5, 6]), publisher)
    assert rabbitmq.queued_event_ids() == Counter(dict.fromkeys([1, 2, 3, 4, 5, 6], 1))
    # The next batch goes out on the same confirming channel.
    channel = publisher._confirmed_channel()
    enqueue_all(messages("journal", [7]), publisher)
    assert publisher._confirmed_channel() is channel
    assert channel.sent == 4
    assert rabbitmq.queued_event_ids()[7] == 1


def test_a_batch_rabbitmq_refuses_raises_and_publishes_once_it_takes_them_again(
    publisher: OutboxRabbitmqBroker, rabbitmq: SuiteBroker
) -> None:
    """A queue at its length limit with overflow `reject-publish` nacks the publish: the batch is
    not published, and says so."""
    enqueue_all(messages("journal", [1]), publisher)  # declares the queue
    rabbitmqctl(
        *("set_policy", "-p", VHOST, "--apply-to", "queues", "full-journal", "^journal$"),
        json.dumps({"max-length": 1, "overflow": "reject-publish"}),
    )
    try:
        with pytest.raises(PublishFailed) as refused:
            enqueue_all(messages("journal", [2], [3]), publisher)
        assert isinstance(refused.value.cause, NotConfirmed)
        assert "nacked" in str(refused.value), str(refused.value)
        assert refused.value.published_any  # sent, so the relay counts its claim
    finally:
        rabbitmqctl("clear_policy", "-p", VHOST, "full-journal")
    assert rabbitmq.queued_event_ids() == Counter({1: 1})
    enqueue_all(messages("journal", [2], [3]), publisher)
    assert rabbitmq.queued_event_ids() == Counter({1: 1, 2: 1, 3: 1})


def test_an_unroutable_message_fails_its_batch_and_its_queue_is_declared_again(
    publisher: OutboxRabbitmqBroker, rabbitmq: SuiteBroker
) -> None:
    """Its queue deleted behind the relay's back: RabbitMQ returns the message (it is mandatory)
    rather than dropping it; the next try declares the queue again and it lands."""
    enqueue_all(messages("journal", [1]), publisher)
    with rabbitmq_channel(RABBITMQ_URL) as channel:
        channel.queue_delete("journal")
    with pytest.raises(PublishFailed) as refused:
        enqueue_all(messages("journal", [2]), publisher)
    assert "returned" in str(refused.value), str(refused.value)
    assert rabbitmq.queued_event_ids() == Counter()
    enqueue_all(messages("journal", [2]), publisher)
    assert rabbitmq.queued_event_ids() == Counter({2: 1})


def test_a_connection_the_server_closed_while_idle_is_opened_again_at_once(
    publisher: OutboxRabbitmqBroker, rabbitmq: SuiteBroker
) -> None:
    enqueue_all(messages("journal", [1]), publisher)
    rabbitmqctl("close_all_connections", "idle relay")
    enqueue_all(messages("journal", [2]), publisher)
    assert rabbitmq.queued_event_ids() == Counter({1: 1, 2: 1})


@pytest.mark.django_db(transaction=True)
def test_a_rabbitmq_restart_mid_backlog_loses_nothing_burns_no_attempt_and_workers_reconnect(
    tmp_path: Path, rabbitmq: SuiteBroker
) -> None:
    """RabbitMQ stops while a relay and a worker work through a backlog, a backlog grows while it
    is down, and it starts again: the relay backs off without counting a claim and resumes, the
    worker reconnects by itself, and every event is journalled."""
    env = {**rabbitmq.env(), "OUTBOX_RELAY_POLL_SECONDS": "0.2", "OUTBOX_REDELIVERY_SECONDS": "300"}
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("r1", "--batch-size", "20")
        worker = procs.worker()
        Item.objects.bulk_create(Item(sku=f"R-{i}", name=f"R{i}", price=1) for i in range(200))
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").exists(),
            timeout=60,
            what="the first deliveries",
        )
        rabbitmq_stop()
        try:
            later = [Item.objects.create(sku=f"L-{i}", name=f"L{i}", price=1).pk for i in range(100)]
            wait_until(lambda: "Broker unavailable" in relay.output(), timeout=60, what="the outage to be noticed")
            wait_until(lambda: committed_count("outbox_pending") >= 100, timeout=30, what="the backlog")
            # The relay tried, and gave each claim back uncounted.
            assert set(Pending.objects.values_list("claims", flat=True)) == {0}
        finally:
            rabbitmq_start()
        wait_until(lambda: committed_count("outbox_pending") == 0, timeout=120, what="the backlog to drain")
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 300,
            timeout=120,
            what="every journal delivery, after the restart",
        )
        assert relay.stop() == 0
        assert worker.stop() == 0
    assert len(later) == 100
    assert Delivery.objects.filter(consumer="journal").exclude(status="done").count() == 0
    log = worker.output()
    journalled = {
        int(line.split("Journal entry for event ", 1)[1].split(".", 1)[0])
        for line in log.splitlines()
        if "Journal entry for event " in line
    }
    assert len(journalled) == 300
    relay_log = relay.output()
    assert relay_log.count("Broker unavailable") == 1
    assert relay_log.count("Broker available again") == 1
    assert "Republished" not in relay_log  # nothing waited for the sweeper


@pytest.mark.django_db
@pytest.mark.parametrize("reachable", [True, False])
def test_healthz_pings_rabbitmq(client: Client, reachable: bool) -> None:
    """On RabbitMQ, /healthz answers ok while RabbitMQ answers and 503 when it does not."""
    url = RABBITMQ_URL if reachable else f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?connection_attempts=1"
    kept = dramatiq.get_broker()
    checked = OutboxRabbitmqBroker(url=url)
    dramatiq.set_broker(checked)
    try:
        response = client.get("/healthz")
    finally:
        dramatiq.set_broker(kept)
        checked.close()
    if reachable:
        assert response.status_code == 200, response.content
        assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    else:
        assert response.status_code == 503
        assert response.json() == {"status": "error", "database": "ok", "broker": "error"}


def test_quorum_queues_are_declared_as_such_with_their_dead_letters_and_take_a_batch(rabbitmq: SuiteBroker) -> None:
    """OUTBOX_RABBITMQ_QUEUE_TYPE=quorum: the consumer's queue, its delay queue and its dead-letter
    queue are quorum queues, and a confirmed batch lands."""
    broker = OutboxRabbitmqBroker(url=RABBITMQ_URL, queue_type="quorum")
    names = ["quorum_probe", "quorum_probe.DQ", "quorum_probe.XQ"]
    try:
        enqueue_all(messages("quorum_probe", [1], [2]), broker)
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", VHOST, "--no-table-headers", "name", "type"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        types = dict(line.split() for line in listed.splitlines() if line.split() and line.split()[0] in names)
        assert types == dict.fromkeys(names, "quorum"), listed
        assert rabbitmq.queued_event_ids("quorum_probe") == Counter({1: 1, 2: 1})
    finally:
        with rabbitmq_channel(RABBITMQ_URL) as channel:
            for name in names:
                channel.queue_delete(name)
        broker.close()


def test_an_unknown_queue_type_is_refused_with_the_ones_it_takes() -> None:
    with pytest.raises(ValueError, match="use classic or quorum"):
        OutboxRabbitmqBroker(url=RABBITMQ_URL, queue_type="stream")


def test_a_batch_left_unconfirmed_by_a_memory_alarm_fails_at_the_deadline_and_goes_out_after_it(
    publisher: OutboxRabbitmqBroker, rabbitmq: SuiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory alarm makes RabbitMQ stop reading from publishers: the batch is not confirmed, so it
    does not count as published (the relay gives its claim back); once the alarm clears, it goes out."""
    import outbox.consume.rabbitmq as rabbitmq_module

    monkeypatch.setattr(rabbitmq_module, "CONFIRM_TIMEOUT_SECONDS", 1.0)
    enqueue_all(messages("journal", [1]), publisher)  # declares the queue, before the alarm
    rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        wait_until(lambda: "memory" in _alarms(), timeout=30, what="RabbitMQ's memory alarm")
        with pytest.raises(PublishFailed) as unconfirmed:
            enqueue_all(messages("journal", [2]), publisher)
        assert "confirmed 0 of 1 messages within 1 s" in str(unconfirmed.value), str(unconfirmed.value)
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    wait_until(lambda: "memory" not in _alarms(), timeout=30, what="the alarm to clear")
    enqueue_all(messages("journal", [2]), publisher)
    assert rabbitmq.queued_event_ids()[2] >= 1


def _alarms() -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", "eval", "rabbit_alarm:get_alarms()."], capture_output=True, text=True, timeout=60
    ).stdout
