"""Schema versions of event types, and the upcasters that bring an older payload to the current one.

Every event row carries the schema version of its payload (`outbox_event.schema_version`): the
writer stamps the type's current version, 1 unless the emitting model's `register(...,
versions={"order.placed": 2})` says more. When a payload's shape changes, its type's version goes
up by one, and an upcaster says how a payload of the version before becomes one of the new
version:

    @outbox.upcaster("order.placed", 1)
    def placed_v2(payload):
        payload["state"]["channel"] = "web"  # version 2 names the channel an order came through
        return payload

The row is never changed: upcasting happens when the event is read, here and nowhere else
(`upcast()`), chaining the upcasters from the stored version to the current one, before any
handler, replay, export or reader of the admin sees the payload. A consumer declared with
`upcast=False` (the outbox's sealer, which seals the facts as stored) reads payloads as stored.
The write-time tag and the seal cover the stored version and payload (`Event.stored()`), so an
instance's upcasting changes neither.

`manage.py check` fails (outbox.E007) when a type's current version has no upcaster path from a
version below it, and, where it reads the database, (outbox.E008) when the log holds a version
above the current one (events of newer code, after a rollback).
"""

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from outbox.errors import RegistrationError, UpcastError

if TYPE_CHECKING:
    from outbox.models import Event

__all__ = ["UpcastError", "current_version", "upcast", "upcast_event", "upcaster", "versions_declare"]

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]
F = TypeVar("F", bound=Upcaster)

# Event type → its current schema version, for the types declared above 1; and who declared it.
_current: dict[str, int] = {}
_declared_by: dict[str, str] = {}
# (event type, version) → the upcaster that brings a payload of that version to the next one.
_upcasters: dict[tuple[str, int], Upcaster] = {}


def _version(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RegistrationError(f"{what} must be a whole number from 1, not {value!r}.")
    return value


def versions_declare(versions: Mapping[str, int], *, by: str, emits: tuple[str, ...] | None) -> None:
    """Record the current schema version of each event type in `versions`, declared by `by` (a
    model's name) which emits `emits` (None: not declared). Raises RegistrationError for a version
    that is no whole number from 1, a type the model does not emit, or a type another model
    declares at another version."""
    if not isinstance(versions, Mapping):
        raise RegistrationError(f"{by}: versions must be a dict of event type -> schema version, not {versions!r}.")
    checked: dict[str, int] = {}
    for event_type, value in versions.items():
        version = _version(value, f"{by}: the schema version of {event_type!r}")
        if emits is not None and event_type not in emits:
            raise RegistrationError(
                f"{by}: versions names {event_type!r}, which it does not emit (it emits {', '.join(emits)})."
            )
        known = _current.get(event_type, 1)
        if event_type in _declared_by and known != version:
            raise RegistrationError(
                f"{by} declares {event_type!r} at schema version {version}, but {_declared_by[event_type]} "
                f"declares it at version {known}: one type has one current version."
            )
        checked[event_type] = version
    for event_type, version in checked.items():  # all or nothing
        if version > 1:
            _current[event_type] = version
        _declared_by[event_type] = by


def upcaster(event_type: str, from_version: int) -> Callable[[F], F]:
    """Declare the decorated function as the upcaster of `event_type` payloads from schema version
    `from_version` to the next; return it unchanged.

    It takes the payload (a copy: the stored one stays as it is) and returns it in the shape of
    version `from_version + 1`. It must be a pure function of the payload: no database, no
    clock, the same answer every time, since every reader of the event runs it again.
    """
    if not isinstance(event_type, str) or not event_type:
        raise RegistrationError(f"upcaster(): the event type must be a non-empty string, not {event_type!r}.")
    version = _version(from_version, f"upcaster({event_type!r}): from_version")

    def decorate(function: F) -> F:
        if not callable(function):
            raise RegistrationError(f"upcaster({event_type!r}, {version}) decorates a callable, not {function!r}.")
        known = _upcasters.get((event_type, version))
        if known is not None and _origin(known) != _origin(function):
            raise RegistrationError(
                f"{event_type!r} has two upcasters from schema version {version}: {_origin(known)} and "
                f"{_origin(function)}."
            )
        _upcasters[(event_type, version)] = function
        return function

    return decorate


def _origin(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def current_version(event_type: str) -> int:
    """Return the type's current schema version: the one the writer stamps, and readers upcast to."""
    return _current.get(event_type, 1)


def upcast(event_type: str, schema_version: int, payload: Any) -> Any:
    """Return the payload brought from `schema_version` to the type's current version.

    A payload at the current version is returned as it is (the same object); an older one is
    copied, and the copy goes through each upcaster in turn. Raises UpcastError, naming the type
    and the versions, when an upcaster is missing or fails, or when the payload is of a version
    newer than the current one (written by newer code).
    """
    current = current_version(event_type)
    if schema_version == current:
        return payload
    if schema_version > current:
        raise UpcastError(
            f"its {event_type} payload is of schema version {schema_version}, newer than this code's current "
            f"version {current}: newer code wrote it. Deploy the code that declares version {schema_version} "
            "(with its upcasters), then replay the event."
        )
    result = copy.deepcopy(payload)
    for version in range(schema_version, current):
        function = _upcasters.get((event_type, version))
        if function is None:
            raise UpcastError(
                f"its {event_type} payload is of schema version {schema_version}, and no upcaster brings version "
                f"{version} to {version + 1} (manage.py check says so as outbox.E007). Declare "
                f"@outbox.upcaster({event_type!r}, {version}), then replay the event."
            )
        try:
            result = function(result)
        except Exception as e:
            raise UpcastError(
                f"its {event_type} payload could not be brought from schema version {schema_version} to {current}: "
                f"the upcaster from version {version} to {version + 1} ({_origin(function)}) raised "
                f"{type(e).__name__}: {e}. Fix the upcaster, then replay the event."
            ) from e
        if not isinstance(result, dict):
            raise UpcastError(
                f"its {event_type} payload could not be brought from schema version {schema_version} to {current}: "
                f"the upcaster from version {version} to {version + 1} ({_origin(function)}) returned "
                f"{type(result).__name__}, not the payload (a dict). Fix the upcaster, then replay the event."
            )
    return result


def upcast_event(event: "Event") -> "Event":
    """Bring the event's payload and schema version to its type's current version, in place, and
    return it; the stored ones stay readable as `event.stored()`. Raises UpcastError naming the
    event, its type and the versions."""
    version = event.schema_version
    if version == current_version(event.event_type):
        return event
    stored = event.stored()
    try:
        payload = upcast(event.event_type, version, event.payload)
    except UpcastError as e:
        what = f"{event.event_type} {event.aggregate_type}:{event.aggregate_id}"
        raise UpcastError(f"Event {event.id} ({what}): {e}") from e
    event._stored = stored
    event.payload = payload
    event.schema_version = current_version(event.event_type)
    return event


def declared_versions() -> dict[str, int]:
    """Return every type declared above version 1, with its current version."""
    return dict(_current)


def upcasters() -> dict[tuple[str, int], Upcaster]:
    """Return every upcaster, by (event type, the version it brings up)."""
    return dict(_upcasters)


def forget(event_type: str) -> None:
    """Remove a type's declared version and upcasters (for tests that declare scratch versions)."""
    _current.pop(event_type, None)
    _declared_by.pop(event_type, None)
    for key in [key for key in _upcasters if key[0] == event_type]:
        del _upcasters[key]
