"""The Redis broker wakes an idle consumer when a message is enqueued, instead of at its next poll."""

import threading
from typing import Any

import dramatiq
import pytest
import redis
from django.conf import settings
from dramatiq import Message

from outbox.consume.broker import WakingRedisBroker, wake_key

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
