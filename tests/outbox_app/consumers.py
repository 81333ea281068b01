"""The outbox tests' consumers: two transactional ones (a journal of every event, the stock of
the items), an external one (a notice by e-mail) and an ordered one (the tallies' sequence)."""

import logging
from typing import Any

from django.core import mail
from django.db import transaction
from django.db.models import F

from outbox import DedupeKey, Event, PermanentError, consumer, seals
from outbox.models import Delivery
from tests.outbox_app.events import ALL_EVENTS
from tests.outbox_app.models import Item, JournalEntry, SequenceEntry, Shipment, ShipmentLine, Tally

logger = logging.getLogger("tests.outbox_app.journal")


@consumer("journal", events=list(ALL_EVENTS), batch=True, together=True, records=["outbox_app.JournalEntry"])
def journal_write(events: list[Event]) -> None:
    """Record each event with its seal, and log one line for it once the transaction commits."""
    sealed = seals(events)
    JournalEntry.objects.bulk_create(
        JournalEntry(
            event_id=event.id,
            event_type=event.event_type,
            aggregate=f"{event.aggregate_type}:{event.aggregate_id}",
            seal=sealed[event.id],
        )
        for event in events
    )

    # After the commit that records the deliveries: a rolled-back attempt logs nothing.
    def log() -> None:
        for event in events:
            logger.info("Journal entry for event %s.", event.id)

    transaction.on_commit(log)


def _state(event: Event) -> dict[str, Any]:
    state = event.payload.get("state") if isinstance(event.payload, dict) else None
    if not isinstance(state, dict):
        raise PermanentError(f"Event {event.id} ({event.event_type}) has no payload.state.")
    return state


def _restock_delta(event: Event) -> dict[int, int]:
    state = _state(event)
    if not isinstance(state.get("item_id"), int) or not isinstance(state.get("quantity"), int):
        raise PermanentError(f"Event {event.id} ({event.event_type}) has no integer item_id and quantity.")
    if event.event_type == "item.restocked":
        return {state["item_id"]: state["quantity"]}
    if event.event_type == "item.restock_removed":
        return {state["item_id"]: -state["quantity"]}
    change = event.payload.get("changes", {}).get("quantity")  # item.restock_corrected
    return {state["item_id"]: change["new"] - change["old"]} if change else {}


def _shipment_delta(event: Event) -> dict[int, int]:
    if event.event_type == "shipment.sent":
        sign = -1
    elif event.payload.get("changes", {}).get("status", {}).get("old") == Shipment.Status.SENT:
        sign = 1  # a sent shipment cancelled: its units are back
    else:
        return {}
    delta: dict[int, int] = {}
    for item_id, quantity in ShipmentLine.objects.filter(shipment_id=int(event.aggregate_id)).values_list(
        "item_id", "quantity"
    ):
        delta[item_id] = delta.get(item_id, 0) + sign * quantity
    return delta


@consumer(
    "stocktake",
    events=["item.restocked", "item.restock_corrected", "item.restock_removed", "shipment.sent", "shipment.cancelled"],
)
def stock_take(event: Event) -> None:
    """Keep each item's stock: restocks put units in, a sent shipment takes its lines out."""
    delta = _restock_delta(event) if event.event_type.startswith("item.") else _shipment_delta(event)
    for item_id, change in sorted(delta.items()):
        Item.objects.filter(pk=item_id).update(stock=F("stock") + change)


@consumer(
    "courier",
    events=["shipment.sent", "shipment.cancelled"],
    kind="external",
    dedupe_key=lambda event: f"shipment:{event.aggregate_id}:{event.event_type}",
    retries=2,
)
def notice_send(event: Event, key: DedupeKey) -> None:
    """E-mail the recipient that the shipment went out, or was cancelled; the key's token makes
    the Message-ID, so a repeat is recognisable."""
    state = _state(event)
    what = "is on its way" if event.event_type == "shipment.sent" else "was cancelled"
    mail.EmailMessage(
        subject=f"Shipment {state['id']} {what}",
        body=f"Shipment {state['id']} {what}.",
        to=[state["recipient"]],
        headers={"Message-ID": f"<{key.token.hex}@outbox-app.example>"},
    ).send()


@consumer("sequence", events=["tally.created", "tally.changed"], ordered=True, records=["outbox_app.SequenceEntry"])
def sequence_record(event: Event) -> None:
    """Record each tally's events in the order handled. A count of -1 is poison while the tally's
    count is still -1 (changing it is the fix; then replay), -3 is poison for good, and -2 fails
    its first attempt."""
    state = _state(event)
    fixed = not Tally.objects.filter(pk=int(event.aggregate_id), count=-1).exists()
    if state["count"] == -3 or (state["count"] == -1 and not fixed):
        raise PermanentError(f"Tally {event.aggregate_id} version {event.aggregate_version} is poison.")
    # In the delivery's transaction, which counted this attempt: the first has attempts 1.
    if state["count"] == -2 and Delivery.objects.filter(event_id=event.id, consumer="sequence", attempts__lte=1):
        raise RuntimeError(f"Tally {event.aggregate_id} version {event.aggregate_version} fails its first attempt.")
    SequenceEntry.objects.create(
        event_id=event.id, tally_id=int(event.aggregate_id), version=event.aggregate_version, count=state["count"]
    )
