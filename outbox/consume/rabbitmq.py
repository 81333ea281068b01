"""Dramatiq's RabbitMQ broker, with publisher confirms per batch and the consumers' screening.

Publishing (`enqueue_many`, the relay's path): every message of a batch goes out on one channel
in confirm mode, marked persistent and mandatory, and the batch counts as published only once
RabbitMQ confirmed every one of them. A message nacked, returned as unroutable (its queue is
gone), or still unconfirmed at the deadline raises `NotConfirmed`, and the caller publishes the
batch again (consumers are idempotent). The confirms are awaited together, one wait per batch:
pika's BlockingChannel waits for each message's confirm before it sends the next, so the batch is
published on the channel's underlying pika channel, which takes a confirm callback.

Consuming: RabbitMQ pushes messages to the workers (basic.consume, with Dramatiq's prefetch);
nothing polls. A worker that dies leaves its unacknowledged messages to RabbitMQ, which gives
them to another worker at once. What no actor can run (outbox/consume/broker.py's Screening) is
rejected into the queue's dead-letter queue, counted and logged, as on Redis.

Queues are durable; OUTBOX_RABBITMQ_QUEUE_TYPE=quorum declares them as quorum queues (replicated
across a cluster's nodes) instead of classic ones.
"""

import logging
import threading
from typing import Any

import pika
import pika.exceptions
import pika.spec
from dramatiq import Message
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import q_name, xq_name
from dramatiq.errors import ConnectionClosed
from pika.adapters.blocking_connection import _IoloopTimerContext

from outbox.consume.broker import Screening

logger = logging.getLogger(__name__)

# How long a batch waits for RabbitMQ's confirms before it counts as not published.
CONFIRM_TIMEOUT_SECONDS = 10.0

# How long a connection RabbitMQ blocked (a resource alarm) is kept before pika ends it.
BLOCKED_TIMEOUT_SECONDS = 30.0

QUEUE_TYPES = ("classic", "quorum")


class NotConfirmed(ConnectionClosed):
    """RabbitMQ did not confirm every message of a batch: publish the batch again."""

    def __init__(self, reason: str, *, returned: frozenset[str] = frozenset()) -> None:
        super().__init__(RuntimeError(reason))
        self.reason = reason
        # The queues of the messages RabbitMQ returned as unroutable (deleted queues).
        self.returned = returned

    def __str__(self) -> str:
        return self.reason


class _ConfirmedChannel:
    """One channel in confirm mode that sends a batch and then waits for all its confirms."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.unconfirmed: dict[int, str] = {}  # delivery tag → queue
        self.refused: list[str] = []  # what RabbitMQ nacked or returned, as "queue (why)"
        self.returned: set[str] = set()  # the queues of the returned ones
        self.sent = 0
        selected: list[object] = []
        # pika's own channel under the blocking one: it calls back per confirm instead of blocking.
        self.impl = self.channel._impl
        self.impl.confirm_delivery(ack_nack_callback=self._confirmed, callback=selected.append)
        self.impl.add_on_return_callback(self._returned)
        self._wait(lambda: bool(selected), CONFIRM_TIMEOUT_SECONDS)
        if not selected:
            raise NotConfirmed(f"RabbitMQ did not turn on publisher confirms within {CONFIRM_TIMEOUT_SECONDS:.0f} s")

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        tags = [t for t in self.unconfirmed if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            queue = self.unconfirmed.pop(tag, None)
            if isinstance(method, pika.spec.Basic.Nack) and queue is not None:
                self.refused.append(f"{queue} (nacked)")

    def _returned(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        # RabbitMQ returns an unroutable message before it confirms it.
        self.refused.append(f"{method.routing_key} (returned: {method.reply_text})")
        self.returned.add(method.routing_key)

    def _wait(self, done: Any, timeout: float) -> None:
        # The blocking channel's own loop (as its basic_publish runs it), until `done` or the deadline.
        with _IoloopTimerContext(timeout, self.connection._impl) as timer:
            self.channel._flush_output(timer.is_ready, done)

    def publish(self, items: list[tuple[str, bytes, int | None]]) -> None:
        """Send (queue, body, priority) messages; return once RabbitMQ confirmed every one, else raise
        NotConfirmed naming what it refused or left unconfirmed."""
        self.refused, self.returned = [], set()
        for queue, body, priority in items:
            self.impl.basic_publish(
                exchange="",
                routing_key=queue,
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, priority=priority),
                mandatory=True,
            )
            self.sent += 1
            self.unconfirmed[self.sent] = queue
        self._wait(lambda: not self.unconfirmed, CONFIRM_TIMEOUT_SECONDS)
        if self.unconfirmed:
            pending = len(self.unconfirmed)
            self.unconfirmed.clear()
            raise NotConfirmed(
                f"RabbitMQ confirmed {len(items) - pending} of {len(items)} messages within "
                f"{CONFIRM_TIMEOUT_SECONDS:.0f} s"
            )
        if self.refused:
            refused = ", ".join(self.refused)
            raise NotConfirmed(
                f"RabbitMQ refused {len(self.refused)} of {len(items)} messages: {refused}",
                returned=frozenset(self.returned),
            )


class OutboxRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with confirms always on, batch publishing and screened consumers."""

    def __init__(self, *, queue_type: str = "classic", **kwargs: Any) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"OUTBOX_RABBITMQ_QUEUE_TYPE={queue_type!r} is not a queue type this broker declares: "
                f"use {' or '.join(QUEUE_TYPES)}."
            )
        kwargs["confirm_delivery"] = True
        super().__init__(**kwargs)
        self.queue_type = queue_type
        self._publishing = threading.local()
        # A connection RabbitMQ blocks (a memory or disk alarm) stops answering anything, its close
        # included: pika ends it after this long, so that a relay backs off instead of hanging.
        # `?blocked_connection_timeout=` in BROKER_URL sets another figure.
        for parameters in self.parameters if isinstance(self.parameters, list) else [self.parameters]:
            if parameters.blocked_connection_timeout is None:
                parameters.blocked_connection_timeout = BLOCKED_TIMEOUT_SECONDS

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _ScreeningConsumer

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        return arguments

    def _declare_xq_queue(self, queue_name: str) -> Any:
        if self.queue_type == "classic":
            return super()._declare_xq_queue(queue_name)
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            arguments={"x-message-ttl": DEAD_MESSAGE_TTL, "x-queue-type": "quorum"},
        )

    def _confirmed_channel(self) -> _ConfirmedChannel:
        channel: _ConfirmedChannel | None = getattr(self._publishing, "channel", None)
        if channel is None or not channel.channel.is_open or not channel.connection.is_open:
            channel = self._publishing.channel = _ConfirmedChannel(self.connection)
        return channel

    def _forget_publishing(self) -> None:
        self._publishing.channel = None
        del self.connection

    def enqueue_many(self, messages: list[Message[Any]]) -> None:
        """Publish the messages and return once RabbitMQ confirmed all of them.

        Raises NotConfirmed when it refused one or left one unconfirmed, and ConnectionClosed when
        the connection failed twice (a connection found closed is opened again once at once: an
        idle relay's connection may have been closed by the server since its last batch).
        """
        if not messages:
            return
        for message in messages:
            self.declare_queue(message.queue_name)
        for attempt in (1, 2):
            try:
                for queue in {q_name(m.queue_name) for m in messages} & self.queues_pending:
                    self._ensure_queue(queue)
                for message in messages:
                    self.emit_before("enqueue", message, None)
                self._confirmed_channel().publish(
                    [(m.queue_name, m.encode(), m.options.get("broker_priority")) for m in messages]
                )
                break
            except NotConfirmed as e:
                # An unroutable message's queue was deleted: declare it again before the next try
                # (only that one: a declaration on a connection RabbitMQ blocks would wait too).
                # The channel stays: closing it would wait on a connection RabbitMQ may be blocking,
                # and late confirms of this batch are ignored.
                self.queues_pending.update(q_name(queue) for queue in e.returned)
                raise
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, ConnectionClosed) as e:
                self._forget_publishing()
                if attempt == 2:
                    raise ConnectionClosed(e) from None
        for message in messages:
            self.emit_after("enqueue", message, None)

    def ping(self) -> None:
        """Raise unless RabbitMQ answers on this thread's connection (for /healthz). A connection
        the server closed since its last use is opened again once first."""
        try:
            self.connection.process_data_events(0)
        except (pika.exceptions.AMQPError, ConnectionClosed):
            self._forget_publishing()
            self.connection.process_data_events(0)


class _ScreeningConsumer(Screening, _RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer (dramatiq 2.2, `_RabbitmqConsumer.__next__`), rejecting what no
    actor can run into the queue's dead-letter queue."""

    def _discard(self, data: bytes, handle: object) -> None:
        assert isinstance(handle, int)
        self._nack(handle)

    def __next__(self) -> _RabbitmqMessage | None:
        try:
            method, _properties, body = next(self.iterator)
            if method is None:
                return None
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            if getattr(e, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(e) from None
        message = self._accepted(body, method.delivery_tag)
        if message is None:
            return None
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)
