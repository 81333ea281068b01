"""Replay in the admin, for operators: over HTTP, on real PostgreSQL, the messages sent to real Redis."""

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from outbox.models import Delivery, Event, Replay, ReplayItem
from outbox.ops.replay import ReplayRefused, replay
from tests.outbox.helpers import conninfo, events
from tests.outbox_app import services
from tests.outbox_app.models import Item, Shipment
from tooling.processes import wait_until

pytestmark = pytest.mark.django_db

DELIVERIES = "/admin/outbox/delivery/"
EVENTS = "/admin/outbox/event/"
QUEUES = {"journal": "journal", "stocktake": "stocktake", "courier": "courier"}


@pytest.fixture(autouse=True)
def empty_broker() -> Iterator[redis.Redis]:
    """The test settings' Redis database, emptied before and after each test."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def queued(consumer: str) -> Counter[int]:
    """Count, per event id, the messages waiting in the consumer's Dramatiq queue."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    counts: Counter[int] = Counter()
    for raw in client.hvals(f"dramatiq:{QUEUES[consumer]}.msgs"):
        message = json.loads(raw)
        assert message["actor_name"] == consumer
        counts.update(message["args"][0])
    return counts


@dataclass
class Outcomes:
    """One shipment's events, delivered: the sending failed in stocktake, the cancellation dead in
    courier; the sending done in the journal."""

    sent: Event
    cancelled: Event
    failed: Delivery
    dead: Delivery
    done: Delivery


@pytest.fixture
def outcomes(items: list[Item]) -> Outcomes:
    shipment = services.shipment_create(recipient="ada@example.com", lines=[(items[0], 1)], send=True)
    services.shipment_set_status(shipment=shipment, status=Shipment.Status.CANCELLED)
    by_type = {e.event_type: e for e in events().filter(aggregate_type="shipment")}
    sent, cancelled = by_type["shipment.sent"], by_type["shipment.cancelled"]
    failed = Delivery.objects.create(
        event=sent, consumer="stocktake", status=Delivery.Status.FAILED, attempts=1, last_error="Deadlock"
    )
    dead = Delivery.objects.create(
        event=cancelled, consumer="courier", status=Delivery.Status.DEAD, attempts=6, last_error="SMTP down"
    )
    done = Delivery.objects.create(event=sent, consumer="journal", status=Delivery.Status.DONE, attempts=1)
    return Outcomes(sent=sent, cancelled=cancelled, failed=failed, dead=dead, done=done)


def operator_client(*, replay: bool) -> Client:
    """A staff user who may view events and deliveries, and replay them if `replay`."""
    user = User.objects.create_user(f"op-{replay}", password="pw", is_staff=True)
    codenames = ["view_event", "view_delivery", "view_replay"] + (["replay_delivery"] if replay else [])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def texts(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def replay_post(client: Client, deliveries: list[Delivery], **form: Any) -> Any:
    data = {"action": "replay_deliveries", "_selected_action": [d.pk for d in deliveries], **form}
    return client.post(DELIVERIES, data)


def test_replay_shows_what_it_will_send_and_sends_nothing_yet(admin_client: Client, outcomes: Outcomes) -> None:
    """The action's first step is a page: the deliveries, per consumer what goes out, the form; no send."""
    response = replay_post(admin_client, [outcomes.failed, outcomes.dead, outcomes.done])
    assert response.status_code == 200
    content = response.content.decode()
    assert "3 deliveries selected" in content
    assert "1 to courier" in content
    assert "1 to stocktake" in content
    assert "1 done: left out, unless you tick" in content
    assert "Deadlock" in content
    assert 'name="reason"' in content
    assert 'name="force"' in content
    assert Replay.objects.count() == 0
    assert set(Delivery.objects.values_list("status", flat=True)) == {"failed", "dead", "done"}
    assert not queued("stocktake")


def test_replay_needs_a_reason(admin_client: Client, outcomes: Outcomes) -> None:
    """Confirming without a reason shows the form again with the error, and sends nothing."""
    response = replay_post(admin_client, [outcomes.failed], confirm="yes", reason="   ")
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert Replay.objects.count() == 0
    assert not queued("stocktake")


def test_replay_sends_failed_and_dead_deliveries_again_and_records_it(
    admin_client: Client, outcomes: Outcomes, staff_user: User
) -> None:
    """Confirmed: each delivery is back to published, its message in Redis, the replay recorded."""
    response = replay_post(
        admin_client, [outcomes.failed, outcomes.dead], confirm="yes", reason="SMTP and DB were down at 03:00"
    )
    assert response.status_code == 302
    record = Replay.objects.get()
    assert (record.requested_by, record.source, record.forced, record.deliveries) == (
        f"user:{staff_user.username}",
        "admin",
        False,
        2,
    )
    assert record.reason == "SMTP and DB were down at 03:00"
    assert sorted(record.criteria["delivery_ids"]) == sorted([outcomes.failed.pk, outcomes.dead.pk])
    items = sorted(ReplayItem.objects.values_list("event_id", "consumer", "previous_status"))
    assert items == sorted([(outcomes.sent.pk, "stocktake", "failed"), (outcomes.cancelled.pk, "courier", "dead")])
    for delivery in (outcomes.failed, outcomes.dead):
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.PUBLISHED
        assert delivery.publications == 1
    assert queued("stocktake") == Counter({outcomes.sent.pk: 1})
    assert queued("courier") == Counter({outcomes.cancelled.pk: 1})
    follow = admin_client.get(response["Location"])
    assert f"Replay {record.pk}: sent 2 deliveries again (courier: 1, stocktake: 1)." in texts(follow)


def test_done_deliveries_are_left_out_unless_forced(admin_client: Client, outcomes: Outcomes) -> None:
    """A done delivery is not sent, with a warning that says how to force it; forced, it is sent."""
    response = replay_post(admin_client, [outcomes.done], confirm="yes", reason="check the journal")
    assert response.status_code == 302
    assert any("1 done deliveries were left out" in t for t in texts(admin_client.get(response["Location"])))
    assert Replay.objects.count() == 0
    assert not queued("journal")
    outcomes.done.refresh_from_db()
    assert outcomes.done.status == Delivery.Status.DONE

    response = replay_post(admin_client, [outcomes.done], confirm="yes", reason="rewrite the journal", force="on")
    assert response.status_code == 302
    record = Replay.objects.get()
    assert record.forced is True
    outcomes.done.refresh_from_db()
    assert outcomes.done.status == Delivery.Status.PUBLISHED
    assert queued("journal") == Counter({outcomes.sent.pk: 1})


def test_replay_of_every_delivery_matching_the_filters(admin_client: Client, outcomes: Outcomes) -> None:
    """With "select all matching", the filtered list is replayed, and its filters recorded."""
    data = {
        "action": "replay_deliveries",
        "_selected_action": [outcomes.dead.pk],
        "select_across": "1",
        "confirm": "yes",
        "reason": "every dead one",
    }
    response = admin_client.post(f"{DELIVERIES}?status__exact=dead", data)
    assert response.status_code == 302
    record = Replay.objects.get()
    assert record.criteria["changelist"] == "status__exact=dead"
    assert list(ReplayItem.objects.values_list("consumer", flat=True)) == ["courier"]


def test_refused_replay_is_reported_as_an_error(admin_client: Client, outcomes: Outcomes) -> None:
    """A delivery to a consumer this deployment does not have: nothing is sent, the reason is shown."""
    ghost = Delivery.objects.create(event=outcomes.sent, consumer="ghost", status=Delivery.Status.FAILED)
    response = replay_post(admin_client, [ghost, outcomes.failed], confirm="yes", reason="try")
    assert response.status_code == 302
    errors = texts(admin_client.get(response["Location"]))
    assert any(t.startswith("Nothing was sent: No consumer named ghost exists") for t in errors), errors
    assert Replay.objects.count() == 0
    outcomes.failed.refresh_from_db()
    assert outcomes.failed.status == Delivery.Status.FAILED
    assert not queued("stocktake")


def test_replay_needs_the_replay_permission(outcomes: Outcomes) -> None:
    """A staff user who may view deliveries but not replay them is offered no replay action, and
    posting it anyway is refused (403) and sends nothing; with the permission, the action is there."""
    viewer = operator_client(replay=False)
    assert "replay_deliveries" not in viewer.get(DELIVERIES).content.decode()
    assert "deliver_again" not in viewer.get(EVENTS).content.decode()
    response = replay_post(viewer, [outcomes.failed], confirm="yes", reason="let me")
    assert response.status_code == 403
    response = viewer.post(
        EVENTS,
        {"action": "deliver_again", "_selected_action": [outcomes.sent.pk], "confirm": "yes", "reason": "x"},
    )
    assert response.status_code == 403
    assert Replay.objects.count() == 0
    assert not queued("stocktake")

    operator = operator_client(replay=True)
    assert "replay_deliveries" in operator.get(DELIVERIES).content.decode()
    assert "deliver_again" in operator.get(EVENTS).content.decode()
    assert replay_post(operator, [outcomes.failed], confirm="yes", reason="allowed").status_code == 302
    assert Replay.objects.get().requested_by == "user:op-True"


def test_deliver_again_to_a_chosen_consumer(admin_client: Client, outcomes: Outcomes) -> None:
    """From the event list: the page shows per consumer what would go out; confirmed, the events are
    sent to that consumer, deliveries created for those that had none."""
    chosen = [outcomes.sent.pk, outcomes.cancelled.pk]
    first = admin_client.post(EVENTS, {"action": "deliver_again", "_selected_action": chosen})
    assert first.status_code == 200
    content = first.content.decode()
    assert "<tr><td>journal</td><td>0</td><td>1</td><td>1</td></tr>" in content
    assert "<tr><td>stocktake</td><td>1</td><td>1</td><td>0</td></tr>" in content
    assert 'name="consumer"' in content
    assert Replay.objects.count() == 0

    missing_reason = admin_client.post(
        EVENTS, {"action": "deliver_again", "_selected_action": chosen, "confirm": "yes", "consumer": "stocktake"}
    )
    assert missing_reason.status_code == 200
    assert "This field is required." in missing_reason.content.decode()

    response = admin_client.post(
        EVENTS,
        {
            "action": "deliver_again",
            "_selected_action": chosen,
            "confirm": "yes",
            "consumer": "stocktake",
            "reason": "stock was off",
        },
    )
    assert response.status_code == 302
    record = Replay.objects.get()
    assert record.criteria == {"consumers": ["stocktake"], "event_ids": sorted(chosen)}
    statuses = dict(Delivery.objects.filter(consumer="stocktake").values_list("event_id", "status"))
    assert statuses == {outcomes.sent.pk: "published", outcomes.cancelled.pk: "published"}
    assert queued("stocktake") == Counter(dict.fromkeys(chosen, 1))


def test_deliver_again_refuses_an_unknown_consumer(admin_client: Client, outcomes: Outcomes) -> None:
    """The consumer comes from the routes: another name is a form error, and nothing is created."""
    response = admin_client.post(
        EVENTS,
        {
            "action": "deliver_again",
            "_selected_action": [outcomes.sent.pk],
            "confirm": "yes",
            "consumer": "ghost",
            "reason": "x",
        },
    )
    assert response.status_code == 200
    assert "Select a valid choice." in response.content.decode()
    assert not Delivery.objects.filter(consumer="ghost").exists()


def test_deliveries_and_replays_are_read_only(admin_client: Client, outcomes: Outcomes) -> None:
    """Deliveries and replay records can be viewed, never changed or deleted, by a superuser either."""
    replay_post(admin_client, [outcomes.failed], confirm="yes", reason="once")
    record = Replay.objects.get()
    for url in (f"{DELIVERIES}{outcomes.failed.pk}", f"/admin/outbox/replay/{record.pk}"):
        assert admin_client.get(f"{url}/change/").status_code == 200
        assert admin_client.post(f"{url}/change/", {}).status_code == 403
        assert admin_client.post(f"{url}/delete/", {"post": "yes"}).status_code == 403
    page = admin_client.get(f"/admin/outbox/replay/{record.pk}/change/").content.decode()
    assert "once" in page
    assert f'href="/admin/outbox/event/{outcomes.sent.pk}/change/"' in page  # the item, linked
    assert admin_client.get("/admin/outbox/replay/").status_code == 200


def test_delivery_list_filters_and_searches_by_event_without_counting(admin_client: Client, outcomes: Outcomes) -> None:
    """The operators' list: by consumer, by status, and by event id; no COUNT query."""
    with CaptureQueriesContext(connection) as queries:
        content = admin_client.get(f"{DELIVERIES}?consumer=courier&status__exact=dead").content.decode()
        admin_client.get("/admin/outbox/replay/")
    assert not [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert "SMTP down" in content
    assert "Deadlock" not in content
    by_event = admin_client.get(DELIVERIES, {"q": str(outcomes.cancelled.pk)}).content.decode()
    assert "SMTP down" in by_event
    assert "Deadlock" not in by_event
    by_uuid = admin_client.get(DELIVERIES, {"q": str(outcomes.sent.event_id)}).content.decode()
    assert "Deadlock" in by_uuid
    assert "SMTP down" not in by_uuid


def test_the_same_confirmation_posted_twice_sends_once_and_says_who_sent_it(
    admin_client: Client, outcomes: Outcomes, staff_user: User
) -> None:
    """A double submit (or a second tab) of one confirmed replay: one message per delivery, one
    record; the second post is refused with who replayed and when."""
    form = {"confirm": "yes", "reason": "SMTP was down"}
    first = replay_post(admin_client, [outcomes.failed, outcomes.dead], **form)
    second = replay_post(admin_client, [outcomes.failed, outcomes.dead], **form)
    assert first.status_code == second.status_code == 302
    assert Replay.objects.count() == 1
    assert ReplayItem.objects.count() == 2
    assert queued("stocktake") == Counter({outcomes.sent.pk: 1})
    assert queued("courier") == Counter({outcomes.cancelled.pk: 1})
    record = Replay.objects.get()
    refused = " ".join(texts(second))
    assert f"Nothing was sent: 2 deliveries already replayed by user:{staff_user.username} at" in refused
    assert f"(replay {record.pk}) and still in flight" in refused


def test_two_operators_confirming_one_replay_at_the_same_moment_send_it_once(outcomes: Outcomes) -> None:
    """Both read the deliveries as failed and dead; under the row locks the second finds them sent
    by the first and sends nothing."""
    selected = list(Delivery.objects.filter(pk__in=[outcomes.failed.pk, outcomes.dead.pk]))
    first = replay(selected, requested_by="user:ann", reason="SMTP was down", source="admin")
    with pytest.raises(ReplayRefused, match=r"2 deliveries already replayed by user:ann at .* \(replay \d+\)"):
        replay(selected, requested_by="user:bob", reason="SMTP was down", source="admin")
    assert first.sent == 2
    assert Replay.objects.count() == 1
    assert sum(queued("stocktake").values()) + sum(queued("courier").values()) == 2


@pytest.mark.django_db(transaction=True)
def test_two_replays_racing_for_the_same_deliveries_send_them_once(outcomes: Outcomes) -> None:
    """Two operators' replays, both started while the deliveries are locked (as by a relay), race
    for them the moment they are free: one sends them, the other is refused naming it."""
    selected = list(Delivery.objects.filter(pk__in=[outcomes.failed.pk, outcomes.dead.pk]))
    results: dict[str, object] = {}

    def operator(name: str) -> None:
        try:
            results[name] = replay(selected, requested_by=f"user:{name}", reason="SMTP was down", source="admin")
        except ReplayRefused as e:
            results[name] = e
        finally:
            connection.close()

    with psycopg.connect(conninfo()) as blocker:
        blocker.execute("SELECT 1 FROM outbox_delivery WHERE id = ANY(%s) FOR UPDATE", [[d.pk for d in selected]])
        threads = [threading.Thread(target=operator, args=(name,)) for name in ("ann", "bob")]
        for thread in threads:
            thread.start()
        with psycopg.connect(conninfo(), autocommit=True) as probe:
            wait_until(
                lambda: probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                    ["%outbox_delivery%FOR UPDATE%"],
                ).fetchone()
                == (2,),
                timeout=30,
                what="both replays to wait for the deliveries' locks",
            )
        blocker.rollback()
    for thread in threads:
        thread.join(timeout=30)
    refused = [r for r in results.values() if isinstance(r, ReplayRefused)]
    assert len(refused) == 1
    assert "already replayed by user:" in str(refused[0])
    assert Replay.objects.count() == 1
    assert ReplayItem.objects.count() == 2
    assert sum(queued("stocktake").values()) + sum(queued("courier").values()) == 2
