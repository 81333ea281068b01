"""Routing: which consumers get which events, taken from the consumers' declarations."""

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from outbox import consumer
from outbox.consume import declare
from outbox.relay import routing


def wildcards() -> set[str]:
    """The enabled consumers that take every event: the outbox's sealer, and any an app declares so."""
    return {c.name for c in declare.enabled() if declare.ALL in c.events}


def test_routes_combine_the_type_and_the_wildcard_once_each(settings: Any) -> None:
    """An event goes to the consumers that name its type and to those that take "*", each once."""
    assert "outbox_seal" in wildcards()
    assert sorted(routing.consumers_for("shipment.sent")) == sorted({"courier", "journal", "stocktake", *wildcards()})
    assert set(routing.consumers_for("item.updated")) == {"journal", *wildcards()}
    consumer("twice", events=["item.updated", "item.updated"])(lambda event: None)
    consumer("everything", events="*")(lambda event: None)
    try:
        assert routing.consumers_for("item.updated").count("twice") == 1
        assert "everything" in routing.consumers_for("item.updated")
        assert "everything" in routing.consumers_for("shipment.sent")
        assert "twice" not in routing.consumers_for("shipment.sent")
    finally:
        declare.forget("twice")
        declare.forget("everything")


def test_one_message_per_consumer_carries_the_batch() -> None:
    """A batch becomes one message per consumer, on that consumer's queue, carrying its event ids."""
    routing.load_actors()
    messages = routing.messages([(1, "shipment.sent"), (2, "item.updated")])
    found = {m.actor_name: (m.queue_name, list(m.args[0])) for m in messages}
    assert len(found) == len(messages)
    declared = {c.name: c for c in declare.enabled()}
    everything = {name: (declare.queue_of(declared[name]), [1, 2]) for name in wildcards()}
    assert found == {
        **everything,
        "courier": ("courier", [1]),
        "journal": ("journal", [1, 2]),
        "outbox_seal": ("outbox_seal", [1, 2]),
        "stocktake": ("stocktake", [1]),
    }


def test_check_fails_on_a_consumer_declared_outside_any_app() -> None:
    """A declaration the worker would never load is an error (outbox.E002) that says where to put it."""
    handler = lambda event: None  # noqa: E731
    handler.__module__ = "scratch"
    consumer("stray", events=["item.updated"])(handler)
    try:
        with pytest.raises(SystemCheckError, match=r"(?s)outbox\.E002.*'stray' is declared in scratch"):
            call_command("check")
    finally:
        declare.forget("stray")


def test_check_passes_with_the_shipped_consumers() -> None:
    """Every shipped consumer takes types that something emits, and lives in an installed app."""
    call_command("check")
