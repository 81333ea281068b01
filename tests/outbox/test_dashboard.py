"""The outbox dashboard in the admin, over HTTP: staff only, with the figures an operator needs."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from outbox.emit.writer import events_flush
from outbox.models import Delivery, Event, JobRun, Pending, RelayHeartbeat
from tests.outbox_app.models import Item

URL = "/admin/outbox/dashboard/"


@pytest.mark.django_db
def test_dashboard_is_for_staff_only(client: Client) -> None:
    """Anonymous users and non-staff users are sent to the admin login."""
    assert client.get(URL).status_code == 302
    client.force_login(User.objects.create_user("clerk"))
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_admin_index_links_to_the_dashboard(admin_client: Client) -> None:
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert f'href="{URL}"' in response.content.decode()


@pytest.mark.django_db
def test_dashboard_shows_backlog_failures_relays_jobs_and_the_last_hours_events(admin_client: Client) -> None:
    """Seven events this hour (three still waiting), failures per consumer, a live and a stale relay,
    a failed job: each shows on the page."""
    for i in range(7):
        Item.objects.create(sku=f"D-{i}", name=f"D{i}", price=1)
    events_flush()
    ids = list(Event.objects.order_by("id").values_list("id", flat=True))
    Pending.objects.filter(event_id__in=ids[:4]).delete()
    for event_id in ids[:2]:
        Delivery.objects.create(event_id=event_id, consumer="courier", status="failed", publications=1)
    Delivery.objects.create(event_id=ids[2], consumer="stocktake", status="dead", publications=1)
    now = timezone.now()
    RelayHeartbeat.objects.create(name="live-relay", host="h1", pid=11, started_at=now, beat_at=now)
    old = now - timedelta(minutes=10)
    RelayHeartbeat.objects.create(name="dead-relay", host="h2", pid=12, started_at=old, beat_at=old)
    JobRun.objects.create(
        job="nightly_digest", period="2026-01-01", runner="live-relay", finished_at=now, outcome="failed: SMTP down"
    )

    with override_settings(OUTBOX_PERIODIC_JOBS={"nightly_digest": {"callable": "x.y", "daily_at": "06:00"}}):
        response = admin_client.get(URL)

    assert response.status_code == 200
    page = response.content.decode()
    assert '<td id="backlog">3</td>' in page
    assert "<tr><td>courier</td><td>2</td><td>0</td></tr>" in page
    assert "<tr><td>stocktake</td><td>0</td><td>1</td></tr>" in page
    assert "live-relay" in page
    assert "dead-relay" in page
    assert "(stale)" in page
    assert "Relay dead-relay on h2 (pid 12) last beat" in page
    assert "Events committed in the last hour: 7" in page
    assert response.context["events_last_hour"] == 7
    assert len(response.context["bars"]) == 60
    assert "1 dead deliveries (stocktake 1)" in page
    assert '<td class="stale">failed: SMTP down</td>' in page
