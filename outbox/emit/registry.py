"""Which models emit events, and how their saves become events.

The outbox knows no business model: an app declares its emitting models with `register()`
(for this project, `core/events.py`), and the outbox connects its receivers to them.
"""

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from outbox.emit import schemas
from outbox.errors import RegistrationError

__all__ = ["Change", "ChangeKind", "EventSpec", "RegistrationError", "by_kind", "register"]


class ChangeKind(str, enum.Enum):
    """What happened to the row."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(slots=True)
class Change:
    """One saved or deleted row, as a spec's event-type function sees it."""

    kind: ChangeKind
    instance: models.Model
    # attname -> (old, new); old is None for a created row or when it was never loaded.
    changes: Mapping[str, tuple[Any, Any]]


EventTypeFunc = Callable[[Change], str | None]


@dataclass(frozen=True)
class EventSpec:
    """How one model's saves and deletes become events."""

    model: type[models.Model]
    aggregate_type: str
    event_type: EventTypeFunc
    aggregate_id: Callable[[Any], object] = field(default=lambda instance: instance.pk)
    # Fields maintained by consumers (projections such as a stock level): changing only these
    # writes no event, and QuerySet.update() may touch them.
    untracked_fields: frozenset[str] = frozenset()
    # The event types the model may emit (by_kind() knows its own; None: not declared).
    emits: tuple[str, ...] | None = None
    # Worked out once at registration, since every save reads them: (name, attname) of every
    # concrete field, and the attnames of the tracked ones.
    attnames: tuple[str, ...] = ()
    tracked: tuple[tuple[str, str], ...] = ()


_specs: dict[type[models.Model], EventSpec] = {}


def by_kind(**types: str) -> EventTypeFunc:
    """Return an event-type function that maps created/updated/deleted to the given types.

    An update that changed no tracked field emits nothing.
    """
    unknown = set(types) - {kind.value for kind in ChangeKind}
    if unknown:
        raise RegistrationError(f"by_kind() got unknown change kinds {sorted(unknown)}")

    def event_type(change: Change) -> str | None:
        if change.kind is ChangeKind.UPDATED and not change.changes:
            return None
        return types.get(change.kind.value)

    event_type.emits = tuple(types.values())  # type: ignore[attr-defined]
    return event_type


def register(
    model: type[models.Model],
    *,
    aggregate_type: str,
    event_type: EventTypeFunc,
    aggregate_id: Callable[[Any], object] | None = None,
    untracked_fields: tuple[str, ...] = (),
    emits: tuple[str, ...] | None = None,
    versions: Mapping[str, int] | None = None,
) -> EventSpec:
    """Declare that saves and deletes of `model` write events; return the declaration.

    `versions` gives the current schema version of those of its event types whose payload's shape
    changed since their first (`{"order.placed": 2}`; every other type is at version 1), each with
    an upcaster from every version below it (`@outbox.upcaster`, outbox/emit/schemas.py).
    """
    from outbox.emit.model import EmittingModel

    if not issubclass(model, EmittingModel):
        raise RegistrationError(
            f"{model.__name__} must inherit outbox.EmittingModel to emit events: its "
            "save() and delete() must run in a transaction with the event insert."
        )
    if model in _specs:
        raise RegistrationError(f"{model.__name__} is registered twice.")
    names = {f.name for f in model._meta.concrete_fields} | {f.attname for f in model._meta.concrete_fields}
    missing = set(untracked_fields) - names
    if missing:
        raise RegistrationError(f"{model.__name__} has no fields {sorted(missing)}.")
    untracked = frozenset(untracked_fields)
    fields = model._meta.concrete_fields
    declared_emits = tuple(emits) if emits is not None else getattr(event_type, "emits", None)
    if versions:
        schemas.versions_declare(versions, by=model.__name__, emits=declared_emits)
    spec = EventSpec(
        model=model,
        aggregate_type=aggregate_type,
        event_type=event_type,
        aggregate_id=aggregate_id or (lambda instance: instance.pk),
        untracked_fields=untracked,
        emits=declared_emits,
        attnames=tuple(f.attname for f in fields),
        tracked=tuple((f.name, f.attname) for f in fields if not {f.name, f.attname} & untracked),
    )
    _specs[model] = spec
    from outbox.emit.receivers import connect

    connect(model)
    return spec


def spec_for(model: type[models.Model]) -> EventSpec:
    """Return the declaration of an emitting model."""
    try:
        return _specs[model]
    except KeyError:
        raise RegistrationError(
            f"{model.__name__} inherits EmittingModel but is not registered: declare its events with outbox.register()."
        ) from None


def specs() -> list[EventSpec]:
    """Return every declaration."""
    return list(_specs.values())


def emitted_types() -> set[str] | None:
    """Return every event type the emitting models declare, or None if one does not say."""
    found: set[str] = set()
    for spec in _specs.values():
        if spec.emits is None:
            return None
        found.update(spec.emits)
    return found
