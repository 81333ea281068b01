"""Ordered consumers: each aggregate's events in version order, whatever order they arrive in;
waiting recorded, not held; a dead event blocks only its aggregate, until replayed."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from outbox.consume import ordering
from outbox.consume.declare import declaration
from outbox.consume.run import Attempt, deliver
from outbox.models import Delivery, Event, Pending
from outbox.relay import claims
from tests.outbox_app.models import SequenceEntry, Tally
from tests.processes import queued

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_queues")]

FIRST = Attempt(1, 6)
RETRY = Attempt(2, 6)


def tally(name: str, *counts: int) -> list[int]:
    """Create a tally and change its count to each of `counts`; return its events' ids, published."""
    row = Tally.objects.create(name=name, count=0)
    for count in counts:
        row.count = count
        row.save()
    ids = list(
        Event.objects.filter(aggregate_type="tally", aggregate_id=str(row.pk))
        .order_by("aggregate_version")
        .values_list("id", flat=True)
    )
    publish()
    return ids


def publish() -> None:
    """What a relay records after publishing every pending event (its messages are not needed here)."""
    batch = claims.claim(relay="t", limit=10_000, lease=30)
    claims.mark_published(relay="t", batch=batch)


def handled(name: str) -> list[int]:
    """The versions the sequence consumer handled for the tally, in the order it handled them."""
    tally_id = Tally.objects.get(name=name).pk
    return list(SequenceEntry.objects.filter(tally_id=tally_id).order_by("id").values_list("version", flat=True))


def status(event_id: int) -> str:
    return Delivery.objects.get(event_id=event_id, consumer="sequence").status


def test_events_arriving_out_of_order_wait_and_are_released_in_order() -> None:
    v1, v2, v3 = tally("a", 1, 2)
    assert deliver("sequence", [v3], attempt=FIRST).waiting == [v3]
    assert deliver("sequence", [v2], attempt=FIRST).waiting == [v2]
    assert (status(v2), status(v3)) == ("waiting", "waiting")
    assert handled("a") == []

    outcome = deliver("sequence", [v1], attempt=FIRST)
    assert outcome.done == [v1]
    # The finished event releases the whole waiting chain behind it, in one message.
    assert outcome.released == [v2, v3]
    assert queued("sequence") == [v2, v3]
    assert (status(v2), status(v3)) == ("published", "published")
    assert deliver("sequence", [v2, v3], attempt=FIRST).done == [v2, v3]
    assert handled("a") == [1, 2, 3]


def test_an_event_waits_for_a_predecessor_still_in_the_backlog() -> None:
    row = Tally.objects.create(name="b", count=0)
    row.count = 1
    row.save()
    v1, v2 = Event.objects.filter(aggregate_type="tally").order_by("id").values_list("id", flat=True)
    # v1 not relayed yet: v2 may not run before it, even with no delivery of v1 recorded.
    assert deliver("sequence", [v2], attempt=FIRST).waiting == [v2]
    publish()
    assert deliver("sequence", [v1], attempt=FIRST).released == [v2]


def test_a_message_in_any_order_is_handled_in_version_order() -> None:
    ids = tally("c", 1, 2, 3)
    outcome = deliver("sequence", list(reversed(ids)), attempt=FIRST)
    assert sorted(outcome.done) == ids
    assert outcome.waiting == []
    assert handled("c") == [1, 2, 3, 4]


def test_a_retry_in_the_middle_holds_the_rest_until_it_succeeds() -> None:
    v1, v2, v3 = tally("d", -2, 5)
    with pytest.raises(Exception, match="1 of 3 events failed"):
        deliver("sequence", [v1, v2, v3], attempt=FIRST)
    assert (status(v1), status(v2), status(v3)) == ("done", "failed", "waiting")
    assert handled("d") == [1]
    # The message's retry: the failed event, then the one that waited for it.
    outcome = deliver("sequence", [v1, v2, v3], attempt=RETRY)
    assert sorted(outcome.done) == [v2, v3]
    assert handled("d") == [1, 2, 3]


def test_a_dead_event_blocks_only_its_aggregate_until_it_is_replayed() -> None:
    a = tally("poisoned", 1, -1)
    b = tally("healthy", 1, 2, 3)
    outcome = deliver("sequence", a + b, attempt=FIRST)
    assert outcome.dead.keys() == {a[2]}
    assert handled("poisoned") == [1, 2]
    assert handled("healthy") == [1, 2, 3, 4]
    # The fix (the count is no longer -1) is itself an event of the aggregate: it waits behind.
    poisoned = Tally.objects.get(name="poisoned")
    poisoned.count = 4
    poisoned.save()
    v4 = Event.objects.get(aggregate_type="tally", aggregate_id=str(poisoned.pk), aggregate_version=4).id
    publish()
    assert deliver("sequence", [v4], attempt=FIRST).waiting == [v4]
    # Another aggregate flows on.
    more = tally("flowing", 1)
    assert deliver("sequence", more, attempt=FIRST).done == more

    total, rows = ordering.blocked(declaration("sequence"))  # type: ignore[arg-type]
    assert total == 1
    (row,) = rows
    assert (row.aggregate_type, row.aggregate_id, row.event_id, row.aggregate_version) == (
        "tally",
        str(poisoned.pk),
        a[2],
        3,
    )
    assert row.waiting == 1
    assert "is poison" in row.error

    # The replay of the dead event: what waited follows, in order.
    replayed = deliver("sequence", [a[2]], attempt=FIRST)
    assert replayed.done == [a[2]]
    assert replayed.released == [v4]
    deliver("sequence", [v4], attempt=FIRST)
    assert handled("poisoned") == [1, 2, 3, 4]
    assert ordering.blocked(declaration("sequence")) == (0, [])  # type: ignore[arg-type]


@override_settings(OUTBOX_CONSUMERS={"sequence": {"on_dead": "skip"}})
def test_with_on_dead_skip_a_dead_event_is_passed_over() -> None:
    ids = tally("skipped", 1, -3, 4)
    outcome = deliver("sequence", ids, attempt=FIRST)
    assert outcome.dead.keys() == {ids[2]}
    # Held behind the failing event in the run, released once that one was recorded dead.
    assert outcome.waiting == [ids[3]]
    assert outcome.released == [ids[3]]
    deliver("sequence", [ids[3]], attempt=FIRST)
    assert handled("skipped") == [1, 2, 4]
    assert ordering.blocked(declaration("sequence")) == (0, [])  # type: ignore[arg-type]


def test_the_sweeper_releases_what_a_lost_release_left_waiting() -> None:
    v1, v2 = tally("lost", 1)
    deliver("sequence", [v2], attempt=FIRST)
    deliver("sequence", [v1], attempt=FIRST)
    # As if the worker died between its commit and its release: v1 done, v2 still waiting.
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(status="waiting")
    assert ordering.recheck(limit=100) == {}  # not waiting long enough yet
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(
        updated_at=Delivery.objects.get(event_id=v1, consumer="sequence").updated_at
        - timedelta(seconds=ordering.WAITING_RECHECK_SECONDS + 1)
    )
    assert ordering.recheck(limit=100) == {"sequence": [v2]}
    assert status(v2) == "published"


def test_drain_runs_an_ordered_consumer_through_a_retry_and_what_waited_behind_it() -> None:
    from outbox.testing import drain

    row = Tally.objects.create(name="drained", count=0)
    for count in (-2, 5):
        row.count = count
        row.save()
    drain()
    assert handled("drained") == [1, 2, 3]


def test_a_blocked_aggregate_shows_in_status_json_the_dashboard_and_metrics(admin_client: Client) -> None:
    ids = tally("stuck", 1, -3, 2)
    deliver("sequence", ids, attempt=FIRST)
    assert status(ids[2]) == "dead"
    assert status(ids[3]) == "waiting"
    stuck = f"tally:{Tally.objects.get(name='stuck').pk}"

    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["waiting"] == 1
    (row,) = data["blocked_aggregates"]["sequence"]["aggregates"]
    assert (row["aggregate"], row["event_id"], row["aggregate_version"], row["waiting"]) == (stuck, ids[2], 3, 1)
    assert any("sequence is ordered and 1 of its aggregates wait behind a dead event" in n for n in data["attention"])

    page = admin_client.get("/admin/outbox/dashboard/").content.decode()
    assert f"<td>{stuck}</td>" in page
    assert f'href="/admin/outbox/event/{ids[2]}/change/"' in page

    admin_client.force_login(User.objects.create_user("ops", is_staff=True))
    metrics = admin_client.get("/metrics").content.decode()
    assert 'outbox_blocked_aggregates{consumer="sequence"} 1.0' in metrics
    assert 'outbox_deliveries{consumer="sequence",status="waiting"} 1.0' in metrics


def test_with_many_waiting_a_release_asks_by_aggregate_and_releases_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ordering, "WAITING_SCAN", 0)
    v1, v2, v3 = tally("many", 1, 2)
    deliver("sequence", [v3], attempt=FIRST)
    deliver("sequence", [v2], attempt=FIRST)
    assert deliver("sequence", [v1], attempt=FIRST).released == [v2, v3]
    deliver("sequence", [v2, v3], attempt=FIRST)
    assert handled("many") == [1, 2, 3]


def test_a_removed_consumers_waiting_rows_never_crowd_out_the_recheck() -> None:
    v1, v2 = tally("crowded", 1)
    deliver("sequence", [v2], attempt=FIRST)
    deliver("sequence", [v1], attempt=FIRST)
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(status="waiting")  # a lost release
    old = timezone.now() - timedelta(seconds=ordering.WAITING_RECHECK_SECONDS + 60)
    for event_id in (v1, v2):  # older rows of a consumer that no longer exists
        Delivery.objects.create(event_id=event_id, consumer="gone", status="waiting", updated_at=old)
    Delivery.objects.filter(consumer="gone").update(updated_at=old)
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(updated_at=old + timedelta(seconds=1))
    assert ordering.recheck(limit=2) == {"sequence": [v2]}
    assert Delivery.objects.filter(consumer="gone", status="waiting").count() == 2


def test_an_event_waits_behind_an_unsettled_one_even_when_the_event_between_never_reached_the_consumer() -> None:
    v1, v2, v3, v4 = tally("gap", -2, 3, 4)
    with pytest.raises(Exception, match="1 of 2 events failed"):
        deliver("sequence", [v1, v2], attempt=FIRST)
    assert status(v2) == "failed"
    Delivery.objects.filter(event_id=v3, consumer="sequence").delete()  # v3 never routed to it
    assert deliver("sequence", [v4], attempt=FIRST).waiting == [v4]
    assert handled("gap") == [1]
    assert deliver("sequence", [v2], attempt=RETRY).released == [v4]
    deliver("sequence", [v4], attempt=FIRST)
    assert handled("gap") == [1, 2, 4]


def test_a_backfill_holds_only_what_it_has_yet_to_reach() -> None:
    from outbox.models import Backfill

    v1, v2 = tally("reached", 1)
    Delivery.objects.filter(event_id=v1, consumer="sequence").delete()
    Pending.objects.filter(event_id=v1).delete()
    backfill = Backfill.objects.create(consumer="sequence", upto=v2, cursor=0, requested_by="test")
    assert deliver("sequence", [v2], attempt=FIRST).waiting == [v2]  # v1 is still ahead of it
    Backfill.objects.filter(pk=backfill.pk).update(cursor=v1)  # it passed v1 (and found it not its to send)
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(status="published")
    assert deliver("sequence", [v2], attempt=FIRST).done == [v2]


@pytest.mark.parametrize("key", ["ordered", "enabled"])
def test_a_string_where_a_boolean_belongs_is_refused(key: str) -> None:
    from outbox.consume.declare import is_ordered
    from outbox.errors import RegistrationError

    with (
        override_settings(OUTBOX_CONSUMERS={"sequence": {key: "false"}}),
        pytest.raises(
            RegistrationError, match=rf"OUTBOX_CONSUMERS\['sequence'\]\['{key}'\] is 'false': give true or false"
        ),
    ):
        is_ordered(declaration("sequence"))  # type: ignore[arg-type]


def test_a_redelivered_message_of_done_events_releases_what_waits_behind_them() -> None:
    """Events done before the message arrived (a redelivery, or a retry after a run cut short) or
    done by `settled` still release their successors, without waiting for the sweeper."""
    v1, v2 = tally("redelivered", 1)
    deliver("sequence", [v2], attempt=FIRST)
    deliver("sequence", [v1], attempt=FIRST)
    Delivery.objects.filter(event_id=v2, consumer="sequence").update(status="waiting")  # its release was lost
    outcome = deliver("sequence", [v1], attempt=FIRST)
    assert outcome.skipped == [v1]
    assert outcome.released == [v2]
