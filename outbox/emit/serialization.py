"""Turn a saved or deleted row into the JSON payload of its event.

The payload is `{"state": {...}, "changes": {field: {"old": ..., "new": ...}}}`: the row's fields
after the change (by attname, so foreign keys appear as `customer_id`), and for an update the
tracked fields it changed. A created row has no `changes`: every field in `state` is new.
"""

from typing import Any

from django.db import models

from outbox.emit.registry import ChangeKind, EventSpec

_MISSING = object()


def state(spec: EventSpec, instance: models.Model) -> dict[str, Any]:
    """Return the row's fields as {attname: value}."""
    return {name: getattr(instance, name) for name in spec.attnames}


def remember(instance: models.Model, values: dict[str, Any]) -> None:
    """Record the values as the instance's saved state, for the next save to compare with."""
    instance._outbox_loaded = values  # type: ignore[attr-defined]


def changes(
    spec: EventSpec,
    instance: models.Model,
    kind: ChangeKind,
    current: dict[str, Any],
    update_fields: frozenset[str] | None,
) -> dict[str, tuple[Any, Any]]:
    """Return {attname: (old, new)} for the tracked fields an update changed (empty otherwise)."""
    if kind is not ChangeKind.UPDATED:
        return {}
    loaded: dict[str, Any] = getattr(instance, "_outbox_loaded", {})
    result: dict[str, tuple[Any, Any]] = {}
    for name, attname in spec.tracked:
        if update_fields is not None and name not in update_fields and attname not in update_fields:
            continue
        new = current[attname]
        old = loaded.get(attname, _MISSING)
        if old is _MISSING:
            # Never loaded (an instance built by hand and saved): report it, old value unknown.
            result[attname] = (None, new)
        elif old != new:
            result[attname] = (old, new)
    return result


def payload(current: dict[str, Any], changed: dict[str, tuple[Any, Any]], kind: ChangeKind) -> dict[str, Any]:
    """Return the event payload: the state after the change and, for an update, what changed."""
    if kind is not ChangeKind.UPDATED:
        return {"state": current}
    return {"state": current, "changes": {name: {"old": old, "new": new} for name, (old, new) in changed.items()}}
