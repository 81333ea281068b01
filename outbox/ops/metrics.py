"""`/metrics`: the outbox's state for Prometheus, computed from the database on each scrape.

The same figures as `outbox_status` (outbox/ops/status.py), as gauges, plus the commit-to-consumer
latency of recent deliveries and the messages the workers dropped (outbox/consume/drops.py). Every web
process answers the same (the figures are the database's), so any one can be scraped. Readable
by a logged-in staff user, or by a scraper sending `Authorization: Bearer <METRICS_TOKEN>`.
"""

import hmac
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from outbox import conf
from outbox.consume.drops import message_drops
from outbox.models import MessageDrop
from outbox.ops.status import COUNTED_STATUSES, consumer_latency, outbox_status


class OutboxCollector:
    """Collects the outbox's figures when a registry is scraped."""

    def collect(self) -> Iterator[Metric]:
        status = outbox_status()
        yield GaugeMetricFamily(
            "outbox_backlog_events", "Events committed but not yet published (rows in outbox_pending).", status.backlog
        )
        yield GaugeMetricFamily(
            "outbox_backlog_claimed_events",
            "Backlog events claimed by a relay under a live lease.",
            status.backlog_claimed,
        )
        yield GaugeMetricFamily(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished event (0 when the backlog is empty).",
            status.oldest_pending_age_seconds or 0.0,
        )
        deliveries = GaugeMetricFamily(
            "outbox_deliveries",
            "Unsettled deliveries per consumer and status (published, waiting, failed, dead), counted exactly.",
            labels=["consumer", "status"],
        )
        for consumer, counts in status.deliveries.items():
            for state in COUNTED_STATUSES:
                deliveries.add_metric([consumer, state], counts[state])
        yield deliveries
        blocked = GaugeMetricFamily(
            "outbox_blocked_aggregates",
            "Aggregates an ordered consumer holds back behind a dead event, until it is replayed.",
            labels=["consumer"],
        )
        for consumer, held in status.blocked_aggregates.items():
            blocked.add_metric([consumer], held.count)
        yield blocked
        if status.done_estimate is not None:
            yield GaugeMetricFamily(
                "outbox_deliveries_done_estimate",
                "Done deliveries, all consumers: the planner's estimate of the table's rows less the unsettled ones.",
                status.done_estimate,
            )
        age = GaugeMetricFamily(
            "outbox_relay_heartbeat_age_seconds", "Seconds since each relay's last heartbeat.", labels=["relay", "host"]
        )
        relayed = CounterMetricFamily(
            "outbox_relay_events_relayed", "Events each relay has published since it started.", labels=["relay", "host"]
        )
        for relay in status.relays:
            age.add_metric([relay.name, relay.host], relay.age_seconds)
            relayed.add_metric([relay.name, relay.host], relay.events_relayed)
        yield age
        yield relayed
        yield GaugeMetricFamily(
            "outbox_relays_stale",
            f"Relays whose last heartbeat is older than {conf.heartbeat_stale_seconds():.0f} s.",
            sum(relay.stale for relay in status.relays),
        )
        yield GaugeMetricFamily(
            "outbox_relays_live", "Relays with a recent heartbeat.", sum(not relay.stale for relay in status.relays)
        )
        job_failed = GaugeMetricFamily(
            "outbox_job_last_run_failed", "1 when the periodic job's latest run failed.", labels=["job"]
        )
        job_started = GaugeMetricFamily(
            "outbox_job_last_run_timestamp_seconds", "When the periodic job's latest run started.", labels=["job"]
        )
        for job in status.jobs:
            job_failed.add_metric([job.job], float(job.failed))
            if job.started_at is not None:
                job_started.add_metric([job.job], job.started_at.timestamp())
        yield job_failed
        yield job_started
        yield GaugeMetricFamily(
            "outbox_attention", "Things that need an operator (as listed by outbox_status).", len(status.attention)
        )
        yield from latency_metrics()
        yield from drop_metrics()


def drop_metrics() -> Iterator[Metric]:
    """Yield the counts of messages the workers dropped, and of event ids that named no event."""
    dropped = CounterMetricFamily(
        "outbox_consumer_messages_dropped",
        "Messages a worker dropped unapplied (malformed, oversized, unknown_actor), per consumer or queue.",
        labels=["consumer", "reason"],
    )
    unknown = CounterMetricFamily(
        "outbox_consumer_unknown_events",
        "Event ids in messages that name no event (purged, or never written): refused, no delivery recorded.",
        labels=["consumer"],
    )
    for drop in message_drops():
        if drop.reason == MessageDrop.Reason.UNKNOWN_EVENTS:
            unknown.add_metric([drop.consumer], drop.events)
        else:
            dropped.add_metric([drop.consumer, drop.reason], drop.messages)
    yield dropped
    yield unknown


def latency_metrics() -> Iterator[Metric]:
    """Yield the commit-to-consumer latency gauges (p50, p99, sample size) per consumer."""
    latency = consumer_latency()
    help_suffix = "commit to consumer start, over the done deliveries of the latest events"
    p50 = GaugeMetricFamily("outbox_consumer_latency_p50_seconds", f"Median {help_suffix}.", labels=["consumer"])
    p99 = GaugeMetricFamily(
        "outbox_consumer_latency_p99_seconds", f"99th percentile {help_suffix}.", labels=["consumer"]
    )
    sample = GaugeMetricFamily(
        "outbox_consumer_latency_sample_deliveries",
        "Deliveries the latency figures are taken from.",
        labels=["consumer"],
    )
    for consumer, figures in latency.items():
        p50.add_metric([consumer], figures.p50)
        p99.add_metric([consumer], figures.p99)
        sample.add_metric([consumer], figures.deliveries)
    yield p50
    yield p99
    yield sample


def may_read_metrics(request: HttpRequest) -> bool:
    """Return whether the request carries the metrics token, or comes from an active staff user."""
    token = conf.metrics_token()
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header.removeprefix("Bearer "), token):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Return the outbox's metrics in Prometheus's text format (403 without the token or a staff login)."""
    if not may_read_metrics(request):
        return HttpResponse(
            "Forbidden: send Authorization: Bearer <METRICS_TOKEN>, or log in as a staff user.\n",
            status=403,
            content_type="text/plain",
        )
    registry = CollectorRegistry()
    registry.register(OutboxCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
