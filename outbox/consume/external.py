"""External consumers: an effect outside the database (an e-mail, a webhook), made once per key.

No transaction can hold an outside call, so the tracking row alone cannot make it happen once.
For each event the framework:

1. records the intent under the event's dedupe key (`outbox.models.Dedupe`: `sending`, with a
   lease), in a short transaction of its own;
2. calls the handler with the key, no transaction open;
3. marks the record `sent` and the delivery done, in one transaction.

A duplicate finds the record `sent` and calls nothing; a second worker finds a live lease and
retries later; a worker that dies between the outside system's accept and step 3 leaves the
record `sending`, and once the lease runs out the retry calls again. That is the one duplicate
window; `external_run()` returns its length.
"""

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from outbox.consume.declare import Consumer
from outbox.consume.deliveries import delivery_begin
from outbox.models import Dedupe, Event


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


def lease_seconds() -> float:
    """How long a handler may take over one call before another worker may call again."""
    return float(getattr(settings, "OUTBOX_EXTERNAL_LEASE_SECONDS", 60.0))


def dedupe_claim(*, consumer: str, key: str, event_id: int) -> DedupeKey | None:
    """Record the intent to call; return the key, or None when the call was made already.

    Raises DedupeBusy when another worker holds the lease.
    """
    now = timezone.now()
    until = now + timedelta(seconds=lease_seconds())
    with transaction.atomic():
        row, created = Dedupe.objects.select_for_update().get_or_create(
            consumer=consumer,
            key=key,
            defaults={"event_id": event_id, "status": Dedupe.Status.SENDING, "sends": 1, "lease_until": until},
        )
        if not created:
            if row.status == Dedupe.Status.SENT:
                return None
            if row.lease_until is not None and row.lease_until > now:
                raise DedupeBusy(
                    f"{consumer}: another worker is making the call for {key!r} (lease until "
                    f"{row.lease_until:%H:%M:%S}); retrying later."
                )
            row.sends += 1
            row.lease_until = until
            row.event_id = event_id
            row.save(update_fields=["sends", "lease_until", "event_id"])
    return DedupeKey(key=key, token=row.token, sends=row.sends)


def external_run(declared: Consumer, event: Event) -> float | None:
    """Make the event's outside effect unless it was made; return the duplicate window in seconds, if made."""
    key = declared.dedupe_key(event) if declared.dedupe_key else f"event:{event.event_id}"
    claimed = dedupe_claim(consumer=declared.name, key=key, event_id=event.id)
    if claimed is None:
        with transaction.atomic():
            delivery_begin(event_id=event.id, consumer=declared.name)
        return None
    try:
        declared.handler(event, claimed)
    except Exception:
        # Give the lease back, so that the retry need not wait for it.
        Dedupe.objects.filter(consumer=declared.name, key=key, status=Dedupe.Status.SENDING).update(lease_until=None)
        raise
    accepted = time.monotonic()
    with transaction.atomic():
        Dedupe.objects.filter(consumer=declared.name, key=key).update(
            status=Dedupe.Status.SENT, sent_at=timezone.now(), lease_until=None
        )
        delivery_begin(event_id=event.id, consumer=declared.name)
    return time.monotonic() - accepted
