"""Routing: which consumers (Dramatiq actors) receive an event, and the messages that carry it.

One message per (consumer, batch) carries the ids of every event in the batch for that consumer:
a worker then handles a batch per message instead of paying the broker round trip per event.
"""

import importlib
import importlib.util
from collections import defaultdict
from collections.abc import Iterable

import dramatiq
from django.apps import apps
from dramatiq import Message

from outbox import conf


def load_actors() -> None:
    """Import the apps' actor modules, as the worker does, so that the broker knows every actor."""
    for app in apps.get_app_configs():
        for module in conf.actor_modules():
            name = f"{app.name}.{module}"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


def consumers_for(event_type: str, table: dict[str, list[str]] | None = None) -> tuple[str, ...]:
    """Return the consumers that receive events of this type, each once."""
    table = conf.routes() if table is None else table
    return tuple(dict.fromkeys([*table.get(event_type, ()), *table.get("*", ())]))


def route_names() -> set[str]:
    """Return every consumer named by the routes."""
    return {name for names in conf.routes().values() for name in names}


def route_pairs(event_types: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return the routes of these event types as parallel lists (types, consumers), each pair once."""
    table = conf.routes()
    types: list[str] = []
    consumers: list[str] = []
    for event_type in event_types:
        for name in consumers_for(event_type, table):
            types.append(event_type)
            consumers.append(name)
    return types, consumers


def messages(events: Iterable[tuple[int, str]]) -> list[Message[None]]:
    """Return one message per consumer carrying the ids of its events, from (id, type) pairs."""
    table = conf.routes()
    known: dict[str, tuple[str, ...]] = {}
    by_consumer: dict[str, list[int]] = defaultdict(list)
    for event_id, event_type in events:
        consumers = known.get(event_type)
        if consumers is None:
            consumers = known[event_type] = consumers_for(event_type, table)
        for consumer in consumers:
            by_consumer[consumer].append(event_id)
    return [message(consumer, ids) for consumer, ids in by_consumer.items()]


def message(consumer: str, event_ids: list[int]) -> Message[None]:
    """Return the message that asks `consumer` to handle these events."""
    actor = dramatiq.get_broker().get_actor(consumer)
    return Message(queue_name=actor.queue_name, actor_name=consumer, args=(event_ids,), kwargs={}, options={})
