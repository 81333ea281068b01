"""The relay's bookkeeping in the database: claim a batch, mark it published, or release it.

Each function is one short transaction of its own; none is ever open while the relay talks to the
broker. PostgreSQL gets single statements (`FOR UPDATE SKIP LOCKED`, so any number of relays can
claim side by side); other databases (the embedded SQLite, one relay) get the ORM equivalent. The
statements are the database backend's (outbox/backends/).
"""

from outbox.backends import Claimed, ops
from outbox.relay import routing


def claim(*, relay: str, limit: int, lease: float) -> Claimed:
    """Claim up to `limit` unclaimed (or abandoned) events for `lease` seconds; return them."""
    return ops().claim(relay=relay, limit=limit, lease=lease)


def mark_published(*, relay: str, batch: Claimed) -> None:
    """Record the events' deliveries as published and drop them from the backlog.

    Only the events `relay` still holds: a claim that was lost (its lease ran out and another relay
    took it) is that relay's to record. Each routed consumer gets a published delivery; one that
    finished first keeps its done row.
    """
    routes = routing.route_pairs({event_type for _, event_type in batch})
    ops().mark_published(relay=relay, event_ids=[event_id for event_id, _ in batch], routes=routes)


def release(*, relay: str, event_ids: list[int], published_any: bool) -> None:
    """Give the claimed events back, unclaimed.

    If none of their messages reached the broker, the claim is not counted either: an outage
    burns no attempt.
    """
    ops().release(relay=relay, event_ids=event_ids, undo=0 if published_any else 1)
