"""Dramatiq's Redis broker, with idle workers woken the moment a message is enqueued.

Dramatiq's Redis consumer polls: when its queue is empty it sleeps, backing off up to the
worker timeout, so a message sent to an idle worker waits for the end of that sleep (268 ms p50
at Dramatiq's default timeout, 42 ms at 100 ms). Here, enqueueing a message also pushes a token
onto the queue's wake-up list, and an idle consumer blocks on that list (BRPOP) for the length of
its back-off instead of sleeping: a new message wakes it at once, and the poll stays as the
fallback when a token is missed.

The consumer also refuses what a worker cannot run, before the worker sees it: a message larger
than OUTBOX_MESSAGE_MAX_BYTES, one that does not decode, one for an actor this deployment does not
define, one whose arguments its actor does not take. Dramatiq's consumer raises on the first two,
and its worker then restarts the consumer after 3 s, losing the messages it had prefetched until
the sweeper publishes them again a minute later: one bad message stalled the queue. Here each is
moved to the queue's dead-letter set (where Dramatiq keeps dead messages for a week), counted
(outbox.consume.drops) and logged in one short line, and the next message follows at once.
"""

import dataclasses
import inspect
import logging
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed, DecodeError

if TYPE_CHECKING:
    from outbox.models import MessageDrop

logger = logging.getLogger(__name__)

# Tokens nobody waited for are dropped beyond this many, so the list stays small.
WAKE_TOKENS_KEPT = 64


def wake_key(namespace: str, queue_name: str) -> str:
    """Return the Redis list an idle consumer of `queue_name` blocks on."""
    return f"{namespace}:{queue_name}.wake"


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose idle consumers wake on enqueue instead of at the end of a poll."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue the message and wake one idle consumer of its queue, in one round trip.

        This is RedisBroker.enqueue (dramatiq 2.2) with its dispatch script sent in a pipeline
        together with the wake-up token. Delayed messages go through Dramatiq's own path: they
        are not due yet, so there is nobody to wake.
        """
        if delay is not None:
            return super().enqueue(message, delay=delay)
        message = message.copy(options={"redis_message_id": str(uuid4())})
        self.emit_before("enqueue", message, delay)
        args = [
            "enqueue",
            current_millis(),
            message.queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance("enqueue"),
            self._max_unpack_size(),
            message.options["redis_message_id"],
            message.encode(),
        ]
        key = wake_key(self.namespace, message.queue_name)
        dispatch = self.scripts["dispatch"]
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(dispatch.sha, 1, self.namespace, *args)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, WAKE_TOKENS_KEPT - 1)
        try:
            pipe.execute()
        except redis.exceptions.NoScriptError:
            # Redis restarted and forgot the script: the script object loads it and runs it. The
            # pipeline's wake-up token went out anyway (a consumer it woke early polls again soon).
            dispatch(keys=[self.namespace], args=args)
        self.emit_after("enqueue", message, delay)
        return message

    def ping(self) -> None:
        """Raise unless Redis answers (for /healthz)."""
        self.client.ping()

    def requeue_dead(self) -> None:
        """Give the unacknowledged messages of workers whose heartbeat is stale (older than
        `heartbeat_timeout`: the process died) back to their queues now, and wake a consumer of each
        queue with messages waiting.

        This is Dramatiq's own maintenance, which it otherwise runs by chance on one command in a
        thousand, run on every declared queue and delay queue (it runs with any command but ack and
        nack; `qsize` changes nothing).
        """
        dispatch = self.scripts["dispatch"]
        queues = self.get_declared_queues()
        for queue in sorted({*queues, *self.get_declared_delay_queues()}):
            args = [
                "qsize",
                current_millis(),
                queue,
                self.broker_id,
                self.heartbeat_timeout,
                self.dead_message_ttl,
                1,
                self._max_unpack_size(),
            ]
            dispatch(keys=[self.namespace], args=args)
            if queue in queues and self.client.llen(f"{self.namespace}:{queue}"):
                pipe = self.client.pipeline(transaction=False)
                pipe.lpush(wake_key(self.namespace, queue), 1)
                pipe.ltrim(wake_key(self.namespace, queue), 0, WAKE_TOKENS_KEPT - 1)
                pipe.execute()


@dataclasses.dataclass(frozen=True)
class ShortMessage(Message[Any]):
    """A message whose text (in Dramatiq's log lines: "Failed to process message %s") shows at
    most a few hundred characters of its arguments."""

    def __str__(self) -> str:
        from outbox.consume.drops import excerpt

        return excerpt(super().__str__())


class Screening:
    """What a consumer refuses before the worker sees it, on any broker: a message larger than
    OUTBOX_MESSAGE_MAX_BYTES, one that does not decode, one for an actor this deployment does not
    define, one whose arguments its actor does not take. A consumer class mixes it in and says,
    in `_discard`, how its broker dead-letters a fetched message."""

    broker: Any
    queue_name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signatures: dict[str, inspect.Signature] = {}

    def _discard(self, data: bytes, handle: object) -> None:
        """Dead-letter the fetched message whose body is `data` (`handle` is the broker's own
        reference to it, where it has one)."""
        raise NotImplementedError

    def _accepted(self, data: bytes, handle: object = None) -> Message[Any] | None:
        """Return the message in `data`, or None when it was dropped (dead-lettered and counted)."""
        # Imported here: Dramatiq loads the broker while Django's apps are still being set up.
        from outbox import conf
        from outbox.models import MessageDrop

        limit = conf.message_max_bytes()
        if len(data) > limit:
            detail = f"{len(data)} bytes, over OUTBOX_MESSAGE_MAX_BYTES={limit}"
            self._drop(data, handle, MessageDrop.Reason.OVERSIZED, detail)
            return None
        try:
            message = ShortMessage.decode(data)
        except DecodeError as e:
            cause = e.error.error if isinstance(e.error, DecodeError) else e.error
            detail = f"it does not decode ({type(cause).__name__}: {str(cause)[:100]})"
            self._drop(data, handle, MessageDrop.Reason.MALFORMED, detail)
            return None
        # JSON decodes to any shape: the fields the worker hashes or looks up must be what they say.
        shaped = all(isinstance(v, str) for v in (message.actor_name, message.queue_name, message.message_id))
        shaped = shaped and isinstance(message.kwargs, dict) and isinstance(message.options, dict)
        if not shaped or not self._options_valid(message.options):
            self._drop(data, handle, MessageDrop.Reason.MALFORMED, "its fields are not a Dramatiq message's")
            return None
        actor = self.broker.actors.get(message.actor_name)
        if actor is None:
            self._drop(
                data,
                handle,
                MessageDrop.Reason.UNKNOWN_ACTOR,
                f"no actor is named {str(message.actor_name)[:100]!r}",
            )
            return None
        signature = self.signatures.setdefault(actor.actor_name, inspect.signature(actor.fn))
        try:
            signature.bind(*message.args, **message.kwargs)
        except TypeError as e:
            detail = f"{actor.actor_name} does not take these arguments ({str(e)[:100]})"
            self._drop(data, handle, MessageDrop.Reason.MALFORMED, detail, consumer=actor.actor_name)
            return None
        return message

    def _options_valid(self, options: dict[str, Any]) -> bool:
        """Whether the options a broker itself reads from a message are of their type."""
        return True

    def _drop(
        self,
        data: bytes,
        handle: object,
        reason: "MessageDrop.Reason",
        detail: str,
        *,
        consumer: str | None = None,
    ) -> None:
        """Dead-letter the fetched message, count it and log it in one short line."""
        from outbox.consume.drops import excerpt, message_drop_count_safely

        self._discard(data, handle)
        logger.error(
            "Dropped a message from queue %s (%s): %s. Nothing was applied; it is kept in the queue's "
            "dead letters. The message began: %s",
            self.queue_name,
            reason.value,
            detail,
            excerpt(data),
        )
        message_drop_count_safely(consumer=consumer or self.queue_name, reason=reason, detail=detail)


class _WakingConsumer(Screening, _RedisConsumer):
    """Dramatiq's Redis consumer (dramatiq 2.2, `_RedisConsumer.__next__`), blocking on the
    queue's wake-up list where the original sleeps, and dropping what no actor can run."""

    def _options_valid(self, options: dict[str, Any]) -> bool:
        return isinstance(options.get("redis_message_id"), str)

    def _discard(self, data: bytes, handle: object) -> None:
        """Move the message to the queue's dead-letter set (where Dramatiq keeps dead messages for a week)."""
        # Found by its body, never by the id it names: a forged body may name another message.
        message_id = self._fetched_id(data)
        if message_id is not None:
            self.broker.do_nack(self.queue_name, message_id)

    def _fetched_id(self, data: bytes) -> str | None:
        """Return the Redis id of a fetched message, found among this consumer's unacknowledged
        ones (at most its prefetch) by its body."""
        acks = f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in self.broker.client.smembers(acks)]
        if not ids:
            return None
        stored = self.broker.client.hmget(f"{self.broker.namespace}:{self.queue_name}.msgs", ids)
        return next((i for i, value in zip(ids, stored, strict=True) if value == data), None)

    def __next__(self) -> MessageProxy | None:
        try:
            while True:
                try:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = self._accepted(data)
                    if message is None:
                        continue
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                except IndexError:
                    messages = []
                    if self.outstanding_message_count < self.prefetch:
                        self.message_cache = messages = self.broker.do_fetch(
                            self.queue_name, self.prefetch - self.outstanding_message_count
                        )
                    if not messages:
                        self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                        key = wake_key(self.broker.namespace, self.queue_name)
                        if self.broker.client.brpop([key], timeout=max(backoff_ms, 1) / 1000):
                            self.misses = 0
                            continue
                        return None
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
