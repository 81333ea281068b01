"""Backfill: give a consumer declared after the fact the retained history, in order, while live
traffic goes on.

A backfill covers the events after an id (or created since a time) of the consumer's types, up to
the newest event when it began: later events reach the consumer through the relay, which routes
to it from its declaration on. It walks them in id order, a chunk at a time. For each chunk, one
transaction creates the consumer's missing deliveries, `published`, and moves the backfill's
cursor; the messages go out after the commit. So:

- each event reaches the consumer once: a delivery is unique per (event, consumer), the backfill
  creates only those that do not exist (a live delivery, or a replay's, is counted as skipped),
  and events the relay has not published yet are left to it;
- a run killed at any point loses nothing: rerun the command and it resumes at the cursor; a
  chunk committed but not sent is `published` with no message, which the relay's sweeper sends
  after the redelivery deadline, as for any lost message;
- `--rate` throttles it, so the workers keep up with live traffic.

A second run of a backfill that another process is running (progress in the last minute, from a
process that is alive where it can be told) is refused.
"""

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from outbox import conf
from outbox.backends import ops
from outbox.consume.declare import ALL, Consumer, NoSuchConsumer, enabled_consumer
from outbox.consume.publish import PublishFailed, enqueue_all
from outbox.models import Backfill, Delivery, Event, Pending
from outbox.relay import routing, sweeper

logger = logging.getLogger(__name__)

CHUNK = 1000
# A backfill whose runner made no progress for this long is taken to be dead: another may resume it.
STALE_SECONDS = 60.0


class BackfillRefused(Exception):
    """The backfill cannot start or resume: the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What a backfill would do, from a dry run."""

    consumer: str
    types: list[str]
    after: int
    upto: int
    events: int  # of the consumer's types in the range, published
    missing: int  # of those, the ones with no delivery to the consumer: what it would create


def consumer_for(name: str) -> Consumer:
    """The enabled consumer named `name`, or BackfillRefused naming the ones there are."""
    try:
        return enabled_consumer(name)
    except NoSuchConsumer as exc:
        raise BackfillRefused(f"{exc} Nothing was done.") from None


def types_for(declared: Consumer, types: Sequence[str]) -> list[str]:
    """The event types to send: those asked for, each one the consumer takes; by default all it takes."""
    if not types:
        return [] if ALL in declared.events else sorted(declared.events)
    refused = sorted(t for t in types if not declared.takes(t))
    if refused:
        raise BackfillRefused(
            f"Consumer {declared.name!r} does not take {', '.join(refused)}; it takes "
            f"{', '.join(sorted(declared.events))}. Leave those types out of --types."
        )
    return sorted(set(types))


def start_after(*, after: int | None, since: datetime | None) -> int:
    """The event id the range begins after: `after`, or the one before the first event created since `since`."""
    if after is not None:
        return after
    if since is None:
        return 0
    first = Event.objects.filter(created_at__gte=since).order_by("id").values_list("id", flat=True).first()
    return first - 1 if first is not None else _newest_event_id()


def _newest_event_id() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _events(types: list[str], *, after: int, upto: int) -> QuerySet[Event]:
    events = Event.objects.filter(id__gt=after, id__lte=upto)
    if types:
        events = events.filter(event_type__in=types)
    # Not yet published: the relay sends it, to this consumer as to the others.
    return events.filter(~Exists(Pending.objects.filter(event_id=OuterRef("id"))))


def plan(name: str, *, types: Sequence[str] = (), after: int | None = None, since: datetime | None = None) -> Plan:
    """What a backfill of `name` would send now, counted; nothing is written."""
    declared = consumer_for(name)
    chosen = types_for(declared, types)
    start = start_after(after=after, since=since)
    upto = _newest_event_id()
    events = _events(chosen, after=start, upto=upto)
    missing = events.filter(~Exists(Delivery.objects.filter(event_id=OuterRef("id"), consumer=name)))
    return Plan(name, chosen, start, upto, events.count(), missing.count())


def _runner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def begin(
    name: str,
    *,
    types: Sequence[str] = (),
    after: int | None = None,
    since: datetime | None = None,
    rate: int | None = None,
    requested_by: str,
) -> tuple[Backfill, bool]:
    """Start a backfill of `name`, or resume its unfinished one; return it and whether it resumed.

    An unfinished backfill with other options is refused (finish it, or abandon it first), as is
    one that another process is running.
    """
    declared = consumer_for(name)
    chosen = types_for(declared, types)
    with transaction.atomic():
        running = Backfill.objects.select_for_update().filter(consumer=name, status=Backfill.Status.RUNNING).first()
        if running is not None:
            _may_resume(running, types=chosen, after=after, since=since)
            running.runner, running.beat_at = _runner(), Now()
            if rate is not None:
                running.rate = rate
            running.save(update_fields=["runner", "beat_at", "rate"])
            running.refresh_from_db(fields=["beat_at"])
            return running, True
        start = start_after(after=after, since=since)
        upto = _newest_event_id()
        try:
            with transaction.atomic():
                record = Backfill.objects.create(
                    consumer=name,
                    types=chosen,
                    after=start,
                    since=since,
                    upto=upto,
                    rate=rate,
                    cursor=start,
                    requested_by=requested_by,
                    runner=_runner(),
                    beat_at=Now(),
                )
                record.refresh_from_db(fields=["beat_at", "started_at"])
        except IntegrityError:  # another process began one this instant
            raise BackfillRefused(
                f"Another backfill of {name} began just now; run the command again to resume it."
            ) from None
    return record, False


def _may_resume(running: Backfill, *, types: list[str], after: int | None, since: datetime | None) -> None:
    other = (
        sorted(running.types) != types
        or (after is not None and after != running.after)
        or (since is not None and since != running.since)
    )
    if other:
        raise BackfillRefused(
            f"Backfill {running.pk} of {running.consumer} is unfinished (after event {running.after}, types "
            f"{', '.join(running.types) or 'all it takes'}; at event {running.cursor} of {running.upto}). Run the "
            "command with its options to resume it, or with --abandon to give it up first."
        )
    elsewhere = bool(running.runner) and running.runner != _runner()
    if elsewhere and not stalled(running, now=ops().now()) and _may_be_alive(running.runner):
        raise BackfillRefused(
            f"Backfill {running.pk} of {running.consumer} is being run by {running.runner} (progress at "
            f"{running.beat_at:%H:%M:%S}); let it finish. If that process is gone, run this again after "
            f"{STALE_SECONDS:.0f} s without progress."
        )


def stalled(record: Backfill, *, now: datetime) -> bool:
    """Whether the backfill's runner made no progress for STALE_SECONDS: taken to be dead."""
    return record.beat_at is None or now - record.beat_at > timedelta(seconds=STALE_SECONDS)


def _may_be_alive(runner: str) -> bool:
    """Whether the process named `host:pid` may still run: on another host it may; here, only if its pid is."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandon(name: str) -> Backfill | None:
    """Give up the consumer's unfinished backfill (the deliveries it created stay); return it, or None."""
    with transaction.atomic():
        running = Backfill.objects.select_for_update().filter(consumer=name, status=Backfill.Status.RUNNING).first()
        if running is None:
            return None
        running.status, running.finished_at = Backfill.Status.ABANDONED, timezone.now()
        running.save(update_fields=["status", "finished_at"])
        return running


# publications: 1 for a message sent to the broker; 0 where the relay's sweeper sends it (in process).
_CREATE = """
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, updated_at)
SELECT e.id, %s, 'published', %s, 0, '', %s, CURRENT_TIMESTAMP FROM outbox_event e WHERE e.id IN ({ids})
ON CONFLICT (event_id, consumer) DO NOTHING
RETURNING event_id
"""


def run(
    record: Backfill,
    *,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Backfill:
    """Walk the backfill's range from its cursor to the end, chunk by chunk; return it, done.

    `progress(n)` is told how far each chunk moved the cursor (in event ids); `stop()`, asked after each chunk,
    ends the run early (the backfill stays `running`, to resume).
    """
    routing.load_actors()
    broker = dramatiq.get_broker()
    # The embedded default's broker is inside the relay: its sweeper sends them, due at once.
    in_process = sweeper.sends_for(broker)
    limit = conf.message_max_ids()
    while True:
        started = time.monotonic()
        ids = list(
            _events(record.types, after=record.cursor, upto=record.upto)
            .order_by("id")
            .values_list("id", flat=True)[:chunk]
        )
        last = ids[-1] if ids else record.upto
        with transaction.atomic():
            created = _create(record.consumer, ids, in_process=in_process)
            changed = _ours(record).update(
                cursor=last,
                created=F("created") + len(created),
                skipped=F("skipped") + len(ids) - len(created),
                beat_at=Now(),
            )
            if not changed:
                raise _lost(record)
        moved = last - record.cursor
        record.cursor = last
        record.created += len(created)
        record.skipped += len(ids) - len(created)
        if not in_process:
            _send(
                record,
                broker,
                [routing.message(record.consumer, created[i : i + limit]) for i in range(0, len(created), limit)],
            )
        if progress is not None:
            progress(moved)
        if not ids or last >= record.upto:
            break
        if stop is not None and stop():
            return record
        if record.rate:
            _pause(record, len(ids) / record.rate - (time.monotonic() - started))
    record.status, record.finished_at = Backfill.Status.DONE, timezone.now()
    if not _ours(record).update(status=record.status, finished_at=record.finished_at, cursor=record.upto):
        raise _lost(record)
    record.cursor = record.upto
    return record


def _send(record: Backfill, broker: dramatiq.Broker, messages: list[dramatiq.Message[Any]]) -> None:
    """Enqueue a chunk's messages. While the broker is unreachable (a restart), try again with a
    growing pause, beating meanwhile, for up to the redelivery deadline; then go on without them:
    their deliveries are committed `published`, so the relay's sweeper sends them, as it does any
    lost message."""
    deadline = time.monotonic() + conf.redelivery_seconds()
    pause = 0.5
    while True:
        try:
            enqueue_all(messages, broker)
            return
        except PublishFailed as e:
            if time.monotonic() + pause > deadline:
                logger.warning(
                    "Backfill %s: the broker is unreachable (%s); the relay's sweeper will send the %d messages "
                    "of this chunk after its redelivery deadline",
                    record.pk,
                    e,
                    len(messages),
                )
                return
            logger.warning("Backfill %s: the broker is unreachable (%s); trying again in %.1f s", record.pk, e, pause)
            _pause(record, pause)
            pause = min(pause * 2, 5.0)


def _ours(record: Backfill) -> QuerySet[Backfill]:
    """The backfill's row while this process runs it (not finished, abandoned or taken over)."""
    return Backfill.objects.filter(pk=record.pk, status=Backfill.Status.RUNNING, runner=_runner())


def _lost(record: Backfill) -> BackfillRefused:
    """Why a run may not go on with its backfill: the row says what became of it."""
    row = Backfill.objects.filter(pk=record.pk).values_list("status", "runner").first()
    if row is None:
        return BackfillRefused(f"Backfill {record.pk} no longer exists; it stopped at event {record.cursor}.")
    status, runner = row
    if status != Backfill.Status.RUNNING:
        return BackfillRefused(
            f"Backfill {record.pk} was {status} meanwhile; this run stopped at event {record.cursor}."
        )
    return BackfillRefused(
        f"Backfill {record.pk} was taken over by {runner} (this run made no progress for {STALE_SECONDS:.0f} s); "
        f"this run stopped at event {record.cursor}, and the other goes on."
    )


def _pause(record: Backfill, seconds: float) -> None:
    """Sleep for the throttle, beating meanwhile, so that a slow rate never looks like a dead run."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, STALE_SECONDS / 4))
        if left > STALE_SECONDS / 4 and not _ours(record).update(beat_at=Now()):
            raise _lost(record)


def _create(consumer: str, ids: list[int], *, in_process: bool) -> list[int]:
    """Create the consumer's missing deliveries of these events, published; return their ids in order."""
    if not ids:
        return []
    stamp = connection.ops.adapt_datetimefield_value(sweeper.published_now(by_sweeper=in_process))
    with connection.cursor() as cursor:
        cursor.execute(
            _CREATE.format(ids=", ".join(["%s"] * len(ids))), [consumer, 0 if in_process else 1, stamp, *ids]
        )
        return sorted(row[0] for row in cursor.fetchall())
