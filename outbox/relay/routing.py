"""Routing: which consumers receive an event, and the messages that carry it.

The routes come from the consumers' declarations (`@outbox.consumer`, outbox/consume/declare.py):
no central table lists them.

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
from outbox.consume import declare


def load_actors() -> None:
    """Import the apps' actor modules, as the worker does, and make every declared consumer's actor
    on the current broker, so that the broker knows every actor."""
    for app in apps.get_app_configs():
        for module in conf.actor_modules():
            name = f"{app.name}.{module}"
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
    declare.actors_declare()


def routes() -> dict[str, list[str]]:
    """Event type (or "*" for all) → the consumers that take it, from the enabled declarations."""
    table: dict[str, list[str]] = {}
    for declared in declare.enabled():
        for event_type in declared.events:
            table.setdefault(event_type, []).append(declared.name)
    return table


def consumers_for(event_type: str, table: dict[str, list[str]] | None = None) -> tuple[str, ...]:
    """Return the consumers that receive events of this type, each once."""
    table = routes() if table is None else table
    return tuple(dict.fromkeys([*table.get(event_type, ()), *table.get("*", ())]))


def route_names() -> set[str]:
    """Return every consumer named by the routes."""
    return {name for names in routes().values() for name in names}


def route_pairs(event_types: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return the routes of these event types as parallel lists (types, consumers), each pair once."""
    table = routes()
    types: list[str] = []
    consumers: list[str] = []
    for event_type in event_types:
        for name in consumers_for(event_type, table):
            types.append(event_type)
            consumers.append(name)
    return types, consumers


def event_ids_by_consumer(events: Iterable[tuple[int, str]]) -> dict[str, list[int]]:
    """Return, per consumer, the ids of the events routed to it, from (id, type) pairs."""
    table = routes()
    known: dict[str, tuple[str, ...]] = {}
    by_consumer: dict[str, list[int]] = defaultdict(list)
    for event_id, event_type in events:
        consumers = known.get(event_type)
        if consumers is None:
            consumers = known[event_type] = consumers_for(event_type, table)
        for consumer in consumers:
            by_consumer[consumer].append(event_id)
    return by_consumer


def messages(events: Iterable[tuple[int, str]]) -> list[Message[None]]:
    """Return one message per consumer carrying the ids of its events, from (id, type) pairs."""
    return [message(consumer, ids) for consumer, ids in event_ids_by_consumer(events).items()]


def message(consumer: str, event_ids: list[int]) -> Message[None]:
    """Return the message that asks `consumer` to handle these events."""
    declared = declare.declaration(consumer)
    queue = declare.queue_of(declared) if declared else dramatiq.get_broker().get_actor(consumer).queue_name
    return Message(queue_name=queue, actor_name=consumer, args=(event_ids,), kwargs={}, options={})


def split_coalesced(events: Iterable[tuple[int, str]]) -> tuple[list[Message[None]], dict[str, list[int]]]:
    """Return a batch's messages to send now and, per consumer that takes its events together
    (`@consumer(coalesce=...)`), the event ids the relay holds for it, from (id, type) pairs."""
    now: list[Message[None]] = []
    held: dict[str, list[int]] = {}
    for consumer, ids in event_ids_by_consumer(events).items():
        declared = declare.declaration(consumer)
        if declared is not None and declared.coalesce > 0:
            held[consumer] = ids
        else:
            now.append(message(consumer, ids))
    return now, held


def coalesce_seconds(consumers: Iterable[str]) -> float:
    """The shortest time any of these consumers' messages may be held."""
    found = [d.coalesce for d in map(declare.declaration, consumers) if d is not None]
    return min(found, default=0.0)
