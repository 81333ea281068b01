"""Replay from the command line, and who may replay or change the record, over HTTP."""

from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client

from outbox.models import Delivery, Event, Replay, ReplayItem
from tests import processes
from tests.outbox.helpers import events
from tests.outbox_app.models import Item

pytestmark = pytest.mark.usefixtures("empty_queues")


def queued(queue: str = "journal") -> list[int]:
    return processes.queued(queue)


@pytest.fixture
def deliveries(db: None) -> list[Delivery]:
    for i in range(3):
        Item.objects.create(sku=f"C-{i}", name=f"C{i}", price=1)
    ids = list(events().order_by("id").values_list("id", flat=True))
    return [
        Delivery.objects.create(event_id=ids[0], consumer="journal", status="dead", attempts=6, last_error="boom"),
        Delivery.objects.create(event_id=ids[1], consumer="journal", status="failed", attempts=1, last_error="x"),
        Delivery.objects.create(event_id=ids[2], consumer="journal", status="done", attempts=1),
    ]


def run(*args: str) -> str:
    out = StringIO()
    call_command("outbox_replay", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_a_dry_run_shows_what_would_be_sent_and_sends_nothing(deliveries: list[Delivery]) -> None:
    out = run("--dry-run")
    assert "Would send 2 deliveries (journal: 2)." in out
    assert "item.created" in out
    assert "boom" in out
    assert queued() == []
    assert not Replay.objects.exists()
    assert Delivery.objects.get(pk=deliveries[0].pk).status == "dead"


def test_a_replay_needs_a_reason(deliveries: list[Delivery]) -> None:
    with pytest.raises(CommandError, match="Say why with --reason"):
        run()
    assert queued() == []


def test_a_replay_sends_failed_and_dead_deliveries_and_is_recorded(deliveries: list[Delivery]) -> None:
    out = run("--reason", "SMTP was down", "--consumer", "journal")
    assert "Sent 2 deliveries again (journal: 2); recorded as replay" in out
    assert queued() == sorted([deliveries[0].event_id, deliveries[1].event_id])
    replay = Replay.objects.get()
    assert (replay.reason, replay.deliveries, replay.forced, replay.source) == (
        "SMTP was down",
        2,
        False,
        "command:outbox_replay",
    )
    assert replay.requested_by.startswith("command:")
    assert replay.criteria == {"consumers": ["journal"], "statuses": ["failed", "dead"]}
    assert sorted(ReplayItem.objects.values_list("previous_status", flat=True)) == ["dead", "failed"]
    statuses = dict(Delivery.objects.values_list("id", "status"))
    assert [statuses[d.pk] for d in deliveries] == ["published", "published", "done"]


def test_a_done_delivery_is_left_out_unless_forced(deliveries: list[Delivery]) -> None:
    done = deliveries[2]
    out = run("--event-id", str(done.event_id), "--status", "done", "--reason", "check")
    assert "Left out 1 delivery already done" in out
    assert queued() == []
    out = run("--event-id", str(done.event_id), "--force", "--reason", "rebuild the journal")
    assert "Sent 1 delivery again" in out
    assert queued() == [done.event_id]
    assert Replay.objects.get().forced is True


def test_filters_narrow_by_type_aggregate_and_time(deliveries: list[Delivery]) -> None:
    event = Event.objects.get(pk=deliveries[1].event_id)
    out = run("--dry-run", "--aggregate", f"item:{event.aggregate_id}")
    assert "Would send 1 delivery" in out
    assert "No delivery matches" in run("--dry-run", "--type", "shipment.sent")
    assert "No delivery matches" in run("--dry-run", "--since", "2999-01-01")
    with pytest.raises(CommandError, match="--since takes a date or a time"):
        run("--dry-run", "--since", "yesterday")


def test_a_replay_to_a_consumer_that_does_not_exist_is_refused(deliveries: list[Delivery]) -> None:
    Delivery.objects.filter(pk=deliveries[0].pk).update(consumer="retired")
    with pytest.raises(CommandError, match="No consumer named retired exists"):
        run("--reason", "try")
    assert not Replay.objects.exists()


def test_to_sends_events_to_a_consumer_creating_the_deliveries_it_had_none_of(deliveries: list[Delivery]) -> None:
    """A consumer added after the fact, or an event it missed: --to sends the selected events to
    it, creating the deliveries that do not exist; a dry run shows which would be created and
    creates nothing."""
    Item.objects.create(sku="C-new", name="New", price=1)
    new = events().order_by("-id").values_list("id", flat=True)[0]
    out = run("--to", "journal", "--type", "item.created", "--dry-run")
    assert f"{new:>9}  item.created" in out
    assert "none: created" in out
    assert "Would send 3 events to journal: 1 with no delivery yet (created), 2 failed, dead or in flight" in out
    assert "1 done, left out (--force sends them)" in out
    assert Delivery.objects.filter(consumer="journal").count() == 3
    assert queued() == []

    out = run("--to", "journal", "--type", "item.created", "--reason", "the journal missed one")
    assert "Sent 3 deliveries again (journal: 3); recorded as replay" in out
    assert queued() == sorted([deliveries[0].event_id, deliveries[1].event_id, new])
    assert Delivery.objects.get(event_id=new, consumer="journal").status == "published"
    replay = Replay.objects.get()
    assert replay.criteria == {"consumers": ["journal"], "event_types": ["item.created"]}
    assert ReplayItem.objects.get(event_id=new).previous_status == ""  # it had none


def test_to_leaves_out_types_the_consumer_does_not_take_and_says_what_is_wrong(
    deliveries: list[Delivery], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run("--to", "stocktake", "--type", "item.created", "--dry-run")
    assert "Left out 3 events of types stocktake does not take: item.created." in out
    assert "No selected event is of a type stocktake takes; nothing to send." in out
    unknown = r"--to: Consumer 'nobody' is not declared\. Enabled consumers: .*\. Nothing was sent\."
    with pytest.raises(CommandError, match=unknown):
        run("--to", "nobody", "--type", "item.created", "--dry-run")
    with pytest.raises(CommandError, match="needs the events to send"):
        run("--to", "journal", "--dry-run")
    with pytest.raises(CommandError, match="does not combine with --consumer, --status or --delivery-id"):
        run("--to", "journal", "--type", "item.created", "--consumer", "journal", "--dry-run")
    from outbox.management.commands import outbox_replay

    monkeypatch.setattr(outbox_replay, "TO_LIMIT", 2)
    with pytest.raises(CommandError, match="More than 2 events match; nothing was sent"):
        run("--to", "journal", "--type", "item.created", "--reason", "too many")
    assert not Replay.objects.exists()
    assert Delivery.objects.count() == 3


@pytest.fixture
def viewer(db: None) -> Client:
    """A staff user who may view the event log, the deliveries and the replays, and the outbox
    tests' items, and nothing more (the roles that grant this are core's: tests/core/test_roles.py)."""
    user = User.objects.create_user("ivy", "ivy@example.com", "pw", is_staff=True)
    codenames = ["view_event", "view_delivery", "view_replay", "view_item"]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_a_viewer_reads_but_cannot_change_delete_or_replay(viewer: Client, deliveries: list[Delivery]) -> None:
    item = Item.objects.create(sku="P1", name="P", price=1)
    assert viewer.get("/admin/outbox_app/item/").status_code == 200
    assert viewer.get(f"/admin/outbox_app/item/{item.pk}/change/").status_code == 200
    assert viewer.post(f"/admin/outbox_app/item/{item.pk}/change/", {"name": "Q"}).status_code == 403
    assert viewer.post(f"/admin/outbox_app/item/{item.pk}/delete/", {"post": "yes"}).status_code == 403
    event = Event.objects.first()
    assert event is not None
    assert viewer.get(f"/admin/outbox/event/{event.pk}/change/").status_code == 200
    assert viewer.post(f"/admin/outbox/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    response = viewer.post(
        "/admin/outbox/delivery/", {"action": "replay_deliveries", "_selected_action": [deliveries[0].pk]}
    )
    assert response.status_code == 403
    assert queued() == []
    assert not Replay.objects.exists()
    item.refresh_from_db()
    assert item.name == "P"


def test_a_post_without_its_csrf_token_is_refused(staff_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    response = client.post("/admin/outbox_app/item/add/", {"sku": "EVE-1", "name": "Eve", "price": "1.00"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert not User.objects.filter(username="eve").exists()
    assert not Item.objects.filter(sku="EVE-1").exists()
