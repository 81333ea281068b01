"""Signed checkpoints of the sealed log, so that an emptied or shortened log fails verify.

A seal is never deleted (the purge only stamps it), so the number of seals of events with ids
up to some id can only grow. A checkpoint records that number, signed with the seal key and
chained to the previous checkpoint's signature: a later count below it means events were removed
together with their seals (a TRUNCATE, or a tail cut), and verify names the id range and how
many are gone. The application's role may add checkpoints but not change or delete them.

Counting is incremental: each checkpoint counts only the seals above the previous one's last id,
so taking one costs a range scan of what was sealed since. A seal that commits late, below an
id already counted, is simply not counted: a checkpoint may undercount, never overcount.
"""

import hashlib
import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta

import orjson
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from outbox import conf
from outbox.backends import ops
from outbox.eventlog.keys import seal_key
from outbox.eventlog.sealing import Problem
from outbox.models import Checkpoint, Event, Seal

logger = logging.getLogger(__name__)


def signature(
    *, id: int, previous: str, sealed: int, last_event_id: int, taken_at: str, key: bytes | None = None
) -> str:
    """Return the signature of a checkpoint's figures (its id among them: a copied row does not verify)."""
    body = orjson.dumps([id, previous, sealed, last_event_id, taken_at])
    return hmac.new(key or seal_key(), body, hashlib.sha256).hexdigest()


def _taken_at(checkpoint: Checkpoint) -> str:
    return checkpoint.taken_at.isoformat()


def signed(checkpoint: Checkpoint, key: bytes | None = None) -> bool:
    """Whether the checkpoint's signature holds (the key's holder wrote it)."""
    expected = signature(
        id=checkpoint.pk,
        previous=checkpoint.previous,
        sealed=checkpoint.sealed,
        last_event_id=checkpoint.last_event_id,
        taken_at=_taken_at(checkpoint),
        key=key,
    )
    return hmac.compare_digest(expected, checkpoint.signature)


def _latest_signed(key: bytes) -> Checkpoint | None:
    # A forged checkpoint (inserted by SQL) is passed over, not built on.
    for checkpoint in Checkpoint.objects.order_by("-id").iterator(chunk_size=100):
        if signed(checkpoint, key):
            return checkpoint
    return None


def _range_count(lo: int, hi: int) -> int:
    return Seal.objects.filter(event_id__gt=lo, event_id__lte=hi).count()


@transaction.atomic
def checkpoint_take() -> Checkpoint | None:
    """Record a checkpoint of the seals written since the last one; return it (None: nothing new,
    or another process is taking one right now)."""
    backend = ops()
    # One relay at a time takes a checkpoint (the others skip): the chain never forks.
    if not backend.checkpoint_lock():
        return None
    key = seal_key()
    previous = _latest_signed(key)
    last = Seal.objects.aggregate(top=Max("event_id"))["top"] or 0
    since = previous.last_event_id if previous else 0
    if last <= since:
        return None
    # The database's clock where it has one (PostgreSQL), else this machine's (the embedded default).
    now = backend.now()
    with connection.cursor() as cursor:
        # The id is signed and PostgreSQL's guard allows no update: there it is taken before the insert.
        new_id = backend.checkpoint_id(cursor)
    checkpoint = Checkpoint(
        id=new_id,
        sealed=(previous.sealed if previous else 0) + _range_count(since, last),
        last_event_id=last,
        taken_at=now,
        previous=previous.signature if previous else "",
    )
    if new_id is None:  # the embedded default: the id comes with the insert (no guard on SQLite)
        checkpoint.signature = "0" * 64
        checkpoint.save()
    checkpoint.signature = signature(
        id=checkpoint.pk,
        previous=checkpoint.previous,
        sealed=checkpoint.sealed,
        last_event_id=last,
        taken_at=_taken_at(checkpoint),
        key=key,
    )
    if new_id is None:
        checkpoint.save(update_fields=["signature"])
    else:
        checkpoint.save(force_insert=True)
    logger.info("Checkpoint of the event log: %s", checkpoint.token)
    return checkpoint


@dataclass(frozen=True)
class Expected:
    """A checkpoint as an auditor kept it: `id:sealed:last_event_id:signature`."""

    id: int
    sealed: int
    last_event_id: int
    signature: str

    @classmethod
    def parse(cls, token: str) -> "Expected":
        """Read a token; raise ValueError saying what one looks like."""
        parts = token.strip().split(":")
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]) or len(parts[3]) != 64:
            raise ValueError(
                f"{token!r} is not a checkpoint token. Pass what outbox_verify printed after 'Checkpoint:', "
                "e.g. 12:4500:4512:<64 hex digits>."
            )
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3])


def _checkpoints_issued() -> int:
    """How many checkpoint ids the database has handed out (0 where it cannot tell): checkpoints
    are only ever taken of a sealed log, so any at all means the log once held events."""
    return ops().checkpoint_ids_issued()


def checkpoints_check(*, key: bytes, expect: str | None = None) -> tuple[Checkpoint | None, list[Problem]]:
    """Check the log against its checkpoints; return the newest signed one and the problems."""
    problems: list[Problem] = []
    good: list[Checkpoint] = []
    for checkpoint in Checkpoint.objects.order_by("id").iterator(chunk_size=5000):
        if not signed(checkpoint, key):
            problems.append(
                _problem("forged_checkpoint", f"checkpoint {checkpoint.pk}'s signature does not hold: inserted by SQL")
            )
            continue
        previous = good[-1].signature if good else ""
        if checkpoint.previous != previous:
            problems.append(
                _problem(
                    "checkpoints_removed",
                    f"checkpoint {checkpoint.pk} follows one that is no longer there: checkpoints were deleted",
                )
            )
        good.append(checkpoint)
    bounds = [(good[i - 1] if i else None, cp) for i, cp in enumerate(good)]
    if bounds:
        lows = [prev.last_event_id if prev else 0 for prev, _ in bounds]
        highs = [cp.last_event_id for _, cp in bounds]
        counts = _counts(lows, highs)
        for (prev, cp), lo, hi, now in zip(bounds, lows, highs, counts, strict=True):
            then = cp.sealed - (prev.sealed if prev else 0)
            if now < then:
                problems.append(
                    _problem(
                        "cut",
                        f"checkpoint {cp.pk} (taken {cp.taken_at.isoformat()}) counted {then} sealed events with ids "
                        f"{lo + 1}..{hi}; {now} remain: {then - now} were removed with their seals",
                    )
                )
    if expect:
        problems.extend(_expected(Expected.parse(expect)))
    if not good and _checkpoints_issued() and not Seal.objects.exists() and not Event.objects.exists():
        problems.append(
            _problem(
                "emptied",
                "checkpoints of a sealed log were taken, but the log holds no event, seal or checkpoint: "
                "it was emptied",
            )
        )
    if good:
        problems.extend(_stale(good[-1]))
    return (good[-1] if good else None), problems


def _stale(newest: Checkpoint) -> list[Problem]:
    """A problem when seals older than ten checkpoint intervals lie above the newest checkpoint: no
    relay is taking checkpoints (or something blocks them), so cuts go unnoticed."""
    allowed = timedelta(seconds=10 * conf.checkpoint_seconds())
    behind = Seal.objects.filter(event_id__gt=newest.last_event_id, sealed_at__lt=timezone.now() - allowed)
    if not behind.exists():
        return []
    return [
        _problem(
            "stale_checkpoint",
            f"the newest checkpoint ({newest.pk}, taken {newest.taken_at.isoformat()}) is behind seals older than "
            f"{allowed}: no relay has taken a checkpoint since. Are the relays running (outbox_status)?",
        )
    ]


def _counts(lows: list[int], highs: list[int]) -> list[int]:
    # On PostgreSQL one statement for every range; elsewhere one count each.
    return ops().seal_counts(lows, highs)


def _expected(expected: Expected) -> list[Problem]:
    problems = []
    kept = Checkpoint.objects.filter(pk=expected.id).first()
    if kept is None or not hmac.compare_digest(kept.signature, expected.signature):
        problems.append(
            _problem("checkpoints_removed", f"the checkpoint you kept ({expected.id}) is no longer in the database")
        )
    now = _range_count(0, expected.last_event_id)
    if now < expected.sealed:
        problems.append(
            _problem(
                "cut",
                f"the checkpoint you kept ({expected.id}) counted {expected.sealed} sealed events with ids up to "
                f"{expected.last_event_id}; {now} remain: {expected.sealed - now} were removed with their seals",
            )
        )
    return problems


def _problem(kind: str, detail: str) -> Problem:
    return Problem(kind, "log", None, None, detail)
