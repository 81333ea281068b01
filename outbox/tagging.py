"""Write-time tags: proof that an event was written by the outbox's writer, not inserted by SQL.

The writer tags each event with HMAC-SHA256(key, its facts as the writer knows them: event id,
type, aggregate, payload, actor, correlation id, source). Whoever can INSERT into the event table
but does not hold the key (OUTBOX_SEAL_KEY) cannot make a tag that verifies, and the event id is
unique, so a tag cannot be reused on a copy. The consumers and the sealer check the tag before
they act on an event: a forged row is refused (its deliveries dead, with the reason), never
applied and never sealed, and `outbox_verify` names it.

The payload is tagged in a canonical form that survives PostgreSQL's jsonb: keys sorted, and
numbers in the one form that the written and the read-back value share.
"""

import hashlib
import hmac
from typing import Any

import orjson

from outbox.keys import seal_key

TAG_LENGTH = 64


# jsonb writes an integral number without its exponent or fraction (1.0 → 1.0, 1e20 → 100…0), and
# reads back as an int what JSON cannot tell from one: both sides meet on one form per value.
_INT_RANGE = 2**63


def _needs_change(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return value.is_integer() and abs(value) < _INT_RANGE
    if kind is int:
        return abs(value) >= _INT_RANGE
    return kind is dict or kind is list or kind is tuple


def _canonical(value: Any) -> Any:
    """Return the value with each number in its canonical form (the same object when none changes:
    every save tags its events, and most payloads hold no float)."""
    kind = type(value)
    if kind is dict:
        changed = {key: _canonical(item) for key, item in value.items() if _needs_change(item)}
        return {**value, **changed} if changed else value
    if kind is list or kind is tuple:
        return [_canonical(item) for item in value]
    if kind is float:
        return int(value) if value.is_integer() and abs(value) < _INT_RANGE else value
    if kind is int and abs(value) >= _INT_RANGE:
        return float(value)
    return value


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
    default: Any = None,
    key: bytes | None = None,
) -> str:
    """Return the tag of an event's facts (`default` encodes what JSON has no type for)."""
    facts = orjson.dumps(
        [event_id, event_type, aggregate_type, aggregate_id, _canonical(payload), actor, correlation_id, source],
        default=default,
        option=orjson.OPT_SORT_KEYS,
    )
    return hmac.new(key or seal_key(), facts, hashlib.sha256).hexdigest()


def event_tag(event: Any, key: bytes | None = None) -> str:
    """Return the tag that a stored event (an outbox.models.Event) should carry."""
    return tag(
        event_id=event.event_id.hex,
        event_type=event.event_type,
        aggregate_type=event.aggregate_type,
        aggregate_id=event.aggregate_id,
        payload=event.payload,
        actor=event.actor,
        correlation_id=event.correlation_id,
        source=event.source,
        key=key,
    )


def tag_valid(event: Any, key: bytes | None = None) -> bool:
    """Whether the stored event carries the tag its facts give: the writer wrote it."""
    stored = event.tag or ""
    return len(stored) == TAG_LENGTH and hmac.compare_digest(stored, event_tag(event, key))


def forged_reason(event: Any) -> str:
    """The error recorded on a forged event's deliveries: what happened and what to do."""
    return (
        f"Event {event.id} ({event.event_type} {event.aggregate_type}:{event.aggregate_id}) was not written by "
        "the outbox's writer: its tag does not verify (a row inserted by SQL, or written under another "
        "OUTBOX_SEAL_KEY). It was refused: nothing was applied and it is not sealed. Investigate who inserted it "
        "(outbox_verify names it); do not replay it."
    )
