"""Running one consumer over the events of one message, each event on its own.

A message carries the ids of a batch of events for one consumer. Each event is applied with its
tracking row (`delivery_begin`) in its own transaction or savepoint, so that a duplicate is skipped,
and a poison event fails alone: its delivery is recorded failed (then dead, when no retry is
left) with the error, and the rest of the batch is applied.

The worker retries a message with failed events (Dramatiq's backoff); the retry skips what is done
and what is already dead, so only the failed events run again.
"""

import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dramatiq
from django.db import connection, transaction
from dramatiq.middleware import CurrentMessage

from outbox.deliveries import delivery_begin, delivery_fail
from outbox.models import Delivery, Event

logger = logging.getLogger("outbox.consumer")

Handler = Callable[[Event], object]


class PermanentError(Exception):
    """Trying again cannot help (bad input, a missing row): the delivery is dead at once."""


class BadMessage(PermanentError):
    """A message whose arguments are not a list of event ids. Name it in an actor's `throws`."""


@dataclass
class Outcome:
    """What one run over a message did."""

    consumer: str
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """Which attempt at its message the worker is making (1 is the first)."""

    number: int
    allowed: int

    @property
    def final(self) -> bool:
        return self.number >= self.allowed


def current_attempt() -> Attempt:
    """Return the current message's attempt; outside a worker (a direct call) it is the only one."""
    message = CurrentMessage.get_current_message()
    if message is None:
        return Attempt(1, 1)
    retries = int(message.options.get("retries", 0))
    max_retries = message.options.get("max_retries")
    if max_retries is None:
        actor = dramatiq.get_broker().get_actor(message.actor_name)
        max_retries = actor.options.get("max_retries", 0)
    return Attempt(retries + 1, int(max_retries) + 1)


def event_ids_from(consumer: str, value: object) -> list[int]:
    """Return the message's event ids, or raise BadMessage saying what is wrong with it."""
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise BadMessage(
            f"{consumer} expects one argument, a list of event ids (integers); got {value!r:.200}. "
            "The message was dropped and nothing was applied; publish the events again with outbox_replay."
        )
    return list(dict.fromkeys(value))


def error_text(exc: BaseException) -> str:
    """Return the error and an excerpt of its traceback, as recorded on the delivery."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    head = f"{type(exc).__name__}: {exc}\n"
    return head + text[-3500:]


def consume(
    *,
    consumer: str,
    event_ids: object,
    handle: Handler,
    atomic: bool = True,
    attempt: Attempt | None = None,
) -> Outcome:
    """Apply `handle` to each event of the message not yet done by `consumer`.

    `atomic=True`: the handler runs in a transaction with the event's tracking row, the whole
    batch in one transaction with a savepoint per event. `atomic=False`: the handler manages its
    own transactions and calls delivery_begin() itself (a consumer with a side effect outside the
    database, which must not run inside a transaction).

    Raises dramatiq.Retry when events failed and the worker has attempts left.
    """
    try:
        ids = event_ids_from(consumer, event_ids)
    except BadMessage as exc:
        logger.error("%s", exc)
        raise
    attempt = attempt or current_attempt()
    outcome = Outcome(consumer)
    settled = dict(
        Delivery.objects.filter(event_id__in=ids, consumer=consumer, status__in=["done", "dead"]).values_list(
            "event_id", "status"
        )
    )
    # A retry of this message leaves dead deliveries alone; a new message (a replay) tries them again.
    wanted = [i for i in ids if settled.get(i) != "done" and not (attempt.number > 1 and settled.get(i) == "dead")]
    outcome.skipped.extend(i for i in ids if i not in wanted)
    events = {event.id: event for event in Event.objects.filter(id__in=wanted)}
    permanent: set[int] = set()
    for event_id in wanted:
        if event_id not in events:
            outcome.failed[event_id] = (
                f"Event {event_id} does not exist (purged, or never written). Nothing was applied."
            )
            permanent.add(event_id)
    runnable = [events[i] for i in sorted(events)]
    if atomic:
        with transaction.atomic():
            _run(consumer, runnable, handle, outcome, permanent, savepoints=True)
    else:
        _run(consumer, runnable, handle, outcome, permanent, savepoints=False)
    if outcome.failed:
        _record_failures(consumer, outcome, permanent, attempt, events)
    retry = [i for i in outcome.failed if i not in outcome.dead]
    if retry:
        raise dramatiq.Retry(f"{consumer}: {len(retry)} of {len(ids)} events failed; retrying them")
    return outcome


def _run(
    consumer: str, events: Iterable[Event], handle: Handler, outcome: Outcome, permanent: set[int], *, savepoints: bool
) -> None:
    for event in events:
        try:
            if savepoints:
                with transaction.atomic():
                    if not delivery_begin(event_id=event.id, consumer=consumer):
                        outcome.skipped.append(event.id)
                        continue
                    handle(event)
            else:
                handle(event)
        except PermanentError as exc:
            outcome.failed[event.id] = str(exc)
            permanent.add(event.id)
        except Exception as exc:
            if connection.connection is not None and not connection.is_usable():
                raise  # the database went away: the whole message is retried
            outcome.failed[event.id] = error_text(exc)
        else:
            outcome.done.append(event.id)


def _record_failures(
    consumer: str, outcome: Outcome, permanent: set[int], attempt: Attempt, events: dict[int, Event]
) -> None:
    with transaction.atomic():
        for event_id, error in outcome.failed.items():
            final = attempt.final or event_id in permanent
            delivery_fail(event_id=event_id, consumer=consumer, error=error, final=final)
            if final:
                outcome.dead[event_id] = error
    for event_id, error in outcome.failed.items():
        event = events.get(event_id)
        what = (
            f"event {event_id} ({event.event_type} {event.aggregate_type}:{event.aggregate_id})"
            if event
            else (f"event {event_id}")
        )
        first_line = error.splitlines()[0] if error else ""
        if event_id in outcome.dead:
            reason = "a permanent error" if event_id in permanent else f"{attempt.number} attempts"
            logger.error(
                "%s: %s is dead after %s: %s. Fix the cause, then replay it (outbox_replay).",
                consumer,
                what,
                reason,
                first_line,
            )
        else:
            logger.warning(
                "%s: %s failed on attempt %d of %d, will retry: %s",
                consumer,
                what,
                attempt.number,
                attempt.allowed,
                first_line,
            )
