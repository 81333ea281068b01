"""Per-aggregate order for the consumers declared `ordered=True`.

An ordered consumer handles each aggregate's events in version order, whatever order the relays
and workers bring them in. An event's *predecessor* (for the consumer) is the aggregate's latest
earlier event of a type the consumer takes. The event may run once its predecessor's delivery is
done; or when the predecessor is dead and the consumer's `on_dead` is `skip`; or when the
predecessor was never routed to the consumer (no delivery, not waiting in the backlog, not awaited
from a running backfill). Otherwise it waits.

Waiting holds no transaction and no worker: the delivery is recorded `waiting` and the message
ends. Whoever finishes the predecessor releases it afterwards: once its transaction committed, the
worker looks for waiting deliveries of the aggregates it finished and publishes those now ready
(with their own ready successors, in one message, so a chain unblocks in order). The parking
worker looks again too, after its own commit, so that a predecessor finishing in between is never
missed: each side writes, commits, then reads what the other wrote. The relay's sweeper is the
backstop (a worker killed between its commit and its release): it re-examines deliveries waiting
longer than WAITING_RECHECK_SECONDS.

A dead event blocks only its own aggregate, and only for `on_dead="block"` (the default);
`blocked()` lists those aggregates, for outbox_status, the dashboard and /metrics. Replaying the
dead event unblocks the rest, in order.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Count, Exists, Min, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from outbox import conf
from outbox.models import Backfill, Delivery, Event, Pending

if TYPE_CHECKING:
    from outbox.consume.declare import Consumer

logger = logging.getLogger("outbox.consumer")

WAITING_RECHECK_SECONDS = 5.0
# Blocked aggregates are counted up to this many: a status stays cheap after a mass failure.
BLOCKED_COUNT_CAP = 10_000
# Aggregates per release query (each is one condition of its WHERE).
RELEASE_CHUNK = 200
# Up to this many waiting deliveries of a consumer, a release reads them all and picks its own.
WAITING_SCAN = 1000

Aggregate = tuple[str, str]


def with_predecessors(events: "QuerySet[Event]", declared: "Consumer") -> list[Event]:
    """Load the events, each with its predecessor for the consumer and that one's state for it.

    `pred_id` (None: the event is the aggregate's first for the consumer), `pred_status` (its
    delivery's status, None without one), `pred_pending` (still in the relay's backlog),
    `pred_backfill` (a running backfill of the consumer has yet to reach it) and, only for a
    predecessor that has no delivery, `pred_gap`: an earlier event of the aggregate whose
    delivery to the consumer is not settled (the predecessor never reached the consumer, so
    "the predecessor is done" says nothing of the events before it).

    The predecessor comes with the events (one index descent each), the predecessors' deliveries
    in one query for all; the backlog, the backfills and the gaps are asked only about
    predecessors without a delivery, which are rare.
    """
    from outbox.consume.declare import ALL, skips_dead

    typed = ALL not in declared.events
    earlier = Event.objects.filter(
        aggregate_type=OuterRef("aggregate_type"),
        aggregate_id=OuterRef("aggregate_id"),
        aggregate_version__lt=OuterRef("aggregate_version"),
    )
    if typed:
        earlier = earlier.filter(event_type__in=declared.events)
    annotated = list(events.annotate(pred_id=Subquery(earlier.order_by("-aggregate_version").values("id")[:1])))
    predecessor_of = {e.id: e.pred_id for e in annotated}
    predecessors = set(predecessor_of.values()) - {None}
    loaded: list[Event] = list(annotated)
    statuses: dict[int, str] = {}
    if predecessors:
        statuses = dict(
            Delivery.objects.filter(consumer=declared.name, event_id__in=predecessors).values_list("event_id", "status")
        )
    unrouted = predecessors - set(statuses)
    pending: set[int] = set()
    backfills: list[tuple[int, int]] = []
    if unrouted:
        pending = set(Pending.objects.filter(event_id__in=unrouted).values_list("event_id", flat=True))
        backfills = list(
            Backfill.objects.filter(consumer=declared.name, status=Backfill.Status.RUNNING).values_list(
                "cursor", "upto"
            )
        )
    settled = [Delivery.Status.DONE, *([Delivery.Status.DEAD] if skips_dead(declared) else [])]
    unsettled = Delivery.objects.filter(event_id=OuterRef("id"), consumer=declared.name).exclude(status__in=settled)
    for event in loaded:
        pred = predecessor_of[event.id]
        state = {
            "pred_status": statuses.get(pred),
            "pred_pending": pred in pending,
            "pred_backfill": pred is not None and any(cursor < pred <= upto for cursor, upto in backfills),
            "pred_gap": False,
        }
        if pred in unrouted and not (state["pred_pending"] or state["pred_backfill"]):
            before = Event.objects.filter(
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                aggregate_version__lt=event.aggregate_version,
            )
            if typed:
                before = before.filter(event_type__in=declared.events)
            state["pred_gap"] = before.filter(Exists(unsettled)).exists()
        for name, value in state.items():
            setattr(event, name, value)
    return loaded


def ready(event: Event, *, skip: bool) -> bool:
    """Whether the annotated event's predecessor lets it run now."""
    status = getattr(event, "pred_status", None)
    if getattr(event, "pred_id", None) is None or status == Delivery.Status.DONE:
        return True
    if status == Delivery.Status.DEAD:
        return skip
    if status is None:  # never routed to the consumer, unless it is on its way; then the one before decides
        return not (
            getattr(event, "pred_pending", False)
            or getattr(event, "pred_backfill", False)
            or getattr(event, "pred_gap", False)
        )
    return False


@dataclass
class Gate:
    """Which of a message's events may run, as the run goes (consume() asks before each group)."""

    # Event id → whether its predecessor let it run when the message's events were loaded.
    ready: dict[int, bool] = field(default_factory=dict)
    predecessor: dict[int, int | None] = field(default_factory=dict)
    # Done before or during this run.
    done: set[int] = field(default_factory=set)
    held: dict[int, Event] = field(default_factory=dict)

    @classmethod
    def over(cls, events: Iterable[Event], *, skip: bool) -> "Gate":
        gate = cls()
        for event in events:
            gate.ready[event.id] = ready(event, skip=skip)
            gate.predecessor[event.id] = getattr(event, "pred_id", None)
        return gate

    def admit(self, events: list[Event]) -> list[Event]:
        """Return the events (in the order given) that may run now, each after its predecessor;
        hold the rest."""
        admitted: list[Event] = []
        allowed: set[int] = set()
        for event in events:
            before = self.predecessor.get(event.id)
            if self.ready.get(event.id, False) or before in self.done or before in allowed:
                allowed.add(event.id)
                admitted.append(event)
                self.held.pop(event.id, None)
            else:
                self.held[event.id] = event
        return admitted

    def finished(self, event_ids: Iterable[int]) -> None:
        self.done.update(event_ids)


_PARK = """
INSERT INTO outbox_delivery
    (event_id, consumer, status, publications, attempts, last_error, published_at, updated_at)
VALUES {rows}
ON CONFLICT (event_id, consumer) DO UPDATE
    SET status = 'waiting', updated_at = CURRENT_TIMESTAMP
    WHERE outbox_delivery.status <> 'done'
"""
_RELEASE = """
UPDATE outbox_delivery
SET status = 'published', published_at = CURRENT_TIMESTAMP, updated_at = CURRENT_TIMESTAMP,
    publications = publications + 1
WHERE consumer = %s AND status = 'waiting' AND event_id IN ({ids})
RETURNING event_id
"""


def park(consumer: str, event_ids: list[int]) -> None:
    """Record the deliveries waiting for their predecessors (one statement, its own transaction)."""
    if not event_ids:
        return
    rows = ", ".join(["(%s, %s, 'waiting', 0, 0, '', NULL, CURRENT_TIMESTAMP)"] * len(event_ids))
    params: list[Any] = []
    for event_id in sorted(event_ids):
        params += [event_id, consumer]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_PARK.format(rows=rows), params)


def releasable(events: list[Event], *, skip: bool) -> list[int]:
    """Of the annotated waiting events, those to publish now: each ready, or after one that is."""
    chosen: set[int] = set()
    for event in sorted(events, key=lambda e: (e.aggregate_type, e.aggregate_id, e.aggregate_version)):
        if ready(event, skip=skip) or getattr(event, "pred_id", None) in chosen:
            chosen.add(event.id)
    return sorted(chosen)


def flip(consumer: str, event_ids: list[int]) -> list[int]:
    """Make the waiting deliveries published again; return those this call changed (one sender each)."""
    if not event_ids:
        return []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_RELEASE.format(ids=", ".join(["%s"] * len(event_ids))), [consumer, *event_ids])
        return sorted(row[0] for row in cursor.fetchall())


def waiting_after(declared: "Consumer", after: dict[Aggregate, int]) -> list[Event]:
    """The consumer's waiting events of these aggregates with a version above the one given, annotated.

    Asked after every message, so it starts from the consumer's waiting deliveries, which are few
    (none, mostly: one query of the partial index of waiting ones). Only when more than
    WAITING_SCAN wait does it ask by aggregate instead.
    """
    rows = list(
        Delivery.objects.filter(consumer=declared.name, status=Delivery.Status.WAITING).values_list(
            "event_id", "event__aggregate_type", "event__aggregate_id", "event__aggregate_version"
        )[: WAITING_SCAN + 1]
    )
    if len(rows) <= WAITING_SCAN:
        ids = [
            event_id
            for event_id, aggregate_type, aggregate_id, version in rows
            if version > after.get((aggregate_type, aggregate_id), version)
        ]
        return with_predecessors(Event.objects.filter(id__in=ids), declared) if ids else []
    found: list[Event] = []
    items = list(after.items())
    for start in range(0, len(items), RELEASE_CHUNK):
        condition = Q()
        for (aggregate_type, aggregate_id), version in items[start : start + RELEASE_CHUNK]:
            condition |= Q(aggregate_type=aggregate_type, aggregate_id=aggregate_id, aggregate_version__gt=version)
        waiting = Delivery.objects.filter(
            event_id=OuterRef("id"), consumer=declared.name, status=Delivery.Status.WAITING
        )
        found += with_predecessors(Event.objects.filter(condition).filter(Exists(waiting)), declared)
    return found


def release(declared: "Consumer", after: dict[Aggregate, int]) -> list[int]:
    """Publish the consumer's waiting events of these aggregates that may now run; return their ids.

    Call it after the transactions that finished (or parked) events of those aggregates committed.
    """
    from outbox.consume.declare import skips_dead

    if not after:
        return []
    ids = flip(declared.name, releasable(waiting_after(declared, after), skip=skips_dead(declared)))
    send(declared.name, ids)
    return ids


def send(consumer: str, event_ids: list[int]) -> None:
    """Publish messages for released deliveries. A broker error is logged: they are published
    already, so the sweeper sends them again after the redelivery deadline."""
    from outbox.consume.publish import enqueue_all
    from outbox.relay.routing import message

    limit = conf.message_max_ids()
    try:
        enqueue_all([message(consumer, event_ids[start : start + limit]) for start in range(0, len(event_ids), limit)])
    except Exception as exc:  # the broker's errors vary; the sweeper is the backstop for all of them
        logger.warning(
            "%s: %d deliveries released in order could not be published now (%s); the sweeper publishes them "
            "after the redelivery deadline",
            consumer,
            len(event_ids),
            exc,
        )


def recheck(*, limit: int) -> dict[str, list[int]]:
    """The sweeper's backstop: re-examine deliveries waiting longer than WAITING_RECHECK_SECONDS.

    Returns {consumer: event ids} released (made published), for the caller to publish; those still
    waiting are touched, so that the next pass looks at others first.
    """
    from outbox.consume.declare import declaration, enabled, is_ordered, skips_dead

    due = timezone.now() - timedelta(seconds=WAITING_RECHECK_SECONDS)
    # Only the consumers that can run: the waiting rows of one removed or switched off stay as
    # they are (a replay sends them once it is back), and never crowd out the others.
    names = [c.name for c in enabled()]
    rows = list(
        Delivery.objects.filter(status=Delivery.Status.WAITING, updated_at__lt=due, consumer__in=names)
        .order_by("updated_at")
        .values_list("consumer", "event_id")[:limit]
    )
    by_consumer: dict[str, list[int]] = {}
    for consumer, event_id in rows:
        by_consumer.setdefault(consumer, []).append(event_id)
    released: dict[str, list[int]] = {}
    for consumer, ids in by_consumer.items():
        declared = declaration(consumer)
        if declared is None:
            continue
        if is_ordered(declared):
            chosen = releasable(
                with_predecessors(Event.objects.filter(id__in=ids), declared), skip=skips_dead(declared)
            )
        else:  # no longer ordered: nothing to wait for
            chosen = sorted(ids)
        flipped = flip(consumer, chosen)
        if flipped:
            released[consumer] = flipped
        still = sorted(set(ids) - set(flipped))
        if still:
            Delivery.objects.filter(consumer=consumer, event_id__in=still, status=Delivery.Status.WAITING).update(
                updated_at=timezone.now()
            )
    return released


@dataclass(frozen=True)
class Blocked:
    """An aggregate an ordered consumer cannot go on with until its dead event is replayed."""

    consumer: str
    aggregate_type: str
    aggregate_id: str
    event_id: int
    event_type: str
    aggregate_version: int
    error: str
    waiting: int


def blocked(declared: "Consumer", *, limit: int = 50) -> tuple[int, list[Blocked]]:
    """Return how many aggregates the consumer's dead events block, and the first `limit` of them,
    with the blocking event and how many events wait behind it. None for a consumer that is not
    ordered, or that skips its dead events."""
    from outbox.consume.declare import is_ordered, skips_dead

    if not is_ordered(declared) or skips_dead(declared):
        return 0, []
    dead = Delivery.objects.filter(consumer=declared.name, status=Delivery.Status.DEAD)
    per_aggregate = (
        Event.objects.filter(Exists(dead.filter(event_id=OuterRef("id"))))
        .values("aggregate_type", "aggregate_id")
        .annotate(first=Min("aggregate_version"))
    )
    total = per_aggregate.order_by()[:BLOCKED_COUNT_CAP].count()
    rows = list(per_aggregate.order_by("aggregate_type", "aggregate_id")[:limit])
    if not rows:
        return total, []
    condition = Q()
    for row in rows:
        condition |= Q(
            aggregate_type=row["aggregate_type"], aggregate_id=row["aggregate_id"], aggregate_version=row["first"]
        )
    blocking = {
        (e.aggregate_type, e.aggregate_id): e
        for e in Event.objects.filter(condition).only(
            "id", "event_type", "aggregate_type", "aggregate_id", "aggregate_version"
        )
    }
    errors = dict(dead.filter(event_id__in=[e.id for e in blocking.values()]).values_list("event_id", "last_error"))
    waiting = {
        (row["event__aggregate_type"], row["event__aggregate_id"]): row["n"]
        for row in Delivery.objects.filter(consumer=declared.name, status=Delivery.Status.WAITING)
        .filter(
            event__aggregate_type__in={r["aggregate_type"] for r in rows},
            event__aggregate_id__in={r["aggregate_id"] for r in rows},
        )
        .values("event__aggregate_type", "event__aggregate_id")
        .annotate(n=Count("id"))
    }
    found = []
    for key, event in sorted(blocking.items()):
        error = errors.get(event.id, "")
        found.append(
            Blocked(
                consumer=declared.name,
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                event_id=event.id,
                event_type=event.event_type,
                aggregate_version=event.aggregate_version,
                error=error.splitlines()[0][:200] if error else "",
                waiting=waiting.get(key, 0),
            )
        )
    return total, found
