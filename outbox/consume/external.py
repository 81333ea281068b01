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
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from outbox.backends import ops
from outbox.consume.declare import Consumer, declaration
from outbox.consume.deliveries import delivery_begin
from outbox.consume.run import PermanentError
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
    # This claim's lease as the database stored it: a release touches this claim's lease only.
    _lease: Any = field(default=None, repr=False, compare=False)

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
        return DedupeKey(key=key, token=token_field.to_python(row[0]), sends=int(row[1]), _lease=row[2])
    held = Dedupe.objects.filter(consumer=consumer, key=key).values_list("status", "lease_until").first()
    if held is not None and held[0] == Dedupe.Status.SENT:
        return None
    until = f"lease until {held[1]:%H:%M:%S}" if held is not None and held[1] is not None else "its record just changed"
    raise DedupeBusy(f"{consumer}: another worker is making the call for {key!r} ({until}); retrying later.")


_RELEASE = (
    "UPDATE outbox_dedupe SET lease_until = NULL, sends = sends - %s "
    "WHERE consumer = %s AND key = %s AND status = 'sending' AND lease_until = %s"
)


def _release(consumer: str, claimed: DedupeKey, *, uncount: bool) -> None:
    """Give the lease back, so that the retry need not wait for it; `uncount`: the call did not happen.

    This claim's lease only: a call that outlived its lease may find another worker's claim on the
    key, calling right now, whose lease and count are not this one's to undo."""
    with connection.cursor() as cursor:
        cursor.execute(_RELEASE, [1 if uncount else 0, consumer, claimed.key, claimed._lease])


def _mark_made(declared: Consumer, event: Event, key: str, record: object) -> None:
    """Mark the call made and the delivery done, with the consumer's record of the effect, in one transaction."""
    with transaction.atomic():
        if callable(record):
            record()
        ops().dedupe_made(consumer=declared.name, key=key, event_id=event.id)


def _mark_after_failure(declared: Consumer, event: Event, key: str, record: object, exc: Exception) -> None:
    """The outside system took the call, and recording it failed (a connection dropped during the
    call, a deadlock, the consumer's own record): try once more on a fresh connection; failing
    that, mark the call made on its own, so that no retry makes it again, and fail the delivery
    saying so (the consumer's record of it is lost). Only when the database takes nothing at all
    does the call stay `sending`, as if the worker had died: the duplicate window."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()
    try:
        _mark_made(declared, event, key, record)
        return
    except Exception as again:
        try:
            with transaction.atomic():
                ops().dedupe_sent(consumer=declared.name, key=key)
        except Exception:
            raise again from exc
        raise PermanentError(
            f"{declared.name}: the call for {key!r} was made, but recording it failed ({type(again).__name__}: "
            f"{again}). It is marked made and will not be made again; the consumer's own record of it is missing. "
            "Fix the cause; a replay then marks the delivery done."
        ) from again


def _not_sent(test: Callable[[BaseException], bool] | None, exc: BaseException) -> bool:
    """Whether the error, or one it was raised from (a PermanentError wrapping a refusal), says
    that the call certainly did not reach the outside system."""
    if test is None:
        return False
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; a cycle is not followed
        if seen is None:
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
        _release(declared.name, claimed, uncount=_not_sent(declared.not_sent, exc))
        raise
    accepted = time.monotonic()
    try:
        _mark_made(declared, event, key, record)
    except Exception as exc:
        _mark_after_failure(declared, event, key, record, exc)
    window = time.monotonic() - accepted
    logger.info(
        "%s: made the call for %r (event %s); recorded %.2f ms after it", declared.name, key, event.id, window * 1000
    )
    return window
