"""The portable operations: the ORM path, for the embedded SQLite and any database without its own.

Each step that the outbox's concern modules leave to the database is a method here
(outbox/backends/__init__.py lists them); a backend of its own subclasses `Operations` and
overrides what it does better. The callers hold the logic and say why; these say how, on one
relay and one machine, which is what the embedded default runs.
"""

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from outbox.backends import Claimed, InsertListener, Overdue, Roles, Routes
from outbox.emit.writer import row_tag
from outbox.models import Delivery, Event, Pending, RelayHeartbeat, Seal

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    from outbox.emit.writer import Row

_VERSION = """
INSERT INTO outbox_aggregate (aggregatetype, aggregateid, version) VALUES (%s, %s, %s)
ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = version + excluded.version
RETURNING version
"""

_PENDING = """
INSERT INTO outbox_pending (event_id, type, claimed_by, claims)
SELECT id, type, '', 0 FROM outbox_event WHERE event_id IN ({})
"""

_EVENT = """
INSERT INTO outbox_event
    (event_id, type, aggregatetype, aggregateid, aggregate_version, payload, schema_version, actor, correlation_id,
     source, tag)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


# An external consumer's dedupe record (outbox/consume/external.py): taken unless sent or under a
# live lease, in one statement. Here on this machine's clock, which the embedded default's one
# worker shares with its SQLite file; PostgreSQL's is the database's.
DEDUPE_CLAIM = """
INSERT INTO outbox_dedupe (consumer, key, event_id, status, sends, token, lease_until, created_at)
VALUES (%s, %s, %s, 'sending', 1, %s, {lease_until}, CURRENT_TIMESTAMP)
ON CONFLICT (consumer, key) DO UPDATE
    SET sends = outbox_dedupe.sends + 1, lease_until = EXCLUDED.lease_until, event_id = EXCLUDED.event_id
    WHERE outbox_dedupe.status = 'sending'
      AND (outbox_dedupe.lease_until IS NULL OR outbox_dedupe.lease_until < {now})
RETURNING token, sends, lease_until
"""
# sent_at on the same clock as the lease.
DEDUPE_SENT = (
    "UPDATE outbox_dedupe SET status = 'sent', sent_at = {now}, lease_until = NULL WHERE consumer = %s AND key = %s"
)
_DEDUPE_CLAIM = DEDUPE_CLAIM.format(lease_until="%s", now="%s")
_DEDUPE_SENT = DEDUPE_SENT.format(now="%s")


class Operations:
    """The outbox's database-specific steps, done with the ORM and portable SQL."""

    # The rows events_insert() takes carry the whole event as JSON in `doc` (True), or only its
    # payload (False).
    whole_event_rows = False
    # Inserts are notified (insert_listener()), so that an idle relay need not poll.
    notifies_inserts = False
    # The errors an insert listener raises when its session fails.
    listener_errors: tuple[type[BaseException], ...] = ()
    # The database's roles, for least privilege; None: it has none.
    roles: Roles | None = None

    # --- emit ---------------------------------------------------------------------------------

    def events_insert(self, connection: "BaseDatabaseWrapper", rows: Sequence["Row"]) -> None:
        """Insert the rows, numbering each aggregate's versions, and queue them for the relay."""
        counts = Counter(r.names[1:] for r in rows)
        next_version: dict[tuple[str, str], int] = {}
        with connection.cursor() as cursor:
            for key, n in counts.items():
                cursor.execute(_VERSION, (*key, n))
                next_version[key] = cursor.fetchone()[0] - n + 1
            values = []
            for r in rows:
                key = r.names[1:]
                values.append(
                    (
                        r.event_id,
                        r.names[0],
                        *key,
                        next_version[key],
                        r.doc.decode(),
                        r.schema_version,
                        r.actor,
                        r.correlation_id,
                        r.source,
                        row_tag(r),
                    )
                )
                next_version[key] += 1
            cursor.executemany(_EVENT, values)
            ids = [v[0] for v in values]
            cursor.execute(_PENDING.format(", ".join(["%s"] * len(ids))), ids)

    # --- relay --------------------------------------------------------------------------------

    def claim(self, *, relay: str, limit: int, lease: float) -> Claimed:
        """Claim up to `limit` unclaimed (or abandoned) events for `lease` seconds; return them."""
        now = timezone.now()
        with transaction.atomic():
            ids = list(
                Pending.objects.filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
                .order_by("event_id")
                .values_list("event_id", flat=True)[:limit]
            )
            Pending.objects.filter(event_id__in=ids).update(
                claimed_by=relay, claimed_until=now + timedelta(seconds=lease), claims=F("claims") + 1
            )
            return list(
                Pending.objects.filter(event_id__in=ids).order_by("event_id").values_list("event_id", "event_type")
            )

    def mark_published(self, *, relay: str, event_ids: list[int], routes: Routes) -> None:
        """Drop the events `relay` still holds from the backlog and record their deliveries published."""
        consumers_of: dict[str, list[str]] = {}
        for event_type, consumer in zip(*routes, strict=True):
            consumers_of.setdefault(event_type, []).append(consumer)
        now = timezone.now()
        with transaction.atomic():
            claimed = list(
                Pending.objects.filter(event_id__in=event_ids, claimed_by=relay).values_list(
                    "event_id", "event_type", "claims"
                )
            )
            claims = {event_id: count for event_id, _, count in claimed}
            Pending.objects.filter(event_id__in=list(claims)).delete()
            for event_id, event_type, _ in claimed:
                for consumer in consumers_of.get(event_type, ()):
                    delivery, created = Delivery.objects.get_or_create(
                        event_id=event_id,
                        consumer=consumer,
                        defaults={
                            "status": Delivery.Status.PUBLISHED,
                            "publications": claims[event_id],
                            "published_at": now,
                        },
                    )
                    if not created and delivery.status in (Delivery.Status.PUBLISHED, Delivery.Status.WAITING):
                        Delivery.objects.filter(pk=delivery.pk).update(
                            publications=F("publications") + claims[event_id], published_at=now, updated_at=now
                        )

    def release(self, *, relay: str, event_ids: list[int], undo: int) -> None:
        """Unclaim the events `relay` holds, taking `undo` (0 or 1) off their claim counts."""
        Pending.objects.filter(event_id__in=event_ids, claimed_by=relay).update(
            claimed_by="", claimed_until=None, claims=F("claims") - undo
        )

    def take_overdue(self, *, deadline: float, limit: int) -> Overdue:
        """Take up to `limit` overdue deliveries: restart their deadline, count a publication."""
        now = timezone.now()
        due = now - timedelta(seconds=deadline)
        with transaction.atomic():
            rows = list(
                Delivery.objects.filter(
                    Q(status=Delivery.Status.PUBLISHED, published_at__lt=due)
                    | Q(status=Delivery.Status.FAILED, updated_at__lt=due)
                )
                .order_by("published_at")
                .values_list("id", "event_id", "consumer")[:limit]
            )
            Delivery.objects.filter(id__in=[r[0] for r in rows]).update(
                published_at=now, publications=F("publications") + 1, updated_at=now
            )
        return rows

    def give_back(self, *, deadline: float, ids: list[int]) -> None:
        """Make the deliveries due again (past `deadline`) and take their publication back."""
        due = timezone.now() - timedelta(seconds=deadline + 1)
        Delivery.objects.filter(id__in=ids, status__in=[Delivery.Status.PUBLISHED, Delivery.Status.FAILED]).update(
            published_at=due, updated_at=due, publications=F("publications") - 1
        )

    def heartbeat_beat(self, *, name: str, host: str, pid: int, started_at: datetime, events_relayed: int) -> None:
        """Upsert the relay's heartbeat row, beating now (this machine's clock)."""
        RelayHeartbeat.objects.update_or_create(
            name=name,
            defaults={
                "host": host,
                "pid": pid,
                "started_at": started_at,
                "beat_at": timezone.now(),
                "events_relayed": events_relayed,
            },
        )

    def relay_session(self, *, name: str) -> None:
        """Prepare the relay `name`'s database session (nothing to do here)."""

    def insert_listener(self) -> InsertListener:
        """Open a session that listens for inserts; only where `notifies_inserts`."""
        raise NotImplementedError("This database does not notify inserts: the relay polls.")

    # --- event log ----------------------------------------------------------------------------

    def last_seals(self, aggregates: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
        """Return {(aggregate type, id): (version, seal)} of each aggregate's last seal, if any."""
        found = {}
        for kind, ident in aggregates:
            row = (
                Seal.objects.filter(aggregate_type=kind, aggregate_id=ident)
                .order_by("-aggregate_version")
                .values_list("aggregate_version", "seal")
                .first()
            )
            if row:
                found[(kind, ident)] = row
        return found

    def seals_insert(self, seals: list[Seal]) -> None:
        """Insert the seals, keeping a seal already there (another worker's, the same value)."""
        Seal.objects.bulk_create(seals, ignore_conflicts=True)

    def distinct_values(self, column: str, *, limit: int) -> list[str]:
        """Return up to `limit` distinct values of the outbox_event column (a checked name), in order."""
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT DISTINCT {column} FROM outbox_event ORDER BY 1 LIMIT %s", [limit])  # noqa: S608
            return [row[0] for row in cursor.fetchall()]

    def schema_versions(self, cursor: "CursorWrapper", *, limit: int) -> list[tuple[str, int]]:
        """Return up to `limit` (type, schema version) pairs of the log's events above version 1, in order."""
        cursor.execute(
            "SELECT DISTINCT type, schema_version FROM outbox_event WHERE schema_version > 1 ORDER BY 1, 2 LIMIT %s",
            [limit],
        )
        return [(row[0], row[1]) for row in cursor.fetchall()]

    def checkpoint_lock(self) -> bool:
        """Take the checkpoint lock for the transaction; False when another process holds it.

        One relay (the embedded default's) takes checkpoints: no lock."""
        return True

    def checkpoint_id(self, cursor: "CursorWrapper") -> int | None:
        """Reserve the next checkpoint's id; None: the id comes with the insert."""
        return None

    def checkpoint_ids_issued(self) -> int:
        """How many checkpoint ids the database has handed out; 0: it cannot tell."""
        return 0

    def seal_counts(self, lows: list[int], highs: list[int]) -> list[int]:
        """Return, for each range (low, high] of event ids, how many seals it holds."""
        return [
            Seal.objects.filter(event_id__gt=lo, event_id__lte=hi).count() for lo, hi in zip(lows, highs, strict=True)
        ]

    def events_purge(self, ids: list[int]) -> int:
        """Delete the events `ids` and their deliveries, stamp their seals purged; return how many."""
        with transaction.atomic():
            Seal.objects.filter(event_id__in=ids).update(purged_at=timezone.now())
            Delivery.objects.filter(event_id__in=ids).delete()
            deleted, _ = Event.objects.filter(id__in=ids).delete()
        return deleted

    # --- external consumers (outbox/consume/external.py) -------------------------------------------

    def dedupe_claim(
        self, *, consumer: str, key: str, event_id: int, token: "uuid.UUID | str", lease: float
    ) -> tuple | None:
        """Take the dedupe record for a call unless it is sent or leased; return (token, sends, lease), or None."""
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(_DEDUPE_CLAIM, [consumer, key, event_id, token, now + timedelta(seconds=lease), now])
            row: tuple | None = cursor.fetchone()
            return row

    def dedupe_sent(self, *, consumer: str, key: str) -> None:
        """Mark the dedupe record sent (in the caller's transaction)."""
        with connection.cursor() as cursor:
            cursor.execute(_DEDUPE_SENT, [timezone.now(), consumer, key])

    def dedupe_made(self, *, consumer: str, key: str, event_id: int) -> None:
        """Mark the dedupe record sent and the event's delivery done, in the caller's transaction."""
        from outbox.consume.deliveries import delivery_begin

        self.dedupe_sent(consumer=consumer, key=key)
        delivery_begin(event_id=event_id, consumer=consumer)

    # --- status -------------------------------------------------------------------------------

    def now(self) -> datetime:
        """Return the clock that heartbeats are stamped with: this machine's."""
        return timezone.now()

    def deliveries_done_estimate(self, counted: int) -> int | None:
        """Return about how many deliveries are done (exact here), given `counted` unsettled ones."""
        return Delivery.objects.filter(status=Delivery.Status.DONE).count()
