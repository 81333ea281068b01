"""Replay: send deliveries to their consumers again, on an operator's request.

Safe because every consumer is idempotent: a delivery that is done is skipped by its consumer,
so replaying one is refused unless forced (forcing makes the consumer run the event again: stock
and e-mail still happen once, since their own records say so; the audit log writes a second line).
Every replay is recorded (outbox_replay: who, when, why, which deliveries), and needs the
`outbox.replay_delivery` permission.
"""

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from outbox import conf
from outbox.models import Delivery, Event, Replay, ReplayItem
from outbox.relay import routing, sweeper

REPLAYABLE = (Delivery.Status.FAILED, Delivery.Status.DEAD, Delivery.Status.PUBLISHED)
MESSAGE_SIZE = 1000


def deliveries(count: int) -> str:
    """'1 delivery', '2 deliveries'."""
    return f"{count} delivery" if count == 1 else f"{count} deliveries"


class ReplayRefused(Exception):
    """The replay was not sent: the reason says what to do."""


@dataclass
class Criteria:
    """Which deliveries to replay. Empty fields do not filter."""

    consumers: Sequence[str] = ()
    event_types: Sequence[str] = ()
    statuses: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    aggregate: str = ""  # "order:7" or "order"
    event_ids: Sequence[int] = ()
    delivery_ids: Sequence[int] = ()

    def as_dict(self) -> dict[str, Any]:
        data = {
            "consumers": list(self.consumers),
            "event_types": list(self.event_types),
            "statuses": list(self.statuses),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "aggregate": self.aggregate,
            "event_ids": list(self.event_ids)[:1000],
            "delivery_ids": list(self.delivery_ids)[:1000],
        }
        return {k: v for k, v in data.items() if v}


@dataclass
class Summary:
    """What a replay did (or, dry, would do)."""

    selected: int = 0
    sent: int = 0
    refused_done: int = 0
    by_consumer: dict[str, int] = field(default_factory=dict)
    replay_id: int | None = None
    dry_run: bool = False
    # Left out: sent again by another replay moments ago, and still in flight.
    in_flight: int = 0
    in_flight_replay: "Replay | None" = None


def select(criteria: Criteria) -> QuerySet[Delivery]:
    """Return the deliveries the criteria select, oldest event first."""
    deliveries = Delivery.objects.all()
    if criteria.consumers:
        deliveries = deliveries.filter(consumer__in=criteria.consumers)
    if criteria.statuses:
        deliveries = deliveries.filter(status__in=criteria.statuses)
    if criteria.delivery_ids:
        deliveries = deliveries.filter(id__in=criteria.delivery_ids)
    if criteria.event_ids:
        deliveries = deliveries.filter(event_id__in=criteria.event_ids)
    events, narrowed = _events(criteria)
    if narrowed:
        deliveries = deliveries.filter(event_id__in=events.values("id"))
    return deliveries.order_by("event_id", "consumer")


def events_select(criteria: Criteria) -> QuerySet[Event]:
    """Return the events the criteria's event filters select (ids, types, dates, aggregate), oldest first."""
    events, _ = _events(criteria)
    if criteria.event_ids:
        events = events.filter(id__in=criteria.event_ids)
    return events.order_by("id")


def _events(criteria: Criteria) -> tuple[QuerySet[Event], bool]:
    events = Event.objects.all()
    narrowed = False
    if criteria.event_types:
        events, narrowed = events.filter(event_type__in=criteria.event_types), True
    if criteria.since:
        events, narrowed = events.filter(created_at__gte=criteria.since), True
    if criteria.until:
        events, narrowed = events.filter(created_at__lt=criteria.until), True
    if criteria.aggregate:
        kind, _, ident = criteria.aggregate.partition(":")
        events, narrowed = events.filter(aggregate_type=kind), True
        if ident:
            events = events.filter(aggregate_id=ident)
    return events, narrowed


def replay(
    deliveries: Iterable[Delivery],
    *,
    requested_by: str,
    reason: str,
    source: str,
    criteria: dict[str, Any] | None = None,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Send the deliveries to their consumers again; record who, why and which.

    Done deliveries are counted and skipped unless `force`. Each is set back to `published` (so
    the sweeper sends it again if this message is lost) before its message is sent.
    """
    if not reason.strip():
        raise ReplayRefused("Say why you replay (--reason): the replay is recorded with it.")
    summary = Summary(dry_run=dry_run)
    wanted: list[Delivery] = []
    for delivery in deliveries:
        summary.selected += 1
        if delivery.status == Delivery.Status.DONE and not force:
            summary.refused_done += 1
            continue
        wanted.append(delivery)
    counts: dict[str, int] = defaultdict(int)
    for delivery in wanted:
        counts[delivery.consumer] += 1
    summary.by_consumer = dict(counts)
    if dry_run or not wanted:
        return summary
    routing.load_actors()
    broker = dramatiq.get_broker()
    unknown = sorted({d.consumer for d in wanted} - set(broker.get_declared_actors()))
    if unknown:
        raise ReplayRefused(
            f"No consumer named {', '.join(unknown)} exists in this deployment; nothing was sent. "
            "Leave those deliveries out (--consumer), or deploy the consumer first."
        )
    # The in-process broker (embedded default) exists only inside the relay: hand the deliveries
    # to its sweeper, due at once, instead of to a broker no worker reads here.
    in_process = sweeper.sends_for(broker)
    counts.clear()
    for start in range(0, len(wanted), MESSAGE_SIZE):
        chunk = wanted[start : start + MESSAGE_SIZE]
        with transaction.atomic():
            _create_missing(chunk)
            chunk = _not_in_flight(chunk, summary)
            if not chunk:
                continue
            if summary.replay_id is None:
                record = Replay.objects.create(
                    requested_by=requested_by,
                    reason=reason,
                    source=source,
                    criteria=criteria or {},
                    forced=force,
                    deliveries=len(wanted),
                )
                summary.replay_id = record.pk
            ReplayItem.objects.bulk_create(
                ReplayItem(
                    replay_id=summary.replay_id, event_id=d.event_id, consumer=d.consumer, previous_status=d.status
                )
                for d in chunk
            )
            Delivery.objects.filter(id__in=[d.id for d in chunk]).update(
                status=Delivery.Status.PUBLISHED,
                published_at=sweeper.published_now(by_sweeper=in_process),
                publications=F("publications") + (0 if in_process else 1),
                updated_at=timezone.now(),
            )
        by_consumer: dict[str, list[int]] = defaultdict(list)
        for d in chunk:
            by_consumer[d.consumer].append(d.event_id)
            counts[d.consumer] += 1
        for consumer, ids in by_consumer.items():
            if not in_process:
                broker.enqueue(routing.message(consumer, ids))
        summary.sent += len(chunk)
        if progress:
            progress(len(chunk))
    summary.by_consumer = dict(counts)
    if not summary.sent and summary.in_flight_replay is not None:
        raise ReplayRefused(f"{_in_flight_text(summary)} Nothing was sent again.")
    return summary


def _not_in_flight(chunk: list[Delivery], summary: Summary) -> list[Delivery]:
    """Return the chunk less the deliveries another replay has just sent, locked until commit.

    Two operators confirming one replay at once (or one confirming twice) would each send every
    delivery. Under the row locks, taken in event order as the relay takes them, the second finds
    the first's replay items committed and the deliveries still in flight: it leaves them out.
    Once the redelivery deadline has passed, the sweeper's rule applies, and a replay may send
    them again.
    """
    locked = {
        d.id: d.status
        for d in Delivery.objects.select_for_update()
        .filter(id__in=[d.id for d in chunk])
        .order_by("event_id", "consumer")
        .only("id", "status")
    }
    recent = timezone.now() - timedelta(seconds=conf.redelivery_seconds())
    pairs = {(d.event_id, d.consumer) for d in chunk if locked.get(d.id) == Delivery.Status.PUBLISHED}
    items = (
        ReplayItem.objects.filter(event_id__in=[e for e, _ in pairs], replay__created_at__gte=recent)
        .select_related("replay")
        .order_by("-replay_id")
    )
    replayed: dict[tuple[int, str], Replay] = {}
    for item in items:
        if (item.event_id, item.consumer) in pairs:
            replayed.setdefault((item.event_id, item.consumer), item.replay)
    kept = [d for d in chunk if (d.event_id, d.consumer) not in replayed]
    if replayed:
        summary.in_flight += len(chunk) - len(kept)
        latest = max(replayed.values(), key=lambda r: r.pk)
        if summary.in_flight_replay is None or latest.pk > summary.in_flight_replay.pk:
            summary.in_flight_replay = latest
    return kept


def _in_flight_text(summary: Summary) -> str:
    record = summary.in_flight_replay
    assert record is not None
    when = timezone.localtime(record.created_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        f"{deliveries(summary.in_flight)} already replayed by {record.requested_by} at {when} "
        f"(replay {record.pk}) and still in flight: left out (the sweeper sends them again if that message is lost)."
    )


def in_flight_note(summary: Summary) -> str:
    """Return what was left out as just replayed by someone else ("" when nothing was)."""
    return _in_flight_text(summary) if summary.in_flight_replay is not None else ""


def deliveries_for(event_ids: Sequence[int], consumer: str) -> list[Delivery]:
    """Return the deliveries of these events to `consumer`, in the events' order. Those that do
    not exist (an event published before the consumer was routed to it) are unsaved, id None:
    replay() creates them in the transaction that records and sends them, so that nothing is
    created when nothing is sent. Ids that name no event are left out."""
    existing = {d.event_id: d for d in Delivery.objects.filter(event_id__in=event_ids, consumer=consumer)}
    absent = [i for i in event_ids if i not in existing]
    known = set(Event.objects.filter(pk__in=absent).values_list("id", flat=True)) if absent else set()
    return [
        existing[i] if i in existing else Delivery(event_id=i, consumer=consumer, status="", last_error="")
        for i in event_ids
        if i in existing or i in known
    ]


def _create_missing(chunk: list[Delivery]) -> None:
    """Create the chunk's unsaved deliveries (deliveries_for()), and give each its id; one made
    meanwhile by someone else (the relay) is taken as it is."""
    missing = [d for d in chunk if d.pk is None]
    if not missing:
        return
    Delivery.objects.bulk_create(
        [
            Delivery(event_id=d.event_id, consumer=d.consumer, status=Delivery.Status.FAILED, last_error="")
            for d in missing
        ],
        ignore_conflicts=True,
    )
    for consumer in {d.consumer for d in missing}:
        mine = [d for d in missing if d.consumer == consumer]
        rows = Delivery.objects.filter(consumer=consumer, event_id__in=[d.event_id for d in mine])
        ids = dict(rows.values_list("event_id", "id"))
        for d in mine:
            d.pk = d.id = ids[d.event_id]
