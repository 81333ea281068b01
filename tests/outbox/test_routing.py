"""The routing table: which consumers get which events, checked against the actors that exist."""

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from outbox.relay import routing


def test_routes_combine_the_type_and_the_wildcard_once_each(settings: Any) -> None:
    """An event goes to its type's consumers and the wildcard's, each once."""
    settings.OUTBOX_ROUTES = {"*": ["audit_log"], "order.placed": ["audit_log", "audit_log"]}
    assert routing.consumers_for("order.placed") == ("audit_log",)
    settings.OUTBOX_ROUTES = {"*": ["audit_log"], "order.placed": ["inventory"]}
    assert routing.consumers_for("order.placed") == ("inventory", "audit_log")
    assert routing.consumers_for("customer.updated") == ("audit_log",)


def test_one_message_per_consumer_carries_the_batch() -> None:
    """A batch becomes one message per consumer, on that consumer's queue, carrying its event ids."""
    routing.load_actors()
    messages = routing.messages([(1, "order.placed"), (2, "customer.updated")])
    assert sorted((m.actor_name, m.queue_name, list(m.args[0])) for m in messages) == [
        ("audit_log", "audit", [1, 2]),
        ("email", "email", [1]),
        ("inventory", "inventory", [1]),
    ]


def test_check_fails_on_a_route_to_an_actor_that_does_not_exist(settings: Any) -> None:
    """`manage.py check` names the unknown consumer and says where to fix it (outbox.E002)."""
    settings.OUTBOX_ROUTES = {"*": ["audit_log", "no_such_actor"]}
    with pytest.raises(SystemCheckError, match=r"(?s)outbox\.E002.*'no_such_actor'.*settings/routes\.py"):
        call_command("check")


def test_check_passes_with_the_shipped_routes() -> None:
    """The routes in settings/routes.py name only actors the worker defines."""
    call_command("check")
