"""Messages a consumer refused, counted in the database.

A worker drops a message that cannot be applied (undecodable, too big, for an unknown actor, or
naming events that do not exist) instead of retrying it or restarting its consumer. Each drop is
one log line and one increment here; the counts live in the database, not in the worker, so that
`/metrics` on any web process adds up every worker's drops (outbox/ops/metrics.py).
"""

import logging

from django.db import connection

from outbox.models import MessageDrop

logger = logging.getLogger(__name__)

# What a log line or a recorded detail shows of a message or an argument, at most.
EXCERPT_CHARS = 200

_COUNT = """
INSERT INTO outbox_message_drop (consumer, reason, messages, events, last_at, last_detail)
VALUES (%s, %s, 1, %s, CURRENT_TIMESTAMP, %s)
ON CONFLICT (consumer, reason) DO UPDATE
    SET messages = outbox_message_drop.messages + 1, events = outbox_message_drop.events + EXCLUDED.events,
        last_at = CURRENT_TIMESTAMP, last_detail = EXCLUDED.last_detail
"""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """Return the start of `value` (bytes and text as they are, anything else by repr), with its
    length when cut: a log line never carries a whole message. Line breaks are escaped, so that
    a forged message cannot add lines of its own to the log."""
    if isinstance(value, bytes):
        text = value[: limit * 4].decode("utf-8", errors="replace")
        size = len(value)
    else:
        text = value if isinstance(value, str) else repr(value)
        size = len(text)
    shown = text[:limit].replace("\r", "\\r").replace("\n", "\\n")
    return shown if len(text) <= limit and size <= limit else f"{shown}… ({size} in all)"


def message_drop_count(*, consumer: str, reason: MessageDrop.Reason, detail: str = "", events: int = 0) -> None:
    """Count one dropped message (and `events` refused event ids) for the consumer and reason."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNT, [consumer, reason.value, events, detail[:400]])


def message_drop_count_safely(*, consumer: str, reason: MessageDrop.Reason, detail: str = "") -> None:
    """message_drop_count() from a worker's consumer thread, outside any request or actor.

    The drop itself must not depend on the database: a failure to count is logged, and the
    connection is closed, since nothing else in that long-lived thread would ever close it.
    """
    try:
        message_drop_count(consumer=consumer, reason=reason, detail=detail)
    except Exception:  # the message is dropped anyway; only its count is lost, and said so
        logger.warning("Could not count a dropped %s message for %s", reason.value, consumer, exc_info=True)
    finally:
        connection.close()


def message_drops() -> list[MessageDrop]:
    """Return the drop counts, per consumer and reason."""
    return list(MessageDrop.objects.order_by("consumer", "reason"))
