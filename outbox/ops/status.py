"""Selectors for the outbox's state, for `outbox_status`, `/metrics` and the admin dashboard.

Every query here stays cheap however long the history grows: it reads the backlog
(outbox_pending, which holds only unpublished events), the small heartbeat and job tables, or
deliveries through a partial index that holds only the unsettled ones (published; failed and
dead). Settled (`done`) deliveries are never counted: on PostgreSQL their number is estimated
from the planner's statistics of the table.
"""

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import Now, TruncMinute

from outbox import conf
from outbox.backends import ops
from outbox.consume import ordering
from outbox.models import Backfill, Delivery, Event, JobRun, Pending, RelayHeartbeat
from outbox.ops.backfill import stalled
from outbox.ops.jobs import OUTCOME_OK, jobs_configured

# Deliveries counted exactly: each status is bounded by a partial index (see Delivery.Meta).
COUNTED_STATUSES = (Delivery.Status.PUBLISHED, Delivery.Status.WAITING, Delivery.Status.FAILED, Delivery.Status.DEAD)
BLOCKED_SHOWN = 20
LATENCY_SAMPLE_EVENTS = 1000


@dataclass
class RelayState:
    """One relay's heartbeat, as of the status's time."""

    name: str
    host: str
    pid: int
    started_at: datetime
    beat_at: datetime
    age_seconds: float
    events_relayed: int
    stale: bool


@dataclass
class JobState:
    """The latest run of one configured periodic job (all None if it never ran)."""

    job: str
    daily_at: str
    period: str | None = None
    runner: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the latest run finished with an error."""
        return self.finished_at is not None and not (self.outcome or "").startswith(OUTCOME_OK)


@dataclass
class BackfillState:
    """A backfill that has not finished (`outbox_backfill`), and how far it got."""

    id: int
    consumer: str
    progress: float  # from 0 to 1, of its range of event ids
    cursor: int
    upto: int
    created: int
    skipped: int
    runner: str
    beat_at: datetime | None
    # No progress for longer than a live run leaves between chunks: its process is gone.
    stalled: bool


@dataclass
class BlockedState:
    """An ordered consumer's aggregates held back by dead events (outbox/consume/ordering.py)."""

    # Aggregates blocked (counted up to ordering.BLOCKED_COUNT_CAP), and the first of them.
    count: int
    aggregates: list[dict[str, Any]]


@dataclass
class OutboxStatus:
    """The outbox's state: backlog, deliveries, relays and jobs, and what needs attention."""

    at: datetime
    backlog: int
    backlog_claimed: int
    oldest_pending_age_seconds: float | None
    # consumer → status → count, for the statuses in COUNTED_STATUSES (zeros included).
    deliveries: dict[str, dict[str, int]]
    done_estimate: int | None
    relays: list[RelayState]
    jobs: list[JobState]
    backfills: list[BackfillState] = field(default_factory=list)
    # Per ordered consumer that blocks on dead events: the aggregates blocked, with the blocking event.
    blocked_aggregates: dict[str, BlockedState] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)

    def total(self, status: str) -> int:
        """Return the number of deliveries in `status` (one of COUNTED_STATUSES), all consumers."""
        return sum(counts.get(status, 0) for counts in self.deliveries.values())

    def as_dict(self) -> dict[str, Any]:
        """Return the status as plain JSON-ready values (times as ISO 8601 strings)."""
        data = asdict(self)
        data["dead"] = self.total(Delivery.Status.DEAD)
        data["failed"] = self.total(Delivery.Status.FAILED)
        data["published"] = self.total(Delivery.Status.PUBLISHED)
        data["waiting"] = self.total(Delivery.Status.WAITING)
        for job, state in zip(data["jobs"], self.jobs, strict=True):
            job["failed"] = state.failed
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def database_now() -> datetime:
    """Return the database's clock (PostgreSQL), or this machine's (SQLite, one machine)."""
    return ops().now()


def backlog_counts() -> tuple[int, int]:
    """Return (events waiting to be published, of which claimed by a relay under a live lease)."""
    row = Pending.objects.aggregate(total=Count("pk"), claimed=Count("pk", filter=Q(claimed_until__gt=Now())))
    return row["total"], row["claimed"]


def oldest_pending_created_at() -> datetime | None:
    """Return when the oldest waiting event was committed, or None when nothing waits.

    "Oldest" is the lowest id in the backlog: one index lookup, however long the backlog. An
    event that took its id early and committed late may be a little older than that one.
    """
    lowest = Pending.objects.order_by("event_id").values_list("event_id", flat=True).first()
    if lowest is None:
        return None
    return Event.objects.filter(pk=lowest).values_list("created_at", flat=True).first()


def delivery_counts() -> dict[str, dict[str, int]]:
    """Return consumer → status → number of deliveries, for published, failed and dead.

    Three queries, each matching one partial index's condition exactly, so that each reads only
    the index's rows (in flight; waiting; failed or dead), never the settled history.
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTED_STATUSES, 0))
    for statuses in (
        [Delivery.Status.PUBLISHED],
        [Delivery.Status.WAITING],
        [Delivery.Status.FAILED, Delivery.Status.DEAD],
    ):
        rows = (
            Delivery.objects.filter(status__in=statuses)
            .values_list("consumer", "status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for consumer, status, n in rows:
            counts[consumer][status] = n
    return {consumer: counts[consumer] for consumer in sorted(counts)}


def done_estimate(counted: int) -> int | None:
    """Return about how many deliveries are done: the planner's row estimate of the table, less
    the `counted` unsettled ones. Exact on SQLite (the embedded default is small); None when
    PostgreSQL has not analysed the table yet.
    """
    return ops().deliveries_done_estimate(counted)


def relay_states(*, now: datetime) -> list[RelayState]:
    """Return every relay's heartbeat with its age at `now`, flagged stale past the threshold."""
    stale_after = conf.heartbeat_stale_seconds()
    states = []
    for beat in RelayHeartbeat.objects.order_by("name"):
        age = max(0.0, (now - beat.beat_at).total_seconds())
        states.append(
            RelayState(
                name=beat.name,
                host=beat.host,
                pid=beat.pid,
                started_at=beat.started_at,
                beat_at=beat.beat_at,
                age_seconds=round(age, 1),
                events_relayed=beat.events_relayed,
                stale=age > stale_after,
            )
        )
    return states


def job_states() -> list[JobState]:
    """Return the latest run of each configured periodic job (one indexed lookup per job)."""
    states = []
    for job in jobs_configured():
        state = JobState(job=job.name, daily_at=job.daily_at.strftime("%H:%M"))
        run = JobRun.objects.filter(job=job.name).order_by("-period").first()
        if run is not None:
            state.period, state.runner, state.outcome = run.period, run.runner, run.outcome
            state.started_at, state.finished_at = run.started_at, run.finished_at
        states.append(state)
    return states


def backfill_states(*, now: datetime) -> list[BackfillState]:
    """Return the unfinished backfills (one per consumer at most: a small, indexed read)."""
    states = []
    for record in Backfill.objects.filter(status=Backfill.Status.RUNNING).order_by("id"):
        states.append(
            BackfillState(
                id=record.pk,
                consumer=record.consumer,
                progress=round(record.progress, 4),
                cursor=record.cursor,
                upto=record.upto,
                created=record.created,
                skipped=record.skipped,
                runner=record.runner,
                beat_at=record.beat_at,
                stalled=stalled(record, now=now),
            )
        )
    return states


def blocked_states(deliveries: dict[str, dict[str, int]]) -> dict[str, BlockedState]:
    """Return, per ordered consumer with dead deliveries that block, its blocked aggregates.

    Only consumers with a dead delivery are asked (the counts are at hand): each question reads
    that consumer's dead deliveries, by the partial index of failed and dead ones.
    """
    from outbox.consume.declare import declaration, is_ordered, skips_dead

    states = {}
    for consumer, counts in deliveries.items():
        declared = declaration(consumer)
        if not counts.get(Delivery.Status.DEAD) or declared is None:
            continue
        if not is_ordered(declared) or skips_dead(declared):
            continue
        count, rows = ordering.blocked(declared, limit=BLOCKED_SHOWN)
        states[consumer] = BlockedState(
            count=count,
            aggregates=[
                {
                    "aggregate": f"{row.aggregate_type}:{row.aggregate_id}",
                    "event_id": row.event_id,
                    "event_type": row.event_type,
                    "aggregate_version": row.aggregate_version,
                    "waiting": row.waiting,
                    "error": row.error,
                }
                for row in rows
            ],
        )
    return states


def outbox_status() -> OutboxStatus:
    """Return the outbox's state now, with the list of what needs an operator's attention."""
    now = database_now()
    backlog, claimed = backlog_counts()
    oldest = oldest_pending_created_at()
    deliveries = delivery_counts()
    counted = sum(sum(by_status.values()) for by_status in deliveries.values())
    status = OutboxStatus(
        at=now,
        backlog=backlog,
        backlog_claimed=claimed,
        oldest_pending_age_seconds=None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 1),
        deliveries=deliveries,
        done_estimate=done_estimate(counted),
        relays=relay_states(now=now),
        jobs=job_states(),
        backfills=backfill_states(now=now),
        blocked_aggregates=blocked_states(deliveries),
    )
    status.attention = attention(status)
    return status


def attention(status: OutboxStatus) -> list[str]:
    """Return one sentence per thing an operator should look at (empty when all is well)."""
    notes = []
    dead = {consumer: counts[Delivery.Status.DEAD] for consumer, counts in status.deliveries.items()}
    if any(dead.values()):
        per_consumer = ", ".join(f"{consumer} {n}" for consumer, n in dead.items() if n)
        notes.append(
            f"{sum(dead.values())} dead deliveries ({per_consumer}): fix the cause, then replay them (outbox_replay)."
        )
    for consumer, blocked in status.blocked_aggregates.items():
        if blocked.count:
            first = blocked.aggregates[0]
            notes.append(
                f"{consumer} is ordered and {blocked.count} of its aggregates wait behind a dead event (first: "
                f"{first['aggregate']} at event {first['event_id']}, {first['waiting']} waiting): fix the cause, then "
                "replay the dead events; what waits follows in order."
            )
    for relay in status.relays:
        if relay.stale:
            notes.append(
                f"Relay {relay.name} on {relay.host} (pid {relay.pid}) last beat {relay.age_seconds:.0f} s ago: "
                "it is stuck or dead (a relay that stops cleanly removes its row)."
            )
    if not any(not relay.stale for relay in status.relays):
        notes.append("No relay is running: start `python manage.py outbox_relay`.")
    limit = conf.redelivery_seconds()
    if status.oldest_pending_age_seconds is not None and status.oldest_pending_age_seconds > limit:
        notes.append(
            f"The oldest unpublished event is {status.oldest_pending_age_seconds:.0f} s old (over {limit:.0f} s): "
            "the relays are behind, or the broker is down."
        )
    for job in status.jobs:
        if job.failed:
            notes.append(f"Job {job.job} for {job.period}: {job.outcome}")
    for backfill in status.backfills:
        if backfill.stalled:
            notes.append(
                f"Backfill {backfill.id} of {backfill.consumer} stopped at event {backfill.cursor} of {backfill.upto} "
                f"(no progress since {backfill.beat_at:%Y-%m-%d %H:%M:%S} UTC): run `outbox_backfill "
                f"{backfill.consumer}` with its options to resume it, or with --abandon to give it up."
                if backfill.beat_at
                else f"Backfill {backfill.id} of {backfill.consumer} has not started: run `outbox_backfill "
                f"{backfill.consumer}` to resume it."
            )
    return notes


@dataclass
class Latency:
    """Commit-to-consumer latency of one consumer's recent deliveries, in seconds."""

    p50: float
    p99: float
    deliveries: int


def consumer_latency(*, sample_events: int = LATENCY_SAMPLE_EVENTS) -> dict[str, Latency]:
    """Return, per consumer, the p50 and p99 of `started_at - created_at` over the done
    deliveries of the latest `sample_events` events.

    Bounded: the latest events by id (the primary key, read backwards) and their deliveries by the
    (event, consumer) unique index. Events still in flight are not in the sample, so while a
    backlog grows this understates; the backlog and oldest-pending figures show that case.
    """
    latest = Event.objects.order_by("-id").values("id")[:sample_events]
    rows = Delivery.objects.filter(
        event_id__in=latest, status=Delivery.Status.DONE, started_at__isnull=False
    ).values_list("consumer", "started_at", "event__created_at")
    seconds: dict[str, list[float]] = defaultdict(list)
    for consumer, started_at, created_at in rows:
        assert started_at is not None  # filtered above
        seconds[consumer].append((started_at - created_at).total_seconds())
    return {
        consumer: Latency(p50=_percentile(values, 0.50), p99=_percentile(values, 0.99), deliveries=len(values))
        for consumer, values in sorted(seconds.items())
    }


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def throughput_last_hour(*, now: datetime | None = None) -> list[tuple[datetime, int]]:
    """Return (minute, events committed) for each of the 60 minutes up to `now`, zeros included.

    On PostgreSQL the index on outbox_event.created_at keeps the scan to the last hour's events;
    it still counts them, so its cost follows the hour's traffic.
    """
    now = now or database_now()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(hours=1)
    rows = (
        Event.objects.filter(created_at__gte=start, created_at__lt=end)
        .annotate(minute=TruncMinute("created_at"))
        .values_list("minute")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts = dict(rows)
    minutes = [start + timedelta(minutes=i) for i in range(60)]
    return [(minute, counts.get(minute, 0)) for minute in minutes]
