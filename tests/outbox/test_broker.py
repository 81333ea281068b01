"""The Redis broker wakes an idle consumer when a message is enqueued, instead of at its next poll."""

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis
from django.conf import settings
from django.test.utils import override_settings
from dramatiq import Message
from dramatiq.common import current_millis

from outbox.consume.broker import WakingRedisBroker, wake_key
from outbox.consume.worker import WorkerHeartbeat

REDIS_URL = settings.REDIS_URL
IDLE_TIMEOUT_MS = 30_000


def _take(value: object) -> None:
    """The test actor; only its name and signature matter."""


@pytest.fixture
def broker() -> WakingRedisBroker:
    redis.Redis.from_url(REDIS_URL).flushdb()
    broker = WakingRedisBroker(url=REDIS_URL)
    # The consumer hands on only messages for an actor the broker knows (the others it drops).
    dramatiq.actor(actor_name="a", queue_name="wake_test", broker=broker)(_take)
    return broker


def test_idle_consumer_wakes_on_enqueue_not_at_the_end_of_its_poll(broker: WakingRedisBroker) -> None:
    """A consumer in a 30 s idle wait returns the new message as soon as it is enqueued."""
    consumer = broker.consume("wake_test", prefetch=1, timeout=IDLE_TIMEOUT_MS)
    consumer.misses = 32  # type: ignore[attr-defined]  # long idle: its next wait is the whole 30 s timeout
    received: list[Any] = []
    waiting = threading.Thread(target=lambda: received.append(next(consumer)))
    waiting.start()
    waiting.join(timeout=0.5)
    assert waiting.is_alive(), "the consumer should be waiting on an empty queue"
    broker.enqueue(Message(queue_name="wake_test", actor_name="a", args=(1,), kwargs={}, options={}))
    waiting.join(timeout=10)  # a third of the idle wait: only a wake-up ends it this soon
    assert not waiting.is_alive()
    assert received[0] is not None
    assert list(received[0].args) == [1]
    consumer.close()


def test_wake_tokens_are_bounded(broker: WakingRedisBroker) -> None:
    """Enqueueing with nobody waiting leaves at most 64 tokens behind."""
    for i in range(100):
        broker.enqueue(Message(queue_name="wake_test", actor_name="a", args=(i,), kwargs={}, options={}))
    assert redis.Redis.from_url(REDIS_URL).llen(wake_key(broker.namespace, "wake_test")) == 64


def test_enqueue_after_redis_forgot_its_scripts(broker: WakingRedisBroker) -> None:
    """After SCRIPT FLUSH (as after a Redis restart) a message is still enqueued once, and wakes."""
    client = redis.Redis.from_url(REDIS_URL)
    broker.enqueue(Message(queue_name="wake_test", actor_name="a", args=(1,), kwargs={}, options={}))
    client.script_flush()
    broker.enqueue(Message(queue_name="wake_test", actor_name="a", args=(2,), kwargs={}, options={}))
    assert client.hlen(f"{broker.namespace}:wake_test.msgs") == 2
    assert client.llen(wake_key(broker.namespace, "wake_test")) == 2


def test_the_worker_heartbeat_beats_from_its_own_thread_while_nothing_fetches() -> None:
    """Dramatiq records a worker's heartbeat only when a consumer fetches; the middleware's thread
    records it every OUTBOX_WORKER_HEARTBEAT_SECONDS whatever the consumers do, and stops at shutdown."""
    broker = WakingRedisBroker(url=settings.REDIS_URL)
    key = f"{broker.namespace}:__heartbeats__"
    beat = WorkerHeartbeat()
    with override_settings(OUTBOX_WORKER_HEARTBEAT_SECONDS=0.2):
        beat.after_worker_boot(broker, worker=None)
        try:
            first = broker.client.zscore(key, broker.broker_id)
            assert first is not None
            time.sleep(1.0)
            later = broker.client.zscore(key, broker.broker_id)
            assert later is not None
            assert later - first >= 600  # beaten several times in a second, by nothing but the thread
        finally:
            beat.before_worker_shutdown(broker, worker=None)
    time.sleep(0.5)
    stopped = broker.client.zscore(key, broker.broker_id)
    time.sleep(0.5)
    assert broker.client.zscore(key, broker.broker_id) == stopped
    broker.client.zrem(key, broker.broker_id)


def test_requeue_dead_gives_a_dead_workers_messages_back_and_leaves_a_live_ones(empty_queues: None) -> None:
    """Two workers' fetched, unacknowledged messages: the one whose heartbeat is stale gets its
    message back on the queue; the live one keeps its own."""
    relay = WakingRedisBroker(url=settings.REDIS_URL, heartbeat_timeout=2000)
    dead = WakingRedisBroker(url=settings.REDIS_URL, heartbeat_timeout=2000)
    live = WakingRedisBroker(url=settings.REDIS_URL, heartbeat_timeout=2000)
    for broker in (relay, dead, live):
        broker.declare_queue("requeue_probe")
    for n in (1, 2):
        relay.enqueue(Message(queue_name="requeue_probe", actor_name="x", args=([n],), kwargs={}, options={}))
    assert len(dead.do_fetch("requeue_probe", 1)) == 1
    assert len(live.do_fetch("requeue_probe", 1)) == 1
    key = f"{relay.namespace}:__heartbeats__"
    now = current_millis()
    relay.client.zadd(key, {dead.broker_id: now - 10_000, live.broker_id: now})
    relay.requeue_dead()
    waiting = relay.client.lrange("dramatiq:requeue_probe", 0, -1)
    assert len(waiting) == 1  # the dead worker's, back on the queue
    assert relay.client.scard(f"dramatiq:__acks__.{live.broker_id}.requeue_probe") == 1
    assert relay.client.scard(f"dramatiq:__acks__.{dead.broker_id}.requeue_probe") == 0
    assert relay.client.llen(wake_key("dramatiq", "requeue_probe")) >= 1  # an idle consumer is woken
