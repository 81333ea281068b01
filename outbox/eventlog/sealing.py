"""Tamper evidence for the event log: a keyed hash chain per aggregate.

Each event's seal is HMAC-SHA256(key, previous seal of its aggregate ‖ the event's facts), the
facts being every column of the event in a canonical JSON form (the schema version only when it
is above 1: the columns of the events sealed before it existed). The chain is written after
commit, in version order, by the outbox's own consumer (outbox/eventlog/sealer.py),
and by any consumer that asks for the seals (`outbox.seals()`; the audit log carries them in its
lines). `verify()` recomputes the chains and names each event that was edited or removed behind
the application's back.

The key is OUTBOX_SEAL_KEY (by default derived from SECRET_KEY): whoever can write the database
but does not hold the key cannot forge a chain that verifies. Keep the key out of the database.
`python manage.py outbox_seal_key` prints the key in use in a form OUTBOX_SEAL_KEY takes, so that
a log sealed with the derived key can keep its key when SECRET_KEY changes.
"""

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import orjson
from django.utils import timezone

from outbox.backends import ops
from outbox.eventlog.keys import HEX_PREFIX, KEY_BYTES, key_setting, parse_key, seal_key
from outbox.eventlog.tagging import forged_reason, stored, tag_valid
from outbox.models import AggregateVersion, Checkpoint, Event, Seal

__all__ = ["HEX_PREFIX", "KEY_BYTES", "chain", "key_setting", "parse_key", "seal", "seal_key", "seal_many", "verify"]

GENESIS = ""


def facts(event: Event) -> bytes:
    """The event's columns in one canonical byte string (keys sorted, times in UTC ISO 8601), as
    stored: an upcast instance gives its stored payload and schema version (tagging.stored())."""
    created = event.created_at.astimezone(dt_timezone.utc).isoformat() if event.created_at else None
    schema_version, payload = stored(event)
    columns = [
        event.id,
        str(event.event_id),
        event.event_type,
        event.aggregate_type,
        event.aggregate_id,
        event.aggregate_version,
        payload,
        event.actor,
        event.correlation_id,
        event.source,
        created,
    ]
    # Only above version 1, so that the seals made before schema versions existed still verify.
    if schema_version != 1:
        columns.append(schema_version)
    return orjson.dumps(columns, option=orjson.OPT_SORT_KEYS)


def chain(previous: str, event: Event, key: bytes | None = None) -> str:
    """Return the event's seal given the previous seal of its aggregate."""
    return hmac.new(key or seal_key(), previous.encode() + facts(event), hashlib.sha256).hexdigest()


class SealGap(Exception):
    """Events of the aggregate between its last seal and this event are missing."""


class ForgedEvent(Exception):
    """The event's write-time tag does not verify: the outbox's writer did not write it."""


def seal(event: Event) -> str:
    """Seal the event, and any earlier unsealed event of its aggregate; return its seal.

    Raises ForgedEvent for an event that the writer did not write: it is never sealed.
    """
    if not tag_valid(event):
        raise ForgedEvent(forged_reason(event))
    return seal_many([event])[event.id]


def _last_seals(aggregates: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
    # On PostgreSQL one statement for all of them (DISTINCT ON); elsewhere one query each.
    return ops().last_seals(aggregates)


def seal_many(events: list[Event], *, values: bool = True) -> dict[int, str]:
    """Seal the events, and any earlier unsealed events of their aggregates; return {event id: seal}.

    The seals of events sealed before are read back in one query; with `values=False` (the
    sealer, which only makes sure that the events are sealed) they are not read at all.

    Seals are a function of the log, so two workers sealing the same events compute the same
    rows: the insert keeps whichever commits first, and no lock is needed.
    """
    by_aggregate: dict[tuple[str, str], dict[int, Event]] = {}
    for event in events:
        by_aggregate.setdefault((event.aggregate_type, event.aggregate_id), {})[event.aggregate_version] = event
    last = _last_seals(list(by_aggregate))
    key = seal_key()
    result: dict[int, str] = {}
    rows: list[Seal] = []
    already: list[int] = []  # events sealed before (a replay, or the sealer first)
    for (kind, ident), known in by_aggregate.items():
        last_version, previous = last.get((kind, ident), (0, GENESIS))
        top = max(known)
        already.extend(event.id for version, event in known.items() if version <= last_version)
        if top <= last_version:
            continue
        needed = range(last_version + 1, top + 1)
        if any(v not in known for v in needed):
            known = dict(known)
            known.update(
                {
                    e.aggregate_version: e
                    for e in Event.objects.checked()
                    .filter(
                        aggregate_type=kind,
                        aggregate_id=ident,
                        aggregate_version__gt=last_version,
                        aggregate_version__lte=top,
                    )
                    .exclude(aggregate_version__in=list(known))
                }
            )
            gone = [v for v in needed if v not in known]
            if gone:
                raise SealGap(
                    f"{kind}:{ident}: versions {gone} are missing from the event log; they were removed "
                    "before they were sealed. Run outbox_verify to see the whole picture."
                )
        for version in needed:
            item = known[version]
            if not tag_valid(item, key):
                continue  # not written by the writer: never sealed, and the chain goes past it
            previous = chain(previous, item, key)
            result[item.id] = previous
            rows.append(
                Seal(
                    event_id=item.id,
                    event_uuid=item.event_id,
                    aggregate_type=kind,
                    aggregate_id=ident,
                    aggregate_version=version,
                    seal=previous,
                )
            )
    ops().seals_insert(rows)
    if already and values:  # one query for all of them, whatever the aggregates
        result.update(Seal.objects.filter(event_id__in=already).values_list("event_id", "seal"))
    return result


@dataclass(frozen=True)
class Problem:
    """One finding of verify()."""

    kind: str  # changed | removed | unsealed | missing_versions
    aggregate: str
    version: int | None
    event_id: int | None
    detail: str

    def __str__(self) -> str:
        at = f" v{self.version}" if self.version is not None else ""
        event = f"event {self.event_id} " if self.event_id is not None else ""
        return f"{self.kind.upper()}: {event}({self.aggregate}{at}): {self.detail}"


@dataclass
class Report:
    events: int = 0
    aggregates: int = 0
    problems: list[Problem] | None = None
    # The newest checkpoint whose signature holds, when the whole log was verified.
    checkpoint: Checkpoint | None = None


def _ordered(queryset: Any) -> Iterator[Any]:
    return iter(queryset.order_by("aggregate_type", "aggregate_id", "aggregate_version").iterator(chunk_size=5000))


def verify(
    *,
    aggregate: tuple[str, str] | None = None,
    unsealed_grace: timedelta = timedelta(minutes=5),
    expect: str | None = None,
) -> Report:
    """Recompute every aggregate's chain (or one's) and return what does not match.

    - changed: the event's facts (or its seal) no longer give its seal;
    - removed: a sealed event is gone and the purge did not remove it;
    - unsealed: an event older than `unsealed_grace` has no seal (is a worker taking the outbox_seal queue?);
    - missing_versions: the aggregate's counter is past its last event and seal;
    - forged: an event the writer did not write (its tag does not verify);
    - and, over the whole log, what outbox.eventlog.checkpoints.checkpoints_check() finds: sealed events
      gone since a checkpoint counted them, an emptied log, forged or missing checkpoints, and a
      log behind the checkpoint `expect` (a token an auditor kept, outbox_verify --expect).
    """
    events = Event.objects.checked()
    seals = Seal.objects.all()
    counters = AggregateVersion.objects.all()
    if aggregate:
        events = events.filter(aggregate_type=aggregate[0], aggregate_id=aggregate[1])
        seals = seals.filter(aggregate_type=aggregate[0], aggregate_id=aggregate[1])
        counters = counters.filter(aggregate_type=aggregate[0], aggregate_id=aggregate[1])
    key = seal_key()
    cutoff: datetime = timezone.now() - unsealed_grace
    report = Report(problems=[])
    problems = report.problems
    assert problems is not None

    def position(row: Any) -> tuple[str, str, int]:
        return (row.aggregate_type, row.aggregate_id, row.aggregate_version)

    event_iter, seal_iter = _ordered(events), _ordered(seals)
    event, sealed = next(event_iter, None), next(seal_iter, None)
    seen: dict[tuple[str, str], int] = {}
    previous: dict[tuple[str, str], str] = {}

    def missing(name: tuple[str, str], first: int, last: int) -> None:
        """Report versions `first`..`last` of the aggregate, if any, as gone without a trace."""
        if last >= first:
            problems.append(
                Problem(
                    "missing_versions",
                    ":".join(name),
                    None,
                    None,
                    f"versions {first}..{last} have neither an event nor a seal: removed",
                )
            )

    def gap_check(name: tuple[str, str], version: int) -> None:
        missing(name, seen.get(name, 0) + 1, version - 1)

    while event is not None or sealed is not None:
        if sealed is not None and (event is None or position(sealed) < position(event)):
            name = (sealed.aggregate_type, sealed.aggregate_id)
            gap_check(name, sealed.aggregate_version)
            if sealed.purged_at is None:
                problems.append(
                    Problem(
                        "removed",
                        ":".join(name),
                        sealed.aggregate_version,
                        sealed.event_id,
                        "the event was sealed, then deleted outside the retention purge",
                    )
                )
            previous[name] = sealed.seal
            seen[name] = sealed.aggregate_version
            sealed = next(seal_iter, None)
            continue
        assert event is not None
        name = (event.aggregate_type, event.aggregate_id)
        gap_check(name, event.aggregate_version)
        report.events += 1
        at_seal = sealed is not None and position(sealed) == position(event)
        if not at_seal and not tag_valid(event, key):
            # The sealer never seals such a row, so the chain goes on past it.
            problems.append(
                Problem(
                    "forged",
                    ":".join(name),
                    event.aggregate_version,
                    event.id,
                    "not written by the outbox's writer: its tag does not verify (a row inserted by SQL, or "
                    "edited before it was sealed); every consumer refused it and it is not sealed",
                )
            )
            seen[name] = event.aggregate_version
            event = next(event_iter, None)
            continue
        if at_seal:
            assert sealed is not None
            expected = chain(previous.get(name, GENESIS), event, key)
            if (
                sealed.event_id != event.id
                or not hmac.compare_digest(expected, sealed.seal)
                or not tag_valid(event, key)
            ):
                problems.append(
                    Problem(
                        "changed",
                        ":".join(name),
                        event.aggregate_version,
                        event.id,
                        "its facts no longer match its seal: the event (or its seal) was edited",
                    )
                )
            previous[name] = sealed.seal
            sealed = next(seal_iter, None)
        elif event.created_at < cutoff:
            problems.append(
                Problem(
                    "unsealed",
                    ":".join(name),
                    event.aggregate_version,
                    event.id,
                    f"no seal after {unsealed_grace}; are workers taking the outbox_seal queue running?",
                )
            )
        seen[name] = event.aggregate_version
        event = next(event_iter, None)
    report.aggregates = len(seen)
    for counter in counters.iterator(chunk_size=5000):
        name = (counter.aggregate_type, counter.aggregate_id)
        missing(name, seen.get(name, 0) + 1, counter.version)
    if aggregate is None:
        from outbox.eventlog.checkpoints import checkpoints_check

        report.checkpoint, found = checkpoints_check(key=key, expect=expect)
        problems.extend(found)
    return report
