"""`/metrics` for Prometheus (the outbox's figures), and the workers' own Dramatiq metrics."""

import logging
import urllib.request
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from outbox.consume.drops import message_drop_count
from outbox.emit.writer import events_flush
from outbox.models import Delivery, Event, JobRun, MessageDrop, Pending, RelayHeartbeat
from tests.outbox_app.models import Item
from tests.processes import processes
from tooling.processes import free_port, wait_until

# The relays here publish to Redis: empty it around each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("empty_queues")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text into {(sample name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def make_events(n: int) -> list[Event]:
    for i in range(n):
        Item.objects.create(sku=f"METRICS-{i}", name=f"M{i}", price=1)
    events_flush()
    return list(Event.objects.order_by("id"))


@pytest.mark.django_db
def test_metrics_refuses_anonymous_and_wrong_token_and_answers_the_right_token() -> None:
    """Without a staff login or the token: 403, saying what to send. With the token: the metrics."""
    client = Client()
    with override_settings(METRICS_TOKEN="s3cret-token"):
        refused = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-it"})
        allowed = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert refused.status_code == 403
    assert "Authorization: Bearer <METRICS_TOKEN>" in refused.content.decode()
    assert wrong.status_code == 403
    assert allowed.status_code == 200
    assert allowed["Content-Type"].startswith("text/plain; version=")
    with override_settings(METRICS_TOKEN=""):
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403


@pytest.mark.django_db
def test_metrics_answers_a_staff_user_but_not_another_user() -> None:
    """A logged-in staff user may read them (the admin's rule); an active non-staff user may not."""
    staff, other = Client(), Client()
    staff.force_login(User.objects.create_user("ops", is_staff=True))
    other.force_login(User.objects.create_user("clerk"))
    assert staff.get("/metrics").status_code == 200
    assert other.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_metrics_report_backlog_deliveries_relays_jobs_and_consumer_latency(admin_client: Client) -> None:
    """The outbox_status figures as gauges, and the commit-to-consumer latency of done deliveries."""
    events = make_events(5)
    published = [e.id for e in events[:4]]
    Pending.objects.filter(event_id__in=published).delete()
    for event, lag in zip(events[:3], (1.0, 2.0, 30.0), strict=True):
        Delivery.objects.create(
            event_id=event.id,
            consumer="stocktake",
            status="done",
            publications=1,
            attempts=1,
            published_at=event.created_at,
            started_at=event.created_at + timedelta(seconds=lag),
            done_at=timezone.now(),
        )
    Delivery.objects.create(event_id=events[3].id, consumer="courier", status="dead", publications=1)
    now = timezone.now()
    RelayHeartbeat.objects.create(name="r1", host="h1", pid=7, started_at=now, beat_at=now, events_relayed=42)
    JobRun.objects.create(job="nightly_digest", period="2026-01-01", runner="r1", finished_at=now, outcome="failed: x")

    with override_settings(OUTBOX_PERIODIC_JOBS={"nightly_digest": {"callable": "x.y", "daily_at": "06:00"}}):
        response = admin_client.get("/metrics")

    assert response.status_code == 200
    found = samples(response.content.decode())
    assert found[("outbox_backlog_events", ())] == 1
    assert found[("outbox_oldest_pending_age_seconds", ())] >= 0
    assert found[("outbox_deliveries", (("consumer", "courier"), ("status", "dead")))] == 1
    assert found[("outbox_deliveries", (("consumer", "courier"), ("status", "published")))] == 0
    assert found[("outbox_relay_events_relayed_total", (("host", "h1"), ("relay", "r1")))] == 42
    assert found[("outbox_relay_heartbeat_age_seconds", (("host", "h1"), ("relay", "r1")))] < 30
    assert found[("outbox_relays_live", ())] == 1
    assert found[("outbox_job_last_run_failed", (("job", "nightly_digest"),))] == 1
    assert found[("outbox_attention", ())] == 2  # the dead delivery and the failed job
    assert found[("outbox_consumer_latency_p50_seconds", (("consumer", "stocktake"),))] == pytest.approx(2.0)
    assert found[("outbox_consumer_latency_p99_seconds", (("consumer", "stocktake"),))] == pytest.approx(30.0)
    assert found[("outbox_consumer_latency_sample_deliveries", (("consumer", "stocktake"),))] == 3


@pytest.mark.django_db
def test_healthz_stays_open_and_light(client: Client) -> None:
    """The health check needs no login and reports the database and the broker."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db(transaction=True)
def test_worker_serves_dramatiq_metrics_when_enabled(tmp_path: Path) -> None:
    """DRAMATIQ_PROMETHEUS=1: a real worker counts the messages it processed, on its own port."""
    make_events(3)
    port = free_port()
    env = {
        "OUTBOX_RELAY_POLL_SECONDS": "0.2",
        "DRAMATIQ_PROMETHEUS": "1",
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(port),
        "dramatiq_prom_db": str(tmp_path / "prometheus"),
    }
    with processes(tmp_path, **env) as procs:
        relay = procs.relay("r1")
        worker = procs.worker()
        wait_until(
            lambda: Delivery.objects.filter(consumer="journal", status="done").count() == 3,
            timeout=90,
            what="the worker",
        )

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return samples(response.read().decode())
            except OSError:
                return {}

        labels = (("actor_name", "journal"), ("queue_name", "journal"))
        found = wait_until(
            lambda: (metrics := scrape()).get(("dramatiq_messages_total", labels)) and metrics,
            timeout=60,
            what="the worker's metrics",
        )
        assert relay.stop() == 0
        assert worker.stop() == 0
    assert found[("dramatiq_messages_total", labels)] >= 1
    assert ("dramatiq_message_duration_milliseconds_count", labels) in found


@pytest.mark.django_db
def test_metrics_count_the_messages_workers_dropped_and_the_ids_that_named_no_event(admin_client: Client) -> None:
    """Each worker's drops add up in the database, so any web process reports them all."""
    message_drop_count(consumer="stocktake", reason=MessageDrop.Reason.MALFORMED, detail="it does not decode")
    message_drop_count(consumer="stocktake", reason=MessageDrop.Reason.MALFORMED, detail="it does not decode")
    message_drop_count(consumer="journal", reason=MessageDrop.Reason.OVERSIZED)
    message_drop_count(consumer="journal", reason=MessageDrop.Reason.UNKNOWN_EVENTS, events=5000)
    found = samples(admin_client.get("/metrics").content.decode())
    dropped = "outbox_consumer_messages_dropped_total"
    assert found[(dropped, (("consumer", "stocktake"), ("reason", "malformed")))] == 2
    assert found[(dropped, (("consumer", "journal"), ("reason", "oversized")))] == 1
    assert found[("outbox_consumer_unknown_events_total", (("consumer", "journal"),))] == 5000


@pytest.mark.django_db
def test_healthz_says_error_without_the_error_text_and_logs_it(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Unauthenticated: a broker that does not answer is "error" in the body, and its detail (hosts,
    ports) only in the log."""
    broker = dramatiq.get_broker()
    kept = broker.client  # type: ignore[attr-defined]
    broker.client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)  # type: ignore[attr-defined]
    try:
        with caplog.at_level(logging.WARNING, logger="settings.health"):
            response = client.get("/healthz")
    finally:
        broker.client = kept  # type: ignore[attr-defined]
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "ok", "broker": "error"}
    assert "127.0.0.1" not in response.content.decode()
    assert "Health check: broker unavailable" in caplog.text
    assert "127.0.0.1" in caplog.text
