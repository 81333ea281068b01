"""Running one consumer over the events of one message.

A message carries the ids of a batch of events for one consumer. Events are applied in small
groups (one aggregate's events, say), each in a transaction of its own with the events' tracking
rows (`deliveries_begin`), so that a duplicate is skipped, no lock is held across the batch, and
a poison event fails alone: a failed group is tried again event by event, and the failing
event's delivery is recorded failed (then dead, when no retry is left) with the error, while the
rest of the batch is applied.

The worker retries a message with failed events (Dramatiq's backoff); the retry skips what is done
and what is already dead, so only the failed events run again.
"""

import logging
import traceback
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dramatiq
from django.db import connection, transaction
from dramatiq.middleware import CurrentMessage

from outbox import conf
from outbox.consume import ordering
from outbox.consume.declare import is_ordered, skips_dead
from outbox.consume.deliveries import deliveries_begin, delivery_fail
from outbox.consume.drops import excerpt, message_drop_count
from outbox.emit.schemas import upcast_event
from outbox.errors import UpcastError
from outbox.eventlog.keys import seal_key
from outbox.eventlog.tagging import forged_reason, tag_valid
from outbox.models import Delivery, Event, MessageDrop

if TYPE_CHECKING:
    from outbox.consume.declare import Consumer

logger = logging.getLogger("outbox.consumer")

Handler = Callable[[list[Event]], object]


class PermanentError(Exception):
    """Trying again cannot help (bad input, a missing row): the delivery is dead at once."""


class RetryableError(Exception):
    """Trying again may help (a service briefly down): the delivery is retried with backoff."""


class BadMessage(PermanentError):
    """A message whose arguments are not a list of event ids. Name it in an actor's `throws`."""

    reason = MessageDrop.Reason.MALFORMED


class OversizedMessage(BadMessage):
    """A message naming more event ids than OUTBOX_MESSAGE_MAX_IDS."""

    reason = MessageDrop.Reason.OVERSIZED


@dataclass
class Outcome:
    """What one run over a message did."""

    consumer: str
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    # Ids that name no event (purged, or never written): refused, no delivery recorded.
    unknown: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)
    # External consumers: per event called, the duplicate window in seconds (outside call → mark).
    windows: dict[int, float] = field(default_factory=dict)
    # Ordered consumers: events recorded waiting for their predecessors, and waiting events released.
    waiting: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)


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
    limit = conf.message_max_ids()
    if isinstance(value, list) and len(value) > limit:
        raise OversizedMessage(
            f"{consumer}: a message names {len(value)} event ids, more than OUTBOX_MESSAGE_MAX_IDS={limit} "
            "(a relay sends at most OUTBOX_RELAY_BATCH_SIZE). It was dropped and nothing was applied; if its "
            "events are real, publish them again with outbox_replay."
        )
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
    group_by: Callable[[Event], object] | None = None,
    together: bool = False,
    atomic: bool = True,
    attempt: Attempt | None = None,
    prepare: Callable[[list[Event]], object] | None = None,
    settled: Callable[[list[int]], Iterable[int]] | None = None,
    ordered: "Consumer | None" = None,
    upcast: bool = True,
) -> Outcome:
    """Apply `handle` to the message's events not yet done by `consumer`.

    `handle` takes a list of events. With `atomic=True` each group of events (by `group_by`;
    each event alone without it) is handled in a transaction of its own, with the events'
    tracking rows: the effect and the `done` record commit together, and a duplicate finds the
    record and is skipped. A group that fails is tried again event by event, so a poison event
    fails alone. `together=True` first tries the whole message as one group (for a consumer that
    takes no lock that another message could take in another order), then falls back to groups.

    With `atomic=False` the handler gets one event at a time and manages its own transactions,
    calling delivery_begin() itself (a side effect outside the database must not run inside a
    transaction).

    `prepare`, if given, gets the events about to be handled, once, before the first.

    `settled`, if given, takes the ids about to be loaded and returns those whose effect is
    already there: their deliveries are marked done, and they are neither loaded nor handled.

    `ordered`, the declaration of an ordered consumer: each aggregate's events run in version
    order, an event only after its predecessor for the consumer (outbox/consume/ordering.py);
    the others are recorded waiting, and what is finished releases what waited for it.

    `upcast`: bring each payload to its type's current schema version before any handler
    (outbox/emit/schemas.py). An event whose upcaster fails is dead at once, with the error:
    the upcaster is a pure function, so trying again cannot help; replay it after the fix.

    Raises dramatiq.Retry when events failed and the worker has attempts left.
    """
    try:
        ids = event_ids_from(consumer, event_ids)
    except BadMessage as exc:
        logger.error("%s", exc)
        message_drop_count(consumer=consumer, reason=exc.reason, detail=str(exc)[:200])
        raise
    attempt = attempt or current_attempt()
    outcome = Outcome(consumer)
    statuses = dict(
        Delivery.objects.filter(event_id__in=ids, consumer=consumer, status__in=["done", "dead"]).values_list(
            "event_id", "status"
        )
    )
    # A retry of this message leaves dead deliveries alone; a new message (a replay) tries them again.
    wanted = [i for i in ids if statuses.get(i) != "done" and not (attempt.number > 1 and statuses.get(i) == "dead")]
    outcome.skipped.extend(i for i in ids if i not in wanted)
    if settled is not None and wanted:
        wanted = _settle(consumer, wanted, settled, outcome)
    selected = Event.objects.checked().filter(id__in=wanted)
    loaded = list(selected) if ordered is None else ordering.with_predecessors(selected, ordered)
    events = {event.id: event for event in loaded}
    permanent: set[int] = set()
    outcome.unknown = [i for i in wanted if i not in events]
    if outcome.unknown and attempt.number == 1:  # a retry of the message names the same ones again
        _refuse_unknown(consumer, outcome.unknown, len(ids))
    # A row the writer did not write (its tag does not verify) is refused before any handler; the
    # others' payloads are brought to their type's current schema version (outbox/emit/schemas.py).
    key = seal_key()
    for event_id, event in events.items():
        if not tag_valid(event, key):
            outcome.failed[event_id] = forged_reason(event)
            permanent.add(event_id)
        elif upcast:
            try:
                upcast_event(event)
            except UpcastError as exc:
                outcome.failed[event_id] = str(exc)
                permanent.add(event_id)
    runnable = [events[i] for i in sorted(events) if i not in outcome.failed]
    gate = None
    if ordered is not None:
        gate = ordering.Gate.over(runnable, skip=skips_dead(ordered))
        runnable.sort(key=lambda e: (e.aggregate_version, e.id))  # each aggregate's in version order
    if prepare is not None:
        prepare(runnable)
    if atomic:

        def split(events: list[Event]) -> list[list[Event]]:
            groups: dict[object, list[Event]] = {}
            for event in events:
                key = group_by(event) if group_by and len(events) > 1 else event.id
                groups.setdefault(key, []).append(event)
            if len(groups) == 1 and len(events) > 1:  # one group failed: each event alone
                return [[event] for event in events]
            for group in groups.values():
                group.sort(key=lambda e: (e.aggregate_version, e.id))
            return list(groups.values())

        for group in [runnable] if together and len(runnable) > 1 else split(runnable):
            _run_group(consumer, group, handle, outcome, permanent, split, gate)
    else:
        for event in runnable:
            _run_alone(event, handle, outcome, permanent, gate)
    if outcome.failed:
        _record_failures(consumer, outcome, permanent, attempt, events)
    if ordered is not None and gate is not None:
        _settle_order(ordered, gate, outcome, events)
    retry = [i for i in outcome.failed if i not in outcome.dead]
    if retry:
        raise dramatiq.Retry(f"{consumer}: {len(retry)} of {len(ids)} events failed; retrying them")
    return outcome


def _settle(
    consumer: str, wanted: list[int], settled: Callable[[list[int]], Iterable[int]], outcome: Outcome
) -> list[int]:
    """Mark done the deliveries whose effect `settled` finds made; return the ids still to handle."""
    made = set(settled(wanted)).intersection(wanted)
    if not made:
        return wanted
    with transaction.atomic():
        begun = deliveries_begin(event_ids=sorted(made), consumer=consumer)
    outcome.done.extend(i for i in wanted if i in begun)
    outcome.skipped.extend(i for i in wanted if i in made and i not in begun)
    return [i for i in wanted if i not in made]


def _refuse_unknown(consumer: str, unknown: list[int], total: int) -> None:
    """Count and log, in one line for the message, the ids that name no event.

    No delivery is recorded for them: there is no event to deliver, now or after a replay, and a
    forged message naming thousands of ids would otherwise leave as many dead deliveries.
    """
    logger.warning(
        "%s: %d of the %d event ids in a message name no event (purged, or never written); nothing was "
        "applied for them and no delivery recorded. The ids began: %s",
        consumer,
        len(unknown),
        total,
        excerpt(unknown[:20]),
    )
    message_drop_count(
        consumer=consumer,
        reason=MessageDrop.Reason.UNKNOWN_EVENTS,
        events=len(unknown),
        detail=f"{len(unknown)} of {total} ids, from {excerpt(unknown[:10], 150)}",
    )


def _failure(exc: Exception, event_id: int, outcome: Outcome, permanent: set[int]) -> None:
    if isinstance(exc, PermanentError):
        outcome.failed[event_id] = str(exc)
        permanent.add(event_id)
        return
    if connection.connection is not None and not connection.is_usable():
        raise exc  # the database went away: the whole message is retried
    outcome.failed[event_id] = error_text(exc)


def _run_group(
    consumer: str,
    group: list[Event],
    handle: Handler,
    outcome: Outcome,
    permanent: set[int],
    split: Callable[[list[Event]], list[list[Event]]],
    gate: "ordering.Gate | None" = None,
) -> None:
    if gate is not None:
        group = gate.admit(group)
        if not group:
            return
    try:
        with transaction.atomic():
            begun = deliveries_begin(event_ids=[e.id for e in group], consumer=consumer)
            todo = [e for e in group if e.id in begun]
            if todo:
                handle(todo)
    except Exception as exc:
        if len(group) > 1:
            for part in split(group):  # find the poison: smaller groups, down to each event alone
                _run_group(consumer, part, handle, outcome, permanent, split, gate)
            return
        _failure(exc, group[0].id, outcome, permanent)
        return
    outcome.done.extend(e.id for e in todo)
    outcome.skipped.extend(e.id for e in group if e.id not in begun)
    if gate is not None:
        gate.finished(e.id for e in group)


def _run_alone(
    event: Event, handle: Handler, outcome: Outcome, permanent: set[int], gate: "ordering.Gate | None" = None
) -> None:
    if gate is not None and not gate.admit([event]):
        return
    try:
        handle([event])
    except Exception as exc:
        _failure(exc, event.id, outcome, permanent)
    else:
        outcome.done.append(event.id)
        if gate is not None:
            gate.finished([event.id])


def _settle_order(declared: "Consumer", gate: "ordering.Gate", outcome: Outcome, events: dict[int, Event]) -> None:
    """After the message's transactions committed: record the held events waiting, then publish
    the waiting events of the aggregates this run moved on that may now run (the parked ones
    included: their predecessor may have finished meanwhile)."""
    held = sorted(set(gate.held) - gate.done - set(outcome.failed))
    ordering.park(declared.name, held)
    outcome.waiting = held
    after: dict[tuple[str, str], int] = {}

    def note(aggregate_type: str, aggregate_id: str, version: int) -> None:
        key = (aggregate_type, aggregate_id)
        after[key] = min(after.get(key, version), version)

    for event_id in held:
        parked = events[event_id]
        note(parked.aggregate_type, parked.aggregate_id, parked.aggregate_version - 1)
    moved = list(gate.done) + (list(outcome.dead) if skips_dead(declared) else [])
    for event_id in moved:
        event = events.get(event_id)
        if event is not None:
            note(event.aggregate_type, event.aggregate_id, event.aggregate_version)
    # Done without being loaded: by `settled` (their effect was there), or before this message
    # (a redelivery, or a retry after an error that ended the run early). What waits behind them
    # is released too, not left to the sweeper.
    elsewhere = sorted({*outcome.done, *outcome.skipped} - set(events))
    for aggregate_type, aggregate_id, version in Event.objects.filter(id__in=elsewhere).values_list(
        "aggregate_type", "aggregate_id", "aggregate_version"
    ):
        note(aggregate_type, aggregate_id, version)
    outcome.released = ordering.release(declared, after)


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


def _by_aggregate(event: Event) -> object:
    return (event.aggregate_type, event.aggregate_id)


def deliver(name: str, event_ids: object, *, attempt: Attempt | None = None) -> Outcome:
    """Run the declared consumer `name` over the message's events (what its actor does)."""
    from outbox.consume.declare import Kind, declaration

    declared = declaration(name)
    if declared is None:
        raise PermanentError(f"No consumer is declared with the name {name!r}.")
    if declared.kind is Kind.EXTERNAL:
        return _deliver_external(declared, event_ids, attempt)
    handler = declared.handler

    def handle(events: list[Event]) -> None:
        if declared.batch:
            handler(events)
            return
        for event in events:
            handler(event)

    return consume(
        consumer=name,
        event_ids=event_ids,
        handle=handle,
        group_by=declared.group_by or _by_aggregate,
        together=declared.together,
        attempt=attempt,
        settled=declared.settled,
        ordered=declared if is_ordered(declared) else None,
        upcast=declared.upcast,
    )


def _deliver_external(declared: "Consumer", event_ids: object, attempt: Attempt | None) -> Outcome:
    """Run an external consumer: each event alone, its call between its dedupe record's claim and mark,
    the declaration's session open across the message."""
    from outbox.consume.external import DedupeBusy, external_run

    windows: dict[int, float] = {}
    with ExitStack() as stack:
        session: object = None
        opened = False

        def handle(events: list[Event]) -> None:
            nonlocal session, opened
            if declared.session is not None and not opened:
                # Opened on the first event that needs a call (none when the message was all done),
                # with the message's runnable events, so that it can read what they need at once.
                session = stack.enter_context(declared.session(runnable))
                opened = True
            try:
                window = external_run(declared, events[0], session)
            except DedupeBusy as exc:
                raise RetryableError(str(exc)) from exc
            if window is not None:
                windows[events[0].id] = window

        runnable: list[Event] = []
        outcome = consume(
            consumer=declared.name,
            event_ids=event_ids,
            handle=handle,
            atomic=False,
            attempt=attempt,
            prepare=runnable.extend,
            ordered=declared if is_ordered(declared) else None,
            upcast=declared.upcast,
        )
    outcome.windows = windows
    return outcome
