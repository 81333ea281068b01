"""The event log in the admin, for auditors: over HTTP as a logged-in user, on real PostgreSQL."""

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.db.models import Q
from django.test import Client
from django.test.utils import CaptureQueriesContext

from outbox.emit.context import event_context
from outbox.models import Delivery, Event
from tests.outbox.helpers import aggregate_events, events
from tests.outbox_app import services
from tests.outbox_app.models import Item, Shipment

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/outbox/event/"


@dataclass
class Log:
    """A small event log: what the auditors' tests look for in it."""

    shipment: Shipment
    adapter: Item
    sent: Event  # shipment.sent by user:bob, its stocktake delivery failed
    cancelled: Event  # shipment.cancelled by user:bob, its courier delivery dead
    repriced: Event  # item.updated by system, price changed
    old: Event  # from June 2020
    older: Event  # from March 2020, written after `old`


@pytest.fixture
def log(items: list[Item]) -> Log:
    """Events made through the app's services by three actors, deliveries in each state, and one old event."""
    with event_context(actor="user:alice", source="admin"):
        adapter = Item.objects.create(sku="AD-004", name="Ada Adapter", price=Decimal("5.00"))
    with event_context(actor="user:bob", source="admin"):
        shipment = services.shipment_create(
            recipient="ada@example.com", lines=[(items[0], 2), (items[1], 1)], send=True
        )
        services.shipment_set_status(shipment=shipment, status=Shipment.Status.CANCELLED)
    keyboard = Item.objects.get(sku="KB-001")
    keyboard.price = Decimal("95.00")
    keyboard.save()  # as the item form saves it: no service for a price change
    everything = list(events())
    for event in everything:
        Delivery.objects.create(event=event, consumer="journal", status=Delivery.Status.DONE)
    by_type = {e.event_type: e for e in everything}
    Delivery.objects.create(event=by_type["shipment.sent"], consumer="stocktake", status=Delivery.Status.FAILED)
    Delivery.objects.create(event=by_type["shipment.cancelled"], consumer="courier", status=Delivery.Status.DEAD)
    old = Event.objects.create(
        event_type="legacy.imported",
        aggregate_type="legacy",
        aggregate_id="1",
        aggregate_version=1,
        payload={"state": {"id": 1}},
        actor="system",
        correlation_id="old",
        source="command:import",
        created_at=datetime(2020, 6, 1, 12, tzinfo=UTC),
    )
    # Written later than `old` (a higher id) about an earlier time, as an import would.
    older = Event.objects.create(
        event_type="legacy.imported",
        aggregate_type="legacy",
        aggregate_id="2",
        aggregate_version=1,
        payload={"state": {"id": 2}},
        actor="system",
        correlation_id="old",
        source="command:import",
        created_at=datetime(2020, 3, 1, 12, tzinfo=UTC),
    )
    return Log(
        shipment=shipment,
        adapter=adapter,
        sent=by_type["shipment.sent"],
        cancelled=by_type["shipment.cancelled"],
        repriced=by_type["item.updated"],
        old=old,
        older=older,
    )


def listed_ids(response: Any) -> list[int]:
    """The event ids in the changelist's rows, in the order shown."""
    assert response.status_code == 200, response.content.decode()[:2000]
    return [int(i) for i in re.findall(r'<th class="field-id"><a href="[^"]*">(\d+)</a>', response.content.decode())]


def all_ids() -> list[int]:
    return list(Event.objects.order_by("-id").values_list("id", flat=True))


def test_changelist_lists_every_event_newest_first_with_its_aggregate(admin_client: Client, log: Log) -> None:
    """Unfiltered, the list shows id, time, type, aggregate (linked to its timeline), version, actor, source."""
    response = admin_client.get(CHANGELIST)
    assert listed_ids(response) == all_ids()
    content = response.content.decode()
    assert f'href="/admin/outbox/event/timeline/shipment/{log.shipment.pk}/"' in content
    assert f"shipment:{log.shipment.pk}" in content
    assert "user:bob" in content
    assert "legacy.imported" in content


@pytest.mark.parametrize(
    "query",
    [
        "",
        "type=shipment.sent",
        "aggregate_type=shipment",
        "actor=user:bob",
        "delivery=stocktake:failed",
        "created_at__gte=2020-01-01&created_at__lt=2021-01-01",
        "q=1",
        "q=shipment:1",
        "p=2",
    ],
)
def test_changelist_never_counts(admin_client: Client, log: Log, query: str) -> None:
    """No COUNT query on the changelist, whatever the filter, search or page."""
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{CHANGELIST}?{query}")
    assert response.status_code == 200
    counting = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counting == []


def test_each_filter_narrows_the_list(admin_client: Client, log: Log) -> None:
    """Type, aggregate type, actor, delivery status per consumer and date range each select their events."""
    bob = list(Event.objects.filter(actor="user:bob").order_by("-id").values_list("id", flat=True))
    shipments = list(Event.objects.filter(aggregate_type="shipment").order_by("-id").values_list("id", flat=True))
    assert len(bob) == 4  # sent, two lines, cancelled
    assert len(shipments) == 4
    expected = {
        "type=shipment.cancelled": [log.cancelled.id],
        "aggregate_type=shipment": shipments,
        "actor=user:bob": bob,
        "delivery=stocktake:failed": [log.sent.id],
        "delivery=courier:dead": [log.cancelled.id],
        "delivery=journal:done": [i for i in all_ids() if i not in (log.old.id, log.older.id)],
        "delivery=stocktake:done": [],
        # Within a date range, newest first by time.
        "created_at__gte=2020-01-01&created_at__lt=2021-01-01": [log.old.id, log.older.id],
        "created_at__gte=2020-05-01&created_at__lt=2021-01-01": [log.old.id],
        "created_at__lt=2020-05-01": [log.older.id],
        "type=shipment.sent&actor=user:alice": [],
    }
    for query, ids in expected.items():
        assert listed_ids(admin_client.get(f"{CHANGELIST}?{query}")) == ids, query


def test_delivery_status_filter_holds_with_more_deliveries_in_flight_than_it_lists(
    admin_client: Client, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In flight: the events named, or past the number it names, the semi-join alone; the same events."""
    Delivery.objects.create(event=log.repriced, consumer="journal_2", status=Delivery.Status.PUBLISHED)
    monkeypatch.setattr("outbox.relay.routing.route_names", lambda: {"journal", "journal_2"})
    url = f"{CHANGELIST}?delivery=journal_2:published"
    assert listed_ids(admin_client.get(url)) == [log.repriced.id]
    monkeypatch.setattr("outbox.admin.volume.IN_FLIGHT_LISTED", 0)
    assert listed_ids(admin_client.get(url)) == [log.repriced.id]


def test_filters_offer_the_logs_values_and_each_consumers_statuses(admin_client: Client, log: Log) -> None:
    """The sidebar lists the types, aggregate types and actors found in the log, and each consumer's statuses."""
    content = admin_client.get(CHANGELIST).content.decode()
    for option in [
        "?type=shipment.cancelled",
        "?type=legacy.imported",
        "?aggregate_type=item",
        "?actor=user%3Aalice",
        "?delivery=stocktake%3Adead",
        "?delivery=courier%3Afailed",
        "?delivery=journal%3Apublished",
    ]:
        assert f'href="{option}"' in content, option
    assert 'name="created_at__gte"' in content
    assert "Past 7 days" in content


@pytest.mark.parametrize("query", ["delivery=stocktake:nonsense", "delivery=nonsense", "created_at__gte=yesterday"])
def test_invalid_filter_values_are_refused_without_an_error_page(admin_client: Client, log: Log, query: str) -> None:
    """A bad value redirects to the list with Django's error flag instead of failing."""
    response = admin_client.get(f"{CHANGELIST}?{query}")
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


def test_search_finds_exact_event_ids_uuids_and_aggregates(admin_client: Client, log: Log) -> None:
    """An integer finds that event and the aggregates with that id; a UUID its event; type:id one aggregate."""
    shipment_events = [e.id for e in reversed(aggregate_events("shipment", log.shipment.pk))]

    def event_or_aggregate(number: int) -> list[int]:
        found = Event.objects.filter(Q(pk=number) | Q(aggregate_id=str(number)))
        return list(found.order_by("-id").values_list("id", flat=True))

    assert log.sent.id in event_or_aggregate(log.sent.id)
    cases = {
        str(log.repriced.event_id): [log.repriced.id],
        f"shipment:{log.shipment.pk}": shipment_events,
        f" shipment:{log.shipment.pk} ": shipment_events,
        str(log.shipment.pk): event_or_aggregate(log.shipment.pk),
        str(log.sent.id): event_or_aggregate(log.sent.id),
        "shipment:999999": [],
        "ada": [],
        "99999999999999999999999": [],
    }
    for term, ids in cases.items():
        assert listed_ids(admin_client.get(CHANGELIST, {"q": term})) == ids, term


def test_search_never_scans_with_like(admin_client: Client, log: Log) -> None:
    """Searching runs exact comparisons only: no LIKE over the log."""
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(CHANGELIST, {"q": "Ada"})
    assert not [q["sql"] for q in queries.captured_queries if "LIKE" in q["sql"].upper()]


def test_pages_link_previous_and_next_without_a_total(
    admin_client: Client, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three events a page: the first page links to the next, the last to the previous, none to a count."""
    monkeypatch.setattr(admin.site._registry[Event], "list_per_page", 3)
    ids = all_ids()
    first = admin_client.get(CHANGELIST)
    assert listed_ids(first) == ids[:3]
    assert 'rel="next"' in first.content.decode()
    assert 'rel="prev"' not in first.content.decode()
    last_page = (len(ids) + 2) // 3
    last = admin_client.get(CHANGELIST, {"p": last_page})
    assert listed_ids(last) == ids[(last_page - 1) * 3 :]
    assert 'rel="prev"' in last.content.decode()
    assert 'rel="next"' not in last.content.decode()
    assert "not counted" in last.content.decode()


def test_timeline_shows_an_aggregates_events_in_version_order(admin_client: Client, log: Log) -> None:
    """The shipment's timeline lists versions 1..4 in order, each linked to its event, with old → new."""
    response = admin_client.get(f"/admin/outbox/event/timeline/shipment/{log.shipment.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    versions = [int(v) for v in re.findall(r'<tr class="outbox-version">\s*<td>(\d+)</td>', content)]
    assert versions == [1, 2, 3, 4]
    positions = [
        content.index(f'href="/admin/outbox/event/{e.id}/change/"')
        for e in aggregate_events("shipment", log.shipment.pk)
    ]
    assert positions == sorted(positions)
    assert "<strong>status</strong>: sent → cancelled" in content


def test_timeline_pages_by_version(admin_client: Client, log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions a page: the link to later versions continues after the last one shown."""
    monkeypatch.setattr("outbox.admin.TIMELINE_PAGE", 2)
    url = f"/admin/outbox/event/timeline/shipment/{log.shipment.pk}/"
    first = admin_client.get(url).content.decode()
    assert re.findall(r'<tr class="outbox-version">\s*<td>(\d+)</td>', first) == ["1", "2"]
    assert 'href="?after=2"' in first
    last = admin_client.get(url, {"after": 2}).content.decode()
    assert re.findall(r'<tr class="outbox-version">\s*<td>(\d+)</td>', last) == ["3", "4"]
    assert "?after=" not in last


def test_each_event_links_to_its_aggregates_timeline(admin_client: Client, log: Log) -> None:
    """The event's page links to the timeline of its aggregate."""
    content = admin_client.get(f"/admin/outbox/event/{log.sent.id}/change/").content.decode()
    assert f'href="/admin/outbox/event/timeline/shipment/{log.shipment.pk}/"' in content


def test_event_page_shows_the_changed_fields_old_to_new_and_the_payload(admin_client: Client, log: Log) -> None:
    """A cancellation shows status sent → cancelled; the payload is indented JSON; deliveries listed."""
    response = admin_client.get(f"/admin/outbox/event/{log.cancelled.id}/change/")
    assert response.status_code == 200
    content = response.content.decode()
    assert re.search(r"<th>status</th><td>sent</td><td>→</td><td>cancelled</td>", content)
    assert re.search(r"<th>closed_at</th><td>null</td><td>→</td><td>\d{4}-", content)
    assert '<pre class="outbox-payload">{\n  &quot;changes&quot;: {' in content
    assert "dead" in content  # the courier delivery, in the deliveries inline
    created = admin_client.get(f"/admin/outbox/event/{log.sent.id}/change/").content.decode()
    assert "None recorded: the event holds a whole row" in created


def test_event_log_is_read_only_even_for_a_superuser(admin_client: Client, log: Log) -> None:
    """No add page; posting to the change or delete page is forbidden; the list offers no delete action."""
    event = log.sent
    assert admin_client.get("/admin/outbox/event/add/").status_code == 403
    assert admin_client.post(f"/admin/outbox/event/{event.id}/change/", {"actor": "user:mallory"}).status_code == 403
    assert admin_client.post(f"/admin/outbox/event/{event.id}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.get(f"/admin/outbox/event/{event.id}/change/").status_code == 200
    assert "delete_selected" not in admin_client.get(CHANGELIST).content.decode()
    event.refresh_from_db()
    assert event.actor == "user:bob"


def test_auditor_with_view_permission_reads_and_exports(log: Log) -> None:
    """A staff user with only `view_event` sees the log, the timeline and the exports, and no replay action."""
    auditor = User.objects.create_user("audrey", password="pw", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_event"))
    client = Client()
    client.force_login(auditor)
    response = client.get(CHANGELIST)
    assert listed_ids(response) == all_ids()
    assert "export_events_csv" in response.content.decode()
    assert "deliver_again" not in response.content.decode()
    assert client.get(f"/admin/outbox/event/timeline/shipment/{log.shipment.pk}/").status_code == 200
    assert client.get("/admin/outbox/event/export.csv").status_code == 200
    stranger = User.objects.create_user("steve", password="pw", is_staff=True)
    client.force_login(stranger)
    assert client.get(f"/admin/outbox/event/timeline/shipment/{log.shipment.pk}/").status_code == 403
    assert client.get("/admin/outbox/event/export.jsonl").status_code == 403


def read_csv(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def read_jsonl(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jsonl"
    body = b"".join(response.streaming_content).decode()
    return [json.loads(line) for line in body.splitlines()]


def test_csv_export_of_the_selection(admin_client: Client, log: Log) -> None:
    """The CSV action streams the selected events, oldest first, every fact and the payload as JSON."""
    chosen = [log.cancelled.id, log.sent.id]
    rows = read_csv(admin_client.post(CHANGELIST, {"action": "export_events_csv", "_selected_action": chosen}))
    assert [int(r["id"]) for r in rows] == sorted(chosen)
    first = rows[0]
    sent = log.sent
    assert first["event_id"] == str(sent.event_id)
    assert (first["event_type"], first["aggregate_type"], first["aggregate_id"]) == (
        "shipment.sent",
        "shipment",
        str(log.shipment.pk),
    )
    assert (first["aggregate_version"], first["actor"], first["source"]) == ("1", "user:bob", "admin")
    assert first["correlation_id"] == sent.correlation_id
    assert datetime.fromisoformat(first["created_at"]) == sent.created_at
    assert json.loads(first["payload"]) == sent.payload


def test_jsonl_export_of_the_selection(admin_client: Client, log: Log) -> None:
    """The JSON Lines action streams one object per selected event with the payload nested."""
    chosen = [log.repriced.id, log.cancelled.id]
    records = read_jsonl(admin_client.post(CHANGELIST, {"action": "export_events_jsonl", "_selected_action": chosen}))
    assert [r["id"] for r in records] == sorted(chosen)
    cancelled = next(r for r in records if r["id"] == log.cancelled.id)
    assert cancelled["payload"]["changes"]["status"] == {"old": "sent", "new": "cancelled"}
    assert cancelled["event_id"] == str(log.cancelled.event_id)
    assert datetime.fromisoformat(cancelled["created_at"]) == log.cancelled.created_at


def test_exports_of_the_whole_filtered_list_follow_its_filters_and_search(admin_client: Client, log: Log) -> None:
    """The list's export links carry its query string; the export holds every matching event, oldest first."""
    page = admin_client.get(CHANGELIST, {"actor": "user:bob"}).content.decode()
    assert 'href="/admin/outbox/event/export.csv?actor=user%3Abob"' in page
    assert 'href="/admin/outbox/event/export.jsonl?actor=user%3Abob"' in page
    bob = sorted(Event.objects.filter(actor="user:bob").values_list("id", flat=True))
    rows = read_csv(admin_client.get("/admin/outbox/event/export.csv", {"actor": "user:bob"}))
    assert [int(r["id"]) for r in rows] == bob
    records = read_jsonl(admin_client.get("/admin/outbox/event/export.jsonl", {"q": f"shipment:{log.shipment.pk}"}))
    assert [r["aggregate_version"] for r in records] == [1, 2, 3, 4]
    assert len(read_csv(admin_client.get("/admin/outbox/event/export.csv"))) == Event.objects.count()
    assert admin_client.get("/admin/outbox/event/export.csv", {"delivery": "nonsense"}).status_code == 400
    assert admin_client.get("/admin/outbox/event/export.xml").status_code == 400
