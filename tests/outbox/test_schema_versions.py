"""Schema versions: each event row keeps the version it was written at; handlers, replays,
exports and the admin read it at its type's current version, upcast; the row never changes; the
system checks name a version without an upcaster path, and versions in the log above this code's.

The story, on the outbox tests' app: `item.restocked` payloads were `{"state": {"item": 7, "qty":
5}}` at version 1, named the item `item_id` at version 2, and the quantity `quantity` at version 3,
the shape the `stocktake` consumer reads (and the one a Restock's save writes).
"""

import csv
import io
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection, transaction
from django.test import Client, override_settings

from outbox import upcaster
from outbox.consume.run import Attempt, deliver
from outbox.emit import schemas
from outbox.emit.writer import NewEvent, events_write
from outbox.errors import RegistrationError
from outbox.eventlog.sealing import verify
from outbox.models import Delivery, Event, Pending
from tests.outbox_app.models import Item, Restock
from tests.processes import queued

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_queues")]

TYPE = "item.restocked"
FIRST = Attempt(1, 6)
Up = Callable[[dict[str, Any]], dict[str, Any]]


def item_named_item_id(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: the item's key is `item_id`."""
    payload["state"]["item_id"] = payload["state"].pop("item")
    return payload


def qty_named_quantity(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 2 → 3: the quantity's key is `quantity`."""
    payload["state"]["quantity"] = payload["state"].pop("qty")
    return payload


UPCASTERS: dict[int, Up] = {1: item_named_item_id, 2: qty_named_quantity}


@pytest.fixture(autouse=True)
def scratch_versions() -> Iterator[None]:
    """Each test declares item.restocked's versions itself (at_version); none is left after it."""
    schemas.forget(TYPE)
    yield
    schemas.forget(TYPE)


def at_version(version: int, upcasters: dict[int, Up] | None = None) -> None:
    """Run as the code that declares item.restocked at `version`, with these upcasters (by default
    the story's, up to that version)."""
    schemas.forget(TYPE)
    schemas.versions_declare({TYPE: version}, by="Restock", emits=None)
    if upcasters is None:
        upcasters = {v: function for v, function in UPCASTERS.items() if v < version}
    for from_version, function in upcasters.items():
        upcaster(TYPE, from_version)(function)


def written(item: Item, state: dict[str, Any]) -> Event:
    """An item.restocked event, written by the writer at the version declared now, with this state."""
    with transaction.atomic():
        events_write(
            [NewEvent(event_type=TYPE, aggregate_type="item", aggregate_id=str(item.pk), payload={"state": state})]
        )
    return Event.objects.filter(event_type=TYPE).latest("id")


@pytest.fixture
def item() -> Item:
    return Item.objects.create(sku="KB-001", name="Keyboard", price=Decimal("89.00"))


@pytest.fixture
def history(item: Item) -> list[Event]:
    """Three restocks of the item, one written at each version: 5 units, 6 and 4."""
    at_version(1)
    v1 = written(item, {"id": 1, "item": item.pk, "qty": 5})
    at_version(2)
    v2 = written(item, {"id": 2, "item_id": item.pk, "qty": 6})
    at_version(3)
    Restock.objects.create(item=item, quantity=4)
    v3 = Event.objects.filter(event_type=TYPE).latest("id")
    Pending.objects.all().delete()  # as if relayed: the tests deliver the ids themselves
    return [v1, v2, v3]


def stored(event_id: int) -> tuple[int, Any]:
    """The row's schema version and payload, read by SQL: what the log holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT schema_version, payload FROM outbox_event WHERE id = %s", [event_id])
        version, payload = cursor.fetchone()
    return version, json.loads(payload) if isinstance(payload, str) else payload


@pytest.mark.parametrize("prepared", [True, False])
def test_the_writer_stores_each_events_schema_version_and_tags_it(item: Item, prepared: bool) -> None:
    """Committed through the prepared insert sent with COMMIT, and through the plain one."""
    at_version(2)
    with override_settings(OUTBOX_PREPARED_STATEMENTS=prepared):
        Restock.objects.create(item=item, quantity=3)
        item.name = "Keyboard II"
        item.save()
    restocked = Event.objects.checked().get(event_type=TYPE)
    assert restocked.schema_version == 2
    assert Event.objects.get(event_type="item.updated").schema_version == 1  # not declared: version 1
    assert Event.objects.get(event_type="item.created").schema_version == 1
    assert restocked.is_authentic()
    # The tag covers the version: the same row claiming another version is no writer's.
    restocked.schema_version = 1
    assert not restocked.is_authentic()


def test_a_handler_reads_every_version_upcast_and_the_rows_stay_as_written(history: list[Event], item: Item) -> None:
    """Versions 1, 2 and 3 reach the stocktake consumer as version 3, through the chain of upcasters."""
    before = [stored(event.id) for event in history]
    assert [version for version, _ in before] == [1, 2, 3]

    outcome = deliver("stocktake", [event.id for event in history], attempt=FIRST)

    assert sorted(outcome.done) == [event.id for event in history]
    item.refresh_from_db()
    assert item.stock == 5 + 6 + 4
    assert [stored(event.id) for event in history] == before
    assert before[0][1] == {"state": {"id": 1, "item": item.pk, "qty": 5}}


def test_upcast_events_are_sealed_as_stored_and_the_log_verifies(history: list[Event]) -> None:
    """The journal seals what it handled (upcast) and the sealer seals as stored: one chain, and it holds."""
    ids = [event.id for event in history]
    deliver("journal", ids[:2], attempt=FIRST)
    deliver("outbox_seal", ids, attempt=FIRST)
    assert Delivery.objects.filter(event_id__in=ids, status="done").count() == 2 + 3
    assert verify().problems == []
    # The seal covers the version too: a version changed behind the log's back is named.
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE outbox_event DISABLE TRIGGER outbox_event_append_only")
        try:
            cursor.execute("UPDATE outbox_event SET schema_version = 2 WHERE id = %s", [ids[2]])
        finally:
            cursor.execute("ALTER TABLE outbox_event ENABLE TRIGGER outbox_event_append_only")
    assert [(p.kind, p.event_id) for p in verify().problems or []] == [("changed", ids[2])]


def test_an_upcaster_that_fails_is_a_clear_dead_delivery_and_a_replay_after_the_fix_applies_it(
    history: list[Event], item: Item
) -> None:
    """Nothing is lost: the event stays as written, its delivery dead with what failed; replayed, it is applied."""

    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        payload["state"]["quantity"] = payload["state"]["qty_typo"]
        return payload

    at_version(3, {1: item_named_item_id, 2: broken})
    v1, v2, v3 = (event.id for event in history)
    outcome = deliver("stocktake", [v1, v2, v3], attempt=FIRST)

    assert outcome.done == [v3]
    assert outcome.dead.keys() == {v1, v2}
    delivery = Delivery.objects.get(event_id=v1, consumer="stocktake")
    assert delivery.status == "dead"
    assert delivery.last_error == (
        f"Event {v1} (item.restocked item:{item.pk}): its item.restocked payload could not be brought from schema "
        "version 1 to 3: the upcaster from version 2 to 3 "
        "(tests.outbox.test_schema_versions.test_an_upcaster_that_fails_is_a_clear_dead_delivery_and_a_replay_after_"
        "the_fix_applies_it.<locals>.broken) raised KeyError: 'qty_typo'. Fix the upcaster, then replay the event."
    )
    item.refresh_from_db()
    assert item.stock == 4
    assert stored(v1)[0] == 1

    at_version(3)  # the fix deployed
    out = StringIO()
    call_command("outbox_replay", "--consumer", "stocktake", "--reason", "upcaster fixed", stdout=out)
    assert "Sent 2 deliveries again" in out.getvalue()
    assert queued("stocktake") == [v1, v2]
    assert sorted(deliver("stocktake", queued("stocktake"), attempt=FIRST).done) == [v1, v2]
    item.refresh_from_db()
    assert item.stock == 5 + 6 + 4


def test_exports_and_the_admin_show_the_payload_upcast_and_the_row_as_written(
    history: list[Event], admin_client: Client, item: Item
) -> None:
    v1 = history[0]
    current = {"state": {"id": 1, "item_id": item.pk, "quantity": 5}}

    def export(action: str) -> str:
        response: Any = admin_client.post("/admin/outbox/event/", {"action": action, "_selected_action": [v1.id]})
        return b"".join(response.streaming_content).decode()

    [record] = [json.loads(line) for line in export("export_events_jsonl").splitlines()]
    assert (record["id"], record["schema_version"], record["payload"]) == (v1.id, 3, current)
    [row] = csv.DictReader(io.StringIO(export("export_events_csv")))
    assert (row["id"], row["schema_version"], json.loads(row["payload"])) == (str(v1.id), "3", current)

    page = admin_client.get(f"/admin/outbox/event/{v1.id}/change/").content.decode()
    assert "3: written at version 1, shown upcast (the row is unchanged)" in page
    assert "&quot;quantity&quot;: 5" in page  # the payload, as readers get it
    assert "&quot;qty&quot;: 5" in page  # the payload as written
    timeline = admin_client.get(f"/admin/outbox/event/timeline/item/{item.pk}/").content.decode()
    assert "&quot;quantity&quot;: 5" in timeline
    assert "&quot;qty&quot;" not in timeline
    assert stored(v1.id) == (1, {"state": {"id": 1, "item": item.pk, "qty": 5}})


def test_an_event_whose_upcaster_fails_is_shown_and_exported_as_written(
    history: list[Event], admin_client: Client, item: Item, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader of the log is not refused the event: it gets it as written, at its own version, and why."""

    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("no such shape")

    at_version(3, {1: broken, 2: qty_named_quantity})
    v1 = history[0]
    response: Any = admin_client.post(
        "/admin/outbox/event/", {"action": "export_events_jsonl", "_selected_action": [v1.id]}
    )
    [record] = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert (record["schema_version"], record["payload"]) == (1, {"state": {"id": 1, "item": item.pk, "qty": 5}})
    assert f"Event {v1.id} is exported as stored, at schema version 1" in caplog.text
    page = admin_client.get(f"/admin/outbox/event/{v1.id}/change/").content.decode()
    assert "1, shown as written: it cannot be brought to the current version." in page
    assert "raised ValueError: no such shape" in page


def test_the_check_fails_for_a_version_without_an_upcaster_path() -> None:
    at_version(3, {2: qty_named_quantity})
    with pytest.raises(SystemCheckError) as failed:
        call_command("check")
    assert (
        "outbox.E007) 'item.restocked' is at schema version 3, but no upcaster brings version 1 to 2: its events "
        "written at version 1 could not be read."
    ) in str(failed.value)
    assert "HINT: Declare @outbox.upcaster('item.restocked', 1)" in str(failed.value)

    at_version(2, {1: item_named_item_id, 2: qty_named_quantity})
    with pytest.raises(
        SystemCheckError, match=r"outbox\.E007\) An upcaster brings 'item.restocked' from schema version 2"
    ):
        call_command("check")

    at_version(3)
    call_command("check")


def test_the_check_of_the_log_names_versions_above_this_codes_and_consumers_refuse_them(item: Item) -> None:
    """After a rollback to code that declares version 1, the log still holds version 2 events."""
    at_version(2)
    newer = written(item, {"id": 1, "item_id": item.pk, "qty": 2})
    at_version(1)  # the rollback

    call_command("check")  # without the database, the check of the log does not run
    with pytest.raises(SystemCheckError) as failed:
        call_command("check", "--database", "default")
    assert (
        "outbox.E008) The event log holds 'item.restocked' events of schema version 2, above the type's current "
        "version 1 in this code"
    ) in str(failed.value)
    assert "Deploy the code that declares 'item.restocked' at version 2 again" in str(failed.value)

    outcome = deliver("stocktake", [newer.id], attempt=FIRST)
    assert "is of schema version 2, newer than this code's current version 1" in outcome.dead[newer.id]

    at_version(2)
    call_command("check", "--database", "default")


def test_the_check_of_the_log_reads_the_partial_index_not_the_table(item: Item) -> None:
    at_version(2)
    written(item, {"id": 1, "item_id": item.pk, "qty": 2})
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a tiny table: make the plan say what it can use
        from outbox.backends.postgresql.operations import _SCHEMA_VERSIONS

        cursor.execute("EXPLAIN " + _SCHEMA_VERSIONS, [1000])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert "outbox_event_schema_idx" in plan
    assert "Seq Scan on outbox_event" not in plan


def test_declarations_that_cannot_work_are_refused() -> None:
    with pytest.raises(RegistrationError, match=r"the schema version of 'item.restocked' must be a whole number"):
        schemas.versions_declare({TYPE: 0}, by="Restock", emits=None)
    with pytest.raises(RegistrationError, match=r"versions names 'item.restoked', which it does not emit"):
        schemas.versions_declare({"item.restoked": 2}, by="Restock", emits=(TYPE,))
    schemas.versions_declare({TYPE: 2}, by="Restock", emits=None)
    with pytest.raises(RegistrationError, match=r"Other declares 'item.restocked' at schema version 3, but Restock"):
        schemas.versions_declare({TYPE: 3}, by="Other", emits=None)
    upcaster(TYPE, 1)(item_named_item_id)
    with pytest.raises(RegistrationError, match=r"'item.restocked' has two upcasters from schema version 1"):
        upcaster(TYPE, 1)(qty_named_quantity)
    with pytest.raises(RegistrationError, match=r"from_version must be a whole number from 1"):
        upcaster(TYPE, 0)
