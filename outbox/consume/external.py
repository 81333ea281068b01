"""External consumers: an effect outside the database (an e-mail, a webhook), made once per key.

No transaction can hold an outside call, so the tracking row alone cannot make it happen once.
For each event the framework:

1. records the intent under the event's dedupe key (`outbox.models.Dedupe`: `sending`, with a
   lease), in one statement of its own;
2. calls the handler with the key, no transaction open;
3. marks the record `sent` and the delivery done, in one transaction, with whatever the handler
   asked to record (a handler may return a callable: it runs in that transaction, so that the
   consumer's own record of the effect commits with the mark).

A duplicate finds the record `sent` and calls nothing; a second worker finds a live lease and
retries later; a worker that dies between the outside system's accept and step 3 leaves the
record `sending`, and once the lease runs out the retry calls again. That is the one duplicate
window; `external_run()` returns its length.

On PostgreSQL the lease is taken and tested on the database's clock, so that workers on machines
whose clocks disagree still agree on whose lease has run out. (The embedded default runs its one
worker on the machine of its SQLite file: its clock is the only one.)

`sends` counts the calls that may have reached the outside system: a call the declaration's
`not_sent(exc)` says certainly did not (a refusal, no connection; the error or one it was raised
from) is taken back, so that `sends`
above 1 means "may have happened twice".
"""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from outbox.backends import ops
from outbox.consume.declare import Consumer, declaration
from outbox.consume.deliveries import delivery_begin
from outbox.models import Dedupe, Event

logger = logging.getLogger("outbox.consumer")


class DedupeBusy(Exception):
    """Another worker holds the key's lease: it is making the call right now."""


@dataclass(frozen=True)
class DedupeKey:
    """What an external handler gets: the key, and a random token unique to the record, to send on."""

    key: str
    token: uuid.UUID
    # Calls that may have reached the outside system, this one included: above 1, it may see a repeat.
    sends: int

    def __str__(self) -> str:
        return self.key


def lease_seconds(declared: Consumer | None = None) -> float:
    """How long a handler may take over one call before another worker may call again: the
    declaration's `lease`, or OUTBOX_EXTERNAL_LEASE_SECONDS (default 60)."""
    lease = declared.lease if declared is not None else None
    if lease is None:
        return float(getattr(settings, "OUTBOX_EXTERNAL_LEASE_SECONDS", 60.0))
    return float(lease() if callable(lease) else lease)


def dedupe_claim(*, consumer: str, key: str, event_id: int, lease: float | None = None) -> DedupeKey | None:
    """Record the intent to call, in one statement; return the key, or None when the call was made.

    Raises DedupeBusy when another worker holds the lease. `lease`: seconds, by default the consumer's.
    """
    seconds = lease if lease is not None else lease_seconds(declaration(consumer))
    token_field = Dedupe._meta.get_field("token")
    # As the backend stores a UUIDField (a uuid on PostgreSQL, 32 hex digits on SQLite), and back.
    token = token_field.get_db_prep_value(uuid.uuid4(), connection)
    row = ops().dedupe_claim(consumer=consumer, key=key, event_id=event_id, token=token, lease=seconds)
    if row is not None:
        return DedupeKey(key=key, token=token_field.to_python(row[0]), sends=int(row[1]))
    held = Dedupe.objects.filter(consumer=consumer, key=key).values_list("status", "lease_until").first()
    if held is not None and held[0] == Dedupe.Status.SENT:
        return None
    until = f"lease until {held[1]:%H:%M:%S}" if held is not None and held[1] is not None else "its record just changed"
    raise DedupeBusy(f"{consumer}: another worker is making the call for {key!r} ({until}); retrying later.")


def _release(consumer: str, key: str, *, uncount: bool) -> None:
    """Give the lease back, so that the retry need not wait for it; `uncount`: the call did not happen."""
    Dedupe.objects.filter(consumer=consumer, key=key, status=Dedupe.Status.SENDING).update(
        lease_until=None, **({"sends": F("sends") - 1} if uncount else {})
    )


def _not_sent(test: Callable[[BaseException], bool] | None, exc: BaseException) -> bool:
    """Whether the error, or one it was raised from (a PermanentError wrapping a refusal), says
    that the call certainly did not reach the outside system."""
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle is not followed
        if seen is None or test is None:
            return False
        if test(seen):
            return True
        seen = seen.__cause__
    return False


def external_run(declared: Consumer, event: Event, session: object = None) -> float | None:
    """Make the event's outside effect unless it was made; return the duplicate window in seconds, if made.

    `session` is what the declaration's `session` opened for the message, passed to the handler.
    """
    key = declared.dedupe_key(event) if declared.dedupe_key else f"event:{event.event_id}"
    claimed = dedupe_claim(consumer=declared.name, key=key, event_id=event.id, lease=lease_seconds(declared))
    if claimed is None:
        with transaction.atomic():
            delivery_begin(event_id=event.id, consumer=declared.name)
        return None
    try:
        if declared.session is not None:
            record = declared.handler(event, claimed, session)
        else:
            record = declared.handler(event, claimed)
    except Exception as exc:
        _release(declared.name, key, uncount=_not_sent(declared.not_sent, exc))
        raise
    accepted = time.monotonic()
    with transaction.atomic():
        ops().dedupe_sent(consumer=declared.name, key=key)
        if callable(record):
            record()
        delivery_begin(event_id=event.id, consumer=declared.name)
    window = time.monotonic() - accepted
    logger.info(
        "%s: made the call for %r (event %s); recorded %.2f ms after it", declared.name, key, event.id, window * 1000
    )
    return window
