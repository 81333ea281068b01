"""Relay heartbeats: each relay's row in outbox_relay_heartbeat, written by its loop.

A beat is one upsert in autocommit, never inside another transaction (and so never inside one
open across a broker call). `beat_at` comes from the database clock on PostgreSQL, so that the
age that status reports compute (also on the database clock) does not depend on the relays'
machines keeping time.
"""

import socket
from datetime import datetime, timedelta

from django.db.models.functions import Now

from outbox.backends import ops
from outbox.models import RelayHeartbeat


def heartbeat_beat(*, name: str, pid: int, started_at: datetime, events_relayed: int) -> None:
    """Record that the relay `name` is alive now, with how many events it has relayed."""
    ops().heartbeat_beat(
        name=name, host=socket.gethostname(), pid=pid, started_at=started_at, events_relayed=events_relayed
    )


def heartbeat_forget(*, name: str) -> None:
    """Remove the relay's row: it stopped cleanly, so it is neither alive nor stale."""
    RelayHeartbeat.objects.filter(name=name).delete()


def heartbeats_forget_stale(*, older_than: float) -> list[str]:
    """Remove the rows of relays whose last beat is more than `older_than` seconds old; return their names.

    For relays that were killed (or whose machine died): their rows stay until removed.
    """
    stale = RelayHeartbeat.objects.filter(beat_at__lt=Now() - timedelta(seconds=older_than))
    names = sorted(stale.values_list("name", flat=True))
    RelayHeartbeat.objects.filter(name__in=names).delete()
    return names
