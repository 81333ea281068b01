"""The brokers the process tests run on: the suite's Redis database and its RabbitMQ virtual host.

A test that takes the `broker` fixture runs once on each (tests/conftest.py); its processes get
`broker.env()` and it reads what waits on a queue with `broker.queued_event_ids()`.
"""

import json
import os
import subprocess
from collections import Counter
from contextlib import suppress
from typing import Any
from uuid import uuid4

import dramatiq
import pika
import pika.exceptions
import redis
from django.conf import settings
from dramatiq import Message
from dramatiq.common import xq_name

from tooling.brokers import ToolBroker, consumer_queues
from tooling.processes import wait_until

# The suite's RabbitMQ virtual host (scripts/services.sh creates it); TEST_RABBITMQ_URL overrides it.
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/outbox_test")


class SuiteBroker(ToolBroker):
    """A broker of the suite: the tools' (env(), empty()), and what tests read and forge on it."""

    def queued_event_ids(self, queue: str = "journal") -> Counter[int]:
        """Count, per event id, the messages waiting on a consumer's queue (not yet taken by a worker)."""
        counts: Counter[int] = Counter()
        for body in self.queued(queue):
            counts.update(json.loads(body)["args"][0])
        return counts

    def queued(self, queue: str) -> list[bytes]:
        """The bodies of the messages waiting on a queue; they stay there."""
        if self.kind == "redis":
            values = redis.Redis.from_url(self.url).hvals(f"dramatiq:{queue}.msgs")
            return [v.encode() if isinstance(v, str) else v for v in values]
        bodies: list[bytes] = []
        with rabbitmq_channel(self.url) as channel:
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return []  # not declared yet: nothing waits
            for _ in range(100_000):
                method, _properties, body = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                bodies.append(body)
            # Closing the channel unacknowledged gives every message back to the queue.
        return bodies

    def waiting(self, queue: str) -> int:
        """How many messages of the queue no worker has finished: on Redis every message it holds
        (acknowledged ones are deleted), on RabbitMQ the ones ready for a consumer."""
        if self.kind == "redis":
            return int(redis.Redis.from_url(self.url).hlen(f"dramatiq:{queue}.msgs"))
        with rabbitmq_channel(self.url) as channel:
            try:
                return int(channel.queue_declare(queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                return 0

    def enqueue(self, *messages: "Message[Any]") -> None:
        """Publish messages as a relay would, from this process."""
        if self.kind == "redis":
            for message in messages:
                dramatiq.get_broker().enqueue(message)
            return
        from outbox.consume.rabbitmq import OutboxRabbitmqBroker

        publisher = OutboxRabbitmqBroker(url=self.url)
        try:
            publisher.enqueue_many(list(messages))
        finally:
            publisher.close()

    def push_raw(self, queue: str, data: bytes) -> None:
        """Put `data` on the queue as it stands, bypassing Dramatiq's encoder (a forged message)."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            message_id = str(uuid4())
            client.hset(f"dramatiq:{queue}.msgs", message_id, data)
            client.rpush(f"dramatiq:{queue}", message_id)
            return
        from outbox.consume.rabbitmq import OutboxRabbitmqBroker

        declaring = OutboxRabbitmqBroker(url=self.url)
        try:
            declaring.declare_queue(queue, ensure=True)
        finally:
            declaring.close()
        with rabbitmq_channel(self.url) as channel:
            channel.basic_publish(exchange="", routing_key=queue, body=data)

    def dead_letters(self, queue: str) -> int:
        """How many messages wait in the queue's dead letters (Dramatiq's XQ)."""
        if self.kind == "redis":
            return int(redis.Redis.from_url(self.url).zcard(f"dramatiq:{xq_name(queue)}"))
        return len(self.queued(xq_name(queue)))

    def unacknowledged(self, queue: str) -> int:
        """How many messages of the queue a consumer took and has not acknowledged (none are on
        RabbitMQ once every consumer is gone: it gives them back)."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            return sum(client.scard(key) for key in client.scan_iter(f"dramatiq:__acks__.*.{queue}"))
        return 0

    def lose_messages(self) -> None:
        """Drop what the broker holds, as a restart without persistence would."""
        if self.kind == "redis":
            redis.Redis.from_url(self.url).flushdb()
            return
        with rabbitmq_channel(self.url) as channel:
            for name in sorted(consumer_queues()):
                with suppress(pika.exceptions.ChannelClosedByBroker):
                    channel.queue_purge(name)


class rabbitmq_channel:
    """A channel on a connection of its own, closed at the end of the block (a closed channel is reopened)."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()

    def __enter__(self) -> "_ReopeningChannel":
        return _ReopeningChannel(self)

    def __exit__(self, *exc: object) -> None:
        with suppress(pika.exceptions.AMQPError):
            self.connection.close()


class _ReopeningChannel:
    """A channel that opens again after the broker closed it for an error (a queue not found)."""

    def __init__(self, owner: rabbitmq_channel) -> None:
        self.owner = owner

    def __getattr__(self, name: str) -> Any:
        if self.owner.channel.is_closed:
            self.owner.channel = self.owner.connection.channel()
        return getattr(self.owner.channel, name)


def rabbitmq_running() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def rabbitmq_stop() -> None:
    """Stop the RabbitMQ application on this machine (its durable queues and persistent messages kept)."""
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=120)
    wait_until(lambda: not rabbitmq_running(), timeout=30, what="RabbitMQ to stop")


def rabbitmq_start() -> None:
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)
    wait_until(rabbitmq_running, timeout=60, what="RabbitMQ to accept connections again")


def brokers() -> dict[str, SuiteBroker]:
    return {"redis": SuiteBroker("redis", settings.REDIS_URL), "rabbitmq": SuiteBroker("rabbitmq", RABBITMQ_URL)}
