"""Routing: which consumers get which events, taken from the consumers' declarations."""

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from outbox import consumer
from outbox.consume import declare
from outbox.relay import routing


def test_routes_combine_the_type_and_the_wildcard_once_each(settings: Any) -> None:
    """An event goes to the consumers that name its type and to those that take "*", each once."""
    assert sorted(routing.consumers_for("order.placed")) == ["audit_log", "email", "inventory", "outbox_seal"]
    assert set(routing.consumers_for("customer.updated")) == {"outbox_seal", "audit_log"}
    consumer("twice", events=["customer.updated", "customer.updated"])(lambda event: None)
    try:
        assert routing.consumers_for("customer.updated").count("twice") == 1
    finally:
        declare.forget("twice")


def test_one_message_per_consumer_carries_the_batch() -> None:
    """A batch becomes one message per consumer, on that consumer's queue, carrying its event ids."""
    routing.load_actors()
    messages = routing.messages([(1, "order.placed"), (2, "customer.updated")])
    assert sorted((m.actor_name, m.queue_name, list(m.args[0])) for m in messages) == [
        ("audit_log", "audit", [1, 2]),
        ("email", "email", [1]),
        ("inventory", "inventory", [1]),
        ("outbox_seal", "outbox_seal", [1, 2]),
    ]


def test_check_fails_on_a_consumer_declared_outside_any_app() -> None:
    """A declaration the worker would never load is an error (outbox.E002) that says where to put it."""
    handler = lambda event: None  # noqa: E731
    handler.__module__ = "scratch"
    consumer("stray", events=["customer.updated"])(handler)
    try:
        with pytest.raises(SystemCheckError, match=r"(?s)outbox\.E002.*'stray' is declared in scratch"):
            call_command("check")
    finally:
        declare.forget("stray")


def test_check_passes_with_the_shipped_consumers() -> None:
    """Every shipped consumer takes types that something emits, and lives in an installed app."""
    call_command("check")
