"""Signal receivers: turn each save or delete of an emitting model into an outbox event."""

from collections.abc import Iterable
from typing import Any

from django.db import connections, models
from django.db.models.signals import post_delete, post_save

from outbox.emit import registry
from outbox.emit.context import emission_enabled
from outbox.emit.registry import Change, ChangeKind, EventSpec
from outbox.emit.serialization import changes, payload, remember, state
from outbox.emit.writer import NewEvent, require_atomic, write
from outbox.errors import BulkWriteError


def _event(
    spec: EventSpec, instance: models.Model, kind: ChangeKind, update_fields: Any
) -> tuple[NewEvent | None, dict[str, Any]]:
    """Return the event for this change (None if it is not worth one) and the row's state."""
    current = state(spec, instance)
    fields = frozenset(update_fields) if update_fields is not None else None
    changed = changes(spec, instance, kind, current, fields)
    event_type = spec.event_type(Change(kind=kind, instance=instance, changes=changed))
    if event_type is None:
        return None, current
    event = NewEvent(
        event_type=event_type,
        aggregate_type=spec.aggregate_type,
        aggregate_id=str(spec.aggregate_id(instance)),
        payload=payload(current, changed, kind),
    )
    return event, current


def _resolve_expressions(spec: EventSpec, instance: models.Model, using: str) -> None:
    """Read back the fields that the save wrote as SQL expressions (`F("price") + 1`).

    Such a field still holds the expression after save(), which no payload can carry; its value
    is only known to the database. The read runs in the save's transaction, so it sees this
    save's result and nobody else's later change.
    """
    pending = [name for name in spec.attnames if hasattr(getattr(instance, name, None), "resolve_expression")]
    if pending:
        instance.refresh_from_db(using=using, fields=pending)


def on_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool,
    using: str,
    update_fields: Any,
    **kwargs: Any,
) -> None:
    """Write the event of a saved row in the save's transaction."""
    if raw or not emission_enabled():
        return
    connection = connections[using]
    require_atomic(connection)
    kind = ChangeKind.CREATED if created else ChangeKind.UPDATED
    spec = registry.spec_for(sender)
    _resolve_expressions(spec, instance, using)
    event, current = _event(spec, instance, kind, update_fields)
    if event is not None:
        write(connection, [event])
    remember(instance, current)


def on_delete(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    """Write the event of a deleted row in the delete's transaction."""
    if not emission_enabled():
        return
    connection = connections[using]
    require_atomic(connection)
    event, _ = _event(registry.spec_for(sender), instance, ChangeKind.DELETED, None)
    if event is not None:
        write(connection, [event])


def emit_created(instances: Iterable[models.Model], *, using: str) -> None:
    """Write one `created` event per instance, in one statement (the bulk_create path)."""
    if not emission_enabled():
        return
    instances = list(instances)
    if not instances:
        return
    connection = connections[using]
    require_atomic(connection)
    spec = registry.spec_for(type(instances[0]))
    events = []
    for instance in instances:
        if instance.pk is None:
            raise BulkWriteError(
                f"bulk_create() on this database did not return primary keys for "
                f"{type(instance).__name__}, so their events cannot name them. Save each object."
            )
        event, current = _event(spec, instance, ChangeKind.CREATED, None)
        if event is not None:
            events.append(event)
        remember(instance, current)
    write(connection, events)


def connect(model: type[models.Model]) -> None:
    """Connect the receivers to a registered model."""
    label = model._meta.label
    post_save.connect(on_save, sender=model, dispatch_uid=f"outbox.save.{label}")
    post_delete.connect(on_delete, sender=model, dispatch_uid=f"outbox.delete.{label}")
