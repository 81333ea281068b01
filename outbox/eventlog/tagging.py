"""Write-time tags: proof that an event was written by the outbox's writer, not inserted by SQL.

The writer tags each event with HMAC-SHA256(key, its facts as the writer knows them: event id,
type, aggregate, payload, actor, correlation id, source, and the payload's schema version when it
is above 1, so that the tags of the events written before versions existed still verify).
Whoever can INSERT into the event table but does not hold the key (OUTBOX_SEAL_KEY) cannot make a
tag that verifies. The event id (its UUID) is unique in the log, and each seal keeps its event's
UUID after the event is purged, so a copy of a real row, even of one long purged, is told apart
and refused as well. The consumers and
the sealer check the tag before they act on an event: a forged row is refused (its deliveries
dead, with the reason), never applied and never sealed, and `outbox_verify` names it.

The payload is tagged in a canonical form that survives PostgreSQL's jsonb: keys sorted, and
numbers in the one form that the written and the read-back value share.
"""

import functools
import hashlib
import hmac
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

from outbox.eventlog.keys import seal_key

TAG_LENGTH = 64


# jsonb renders a number from its decimal digits: an integral float comes back as an integer with
# the float's shortest digits and zeros after (2.0**60 as 1152921504606847000, 1e20 as 1 and 20
# zeros). Both sides meet on that integer; one beyond orjson's 64 bits as its digits in a list
# marked with NUL, which no string in jsonb can hold, so it collides with no real value.
_INT_RANGE = 2**63
_BIG = "\x00int"
_LEAVES = (str, bool, type(None), datetime, date, time, Decimal, UUID)


def _number(value: float) -> Any:
    if isinstance(value, float):
        if not value.is_integer():
            return value  # a fraction (or NaN, infinity: null) reads back as the same float
        value = int(Decimal(repr(value)))
    number = int(value)
    return number if -_INT_RANGE < number < _INT_RANGE else [_BIG, str(number)]


def _plain(item: Any) -> bool:
    """Whether the value is a leaf that needs no change: tested inline, as every save tags."""
    kind = type(item)
    if kind is str or item is None or kind is bool or kind is datetime or kind is Decimal:
        return True
    return kind is int and -_INT_RANGE < item < _INT_RANGE


def _canonical(value: Any, default: Any = None) -> Any:
    """Return the value as plain JSON with each number in its canonical form: the same object when
    nothing changes (every save tags its events, and most payloads hold no float)."""
    kind = type(value)
    if kind is dict:
        changed = None
        for key, item in value.items():
            if _plain(item):
                continue
            new = _canonical(item, default)
            if new is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
        return value if changed is None else changed
    if _plain(value):
        return value
    if kind is int or kind is float:
        return _number(value)
    if isinstance(value, dict):
        return _canonical(dict(value), default)
    if isinstance(value, list | tuple):
        return [_canonical(item, default) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(value)
    if isinstance(value, _LEAVES):
        return value  # encoded as the same string on write and read
    # Anything else the encoder takes (a dataclass, an enum…): as the JSON it becomes, walked.
    return _canonical(orjson.loads(orjson.dumps(value, default=default)))


def tag(
    *,
    event_id: str,  # the UUID's 32 hex digits
    event_type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: Any,
    actor: str,
    correlation_id: str,
    source: str,
    schema_version: int = 1,
    default: Any = None,
    key: bytes | None = None,
) -> str:
    """Return the tag of an event's facts (`default` encodes what JSON has no type for)."""
    listed = [
        event_id,
        event_type,
        aggregate_type,
        aggregate_id,
        _canonical(payload, default),
        actor,
        correlation_id,
        source,
    ]
    if schema_version != 1:  # a ninth fact, so that version 1's tags are those written before versions
        listed.append(schema_version)
    facts = orjson.dumps(
        listed,
        default=default,
        option=orjson.OPT_SORT_KEYS,
    )
    mac = _keyed(key or seal_key()).copy()
    mac.update(facts)
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    # The key's inner and outer pads hashed once: each tag then copies them (every save tags).
    return hmac.new(key, digestmod=hashlib.sha256)


def stored(event: Any) -> tuple[int, Any]:
    """The event's schema version and payload as stored, whatever upcasting did to the instance
    (Event.stored()); a migration's historical model has neither the method nor, before migration
    0015, the version."""
    method = getattr(event, "stored", None)
    return method() if callable(method) else (getattr(event, "schema_version", 1), event.payload)


def event_tag(event: Any, key: bytes | None = None) -> str:
    """Return the tag that a stored event (an outbox.models.Event) should carry."""
    schema_version, payload = stored(event)
    return tag(
        event_id=event.event_id.hex,
        event_type=event.event_type,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        payload=payload,
        actor=event.actor,
        correlation_id=event.correlation_id,
        source=event.source,
        schema_version=schema_version,
        key=key,
    )


def tag_valid(event: Any, key: bytes | None = None) -> bool:
    """Whether the stored event carries the tag its facts give: the writer wrote it, and it is no
    copy of an event already sealed under another id (read with `Event.objects.checked()`)."""
    if getattr(event, "copy_of", None):
        return False
    stored = event.tag or ""
    return len(stored) == TAG_LENGTH and hmac.compare_digest(stored, event_tag(event, key))


def forged_reason(event: Any) -> str:
    """The error recorded on a forged event's deliveries: what happened and what to do."""
    what = f"Event {event.id} ({event.event_type} {event.aggregate_type}:{event.aggregate_id})"
    copy_of = getattr(event, "copy_of", None)
    if copy_of:
        why = (
            f"is a copy of event {copy_of}, which was sealed under its UUID (and may have been purged since): "
            "a row inserted by SQL"
        )
    else:
        why = (
            "was not written by the outbox's writer: its tag does not verify (a row inserted by SQL, or written "
            "under another OUTBOX_SEAL_KEY)"
        )
    return (
        f"{what} {why}. It was refused: nothing was applied and it is not sealed. Investigate who inserted it "
        "(outbox_verify names it); do not replay it."
    )
