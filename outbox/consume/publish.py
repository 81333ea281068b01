"""Publishing messages on whichever broker is configured, and the errors that mean "try again".

On RabbitMQ a list of messages goes out as one batch with publisher confirms (outbox/consume/rabbitmq.py):
it counts as published once RabbitMQ confirmed every message. On Redis each message is one
enqueue, which returns once Redis holds it.
"""

from typing import Any

import dramatiq
import pika.exceptions
import redis

# What a broker raises when it is unreachable or did not take a message: the caller backs off and
# publishes again (consumers are idempotent).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    pika.exceptions.AMQPError,
    dramatiq.errors.BrokerConnectionError,
    OSError,
)


class PublishFailed(Exception):
    """The broker failed part-way through a list of messages; `published_any` says whether any of
    them may have reached it (a relay then counts its claim)."""

    def __init__(self, cause: BaseException, *, published_any: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.published_any = published_any


def enqueue_all(messages: list[dramatiq.Message[Any]], broker: dramatiq.Broker | None = None) -> None:
    """Publish every message; raise PublishFailed (from one of BROKER_ERRORS) when the broker did
    not take them all."""
    broker = broker or dramatiq.get_broker()
    many = getattr(broker, "enqueue_many", None)
    if many is not None:
        from outbox.consume.rabbitmq import NotConfirmed

        try:
            many(messages)
        except BROKER_ERRORS as e:
            # Sent but not confirmed: RabbitMQ may hold some of them.
            raise PublishFailed(e, published_any=isinstance(e, NotConfirmed)) from e
        return
    published_any = False
    try:
        for message in messages:
            broker.enqueue(message)
            published_any = True
    except BROKER_ERRORS as e:
        raise PublishFailed(e, published_any=published_any) from e
