"""The sealer: the outbox's own consumer, which seals every event (outbox/eventlog/sealing.py).

It takes every event type, so the chain that verify and the purge depend on is written whatever
other consumers a project declares. A consumer that wants an event's seal (the audit log puts it
in each line) calls `outbox.seals()`, which seals what is not sealed yet: seals are a function of
the log, so whichever comes first writes them and the other reads the same values.

Sealing need not follow each commit at once: the relay holds the sealer's messages for up to
COALESCE_SECONDS, so that at a steady trickle of events it gets a message a half second rather
than one per event, and costs the workers little beside the consumers whose latency counts. Events
that a consumer sealed first (the audit log, through `outbox.seals()`) are found in one query and
neither loaded nor checked again.
"""

from django.db.models import Exists, OuterRef

from outbox.consume.declare import ALL, consumer
from outbox.eventlog.sealing import seal_many
from outbox.models import Event, Seal

CONSUMER = "outbox_seal"
COALESCE_SECONDS = 0.5


def sealed(event_ids: list[int]) -> list[int]:
    """The events among `event_ids` sealed already (by outbox.seals(), or an earlier message), and
    in the log still under the id and UUID they were sealed with; any other id takes the consumers'
    usual path (an id that names no event is refused, a row that is no writer's is forged)."""
    in_log = Event.objects.filter(id=OuterRef("event_id"), event_id=OuterRef("event_uuid"))
    return list(
        Seal.objects.filter(event_id__in=event_ids, purged_at__isnull=True)
        .filter(Exists(in_log))
        .values_list("event_id", flat=True)
    )


@consumer(
    CONSUMER,
    events=ALL,
    queue=CONSUMER,
    priority=30,
    batch=True,
    together=True,
    coalesce=COALESCE_SECONDS,
    settled=sealed,
    upcast=False,  # the seal covers the payload as stored
)
def seal_events(events: list[Event]) -> None:
    """Seal the events, and any earlier unsealed events of their aggregates."""
    seal_many(events, values=False)
