"""Consumers, each declared in one place: `@consumer(name, events=[...])` on its handler.

A declaration says which event types the consumer takes, on which Dramatiq queue, with which
priority and retries, and its kind:

- `transactional` (the default): the handler's database writes commit in the transaction that
  records the delivery done, so the effect happens exactly once however often the event arrives;
- `external`: for an effect outside the database (an e-mail, a webhook). A dedupe record commits
  before the handler runs and is marked after it (outbox/consume/external.py); the handler gets
  the dedupe key, to pass to the outside system, and what the declaration's `session` opened for
  the message, if it has one; a callable it returns runs in the transaction that marks the call
  made (the consumer's own record of the effect).

The framework makes the Dramatiq actor, routes events to it (the relay reads the declarations),
batches events into messages and transactions, tracks, retries and records dead deliveries. The
handler sees one event (or, with `batch=True`, a list, for a consumer whose effect is cheaper in
bulk). With `ordered=True` it sees each aggregate's events in version order, an early one
waiting for its predecessor (outbox/consume/ordering.py); `on_dead` says whether a dead event
holds back its aggregate's later events (`block`) or not (`skip`). Settings may move a consumer
to another queue, switch it off, order it or change `on_dead`:
`OUTBOX_CONSUMERS = {"email": {"queue": "mail"}, "audit_log": {"enabled": False}}`.
"""

import enum
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import dramatiq
from django.conf import settings

from outbox.errors import RegistrationError

ALL = "*"
F = TypeVar("F", bound=Callable[..., Any])


class Kind(str, enum.Enum):
    """How a consumer's effect is made to happen once."""

    TRANSACTIONAL = "transactional"
    EXTERNAL = "external"


@dataclass(frozen=True)
class Consumer:
    """One consumer's declaration."""

    name: str
    events: tuple[str, ...]  # (ALL,) for every type
    handler: Callable[..., Any]
    kind: Kind = Kind.TRANSACTIONAL
    queue: str = ""
    priority: int = 0
    retries: int | None = None
    batch: bool = False
    # Events in one group share a transaction; by default one aggregate's events do.
    group_by: Callable[[Any], object] | None = None
    # Try the whole message as one transaction first (for a handler that takes no lock another
    # message could take in another order).
    together: bool = False
    dedupe_key: Callable[[Any], str] | None = None
    # Models ("app_label.Model") holding the consumer's effect, which the Auditors role may read.
    records: tuple[str, ...] = ()
    enabled: bool = True
    # External kind: opens what the message's calls share (a connection, say), once per message:
    # a callable taking the message's events and returning a context manager, whose value the
    # handler gets as its third argument.
    session: Callable[[list[Any]], AbstractContextManager[Any]] | None = None
    # External kind: whether an error certainly means the outside system did not take the call
    # (a refusal, no connection); such a call is not counted in the dedupe record's `sends`.
    not_sent: Callable[[BaseException], bool] | None = None
    # External kind: seconds a call may take before another worker may make it again (a number, or
    # a callable read at each claim, e.g. from a setting); OUTBOX_EXTERNAL_LEASE_SECONDS when None.
    lease: float | Callable[[], float] | None = None
    # Seconds the relay may hold this consumer's messages to send more events in each: for a
    # consumer whose events need not arrive at once (the outbox's sealer), fewer, larger messages.
    coalesce: float = 0.0
    # Transactional kind: given a message's event ids, those whose effect is already there, in one
    # query (the sealer's: events that outbox.seals() sealed first). Their deliveries are marked
    # done without loading the events or running the handler.
    settled: Callable[[list[int]], Iterable[int]] | None = None
    # Handle each aggregate's events in version order (outbox/consume/ordering.py); settings may
    # switch it on or off.
    ordered: bool = False
    # An ordered consumer's dead event: "block" its aggregate until it is replayed, or "skip" it.
    on_dead: str = "block"
    # Bring each payload to its type's current schema version before the handler (outbox/emit/
    # schemas.py); False: the handler reads payloads as stored (the sealer, which seals them).
    upcast: bool = True

    def takes(self, event_type: str) -> bool:
        """Whether this consumer receives events of the type."""
        return ALL in self.events or event_type in self.events


_declared: dict[str, Consumer] = {}


def consumer(
    name: str,
    *,
    events: Iterable[str] | str,
    queue: str | None = None,
    priority: int = 0,
    retries: int | None = None,
    kind: Kind | str = Kind.TRANSACTIONAL,
    batch: bool = False,
    group_by: Callable[[Any], object] | None = None,
    together: bool = False,
    dedupe_key: Callable[[Any], str] | None = None,
    records: Iterable[str] = (),
    enabled: bool = True,
    session: Callable[[list[Any]], AbstractContextManager[Any]] | None = None,
    not_sent: Callable[[BaseException], bool] | None = None,
    lease: float | Callable[[], float] | None = None,
    coalesce: float = 0.0,
    settled: Callable[[list[int]], Iterable[int]] | None = None,
    ordered: bool = False,
    on_dead: str = "block",
    upcast: bool = True,
) -> Callable[[F], F]:
    """Declare the decorated function as the handler of consumer `name`; return it unchanged."""
    if isinstance(events, str):
        if events != ALL:
            raise RegistrationError(f'Consumer {name!r}: events must be a list of event types or "*", not {events!r}.')
        types: tuple[str, ...] = (ALL,)
    else:
        types = tuple(dict.fromkeys(events))
        if not types:
            raise RegistrationError(f'Consumer {name!r} takes no event types: name some, or "*" for all.')
    try:
        chosen = Kind(kind)
    except ValueError:
        raise RegistrationError(
            f"Consumer {name!r}: kind must be one of {[k.value for k in Kind]}, not {kind!r}."
        ) from None
    _check_on_dead(f"Consumer {name!r}", on_dead)
    if not 0 <= coalesce <= 60:
        raise RegistrationError(f"Consumer {name!r}: coalesce is seconds from 0 to 60, not {coalesce!r}.")
    if dedupe_key is not None and chosen is not Kind.EXTERNAL:
        raise RegistrationError(f"Consumer {name!r}: dedupe_key is for external consumers (kind='external').")
    if chosen is Kind.EXTERNAL and batch:
        raise RegistrationError(f"Consumer {name!r}: an external consumer handles one event at a time (no batch).")
    if chosen is Kind.EXTERNAL and settled is not None:
        raise RegistrationError(
            f"Consumer {name!r}: settled is for transactional consumers; an external one's dedupe record says "
            "what was done."
        )
    if chosen is not Kind.EXTERNAL and (session is not None or not_sent is not None or lease is not None):
        raise RegistrationError(
            f"Consumer {name!r}: session, not_sent and lease are for external consumers (kind='external')."
        )

    def decorate(handler: F) -> F:
        declared = Consumer(
            name=name,
            events=types,
            handler=handler,
            kind=chosen,
            queue=queue or name,
            priority=priority,
            retries=retries,
            batch=batch,
            group_by=group_by,
            together=together,
            dedupe_key=dedupe_key,
            records=tuple(records),
            enabled=enabled,
            session=session,
            not_sent=not_sent,
            lease=lease,
            coalesce=coalesce,
            settled=settled,
            ordered=ordered,
            on_dead=on_dead,
            upcast=upcast,
        )
        known = _declared.get(name)
        if known is not None and _origin(known.handler) != _origin(handler):
            raise RegistrationError(
                f"Consumer {name!r} is declared twice: by {_origin(known.handler)} and by {_origin(handler)}."
            )
        _declared[name] = declared
        actor_declare(declared)
        return handler

    return decorate


def _origin(handler: Callable[..., Any]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


ON_DEAD = ("block", "skip")
OVERRIDABLE = ("queue", "enabled", "ordered", "on_dead")


def _check_on_dead(where: str, value: object) -> None:
    if value not in ON_DEAD:
        raise RegistrationError(
            f"{where}: on_dead must be 'block' (a dead event holds back its aggregate's later events until it "
            f"is replayed) or 'skip' (they go on without it), not {value!r}."
        )


def _overrides(name: str) -> dict[str, Any]:
    found = getattr(settings, "OUTBOX_CONSUMERS", {}).get(name, {})
    unknown = set(found) - set(OVERRIDABLE)
    if unknown:
        raise RegistrationError(
            f"OUTBOX_CONSUMERS[{name!r}] has unknown keys {sorted(unknown)}: only {', '.join(map(repr, OVERRIDABLE))} "
            "may be set."
        )
    if "on_dead" in found:
        _check_on_dead(f"OUTBOX_CONSUMERS[{name!r}]", found["on_dead"])
    for key in ("enabled", "ordered"):
        if key in found and not isinstance(found[key], bool):
            raise RegistrationError(
                f"OUTBOX_CONSUMERS[{name!r}][{key!r}] is {found[key]!r}: give true or false (a boolean, not a string)."
            )
    return dict(found)


def queue_of(declared: Consumer) -> str:
    """Return the consumer's queue, as settings may override it."""
    return str(_overrides(declared.name).get("queue", declared.queue))


def retries_of(declared: Consumer | None) -> int:
    """Return how many times a failed event is tried again: the declaration's, or CONSUMER_MAX_RETRIES."""
    if declared is not None and declared.retries is not None:
        return declared.retries
    return int(getattr(settings, "CONSUMER_MAX_RETRIES", 5))


def is_enabled(declared: Consumer) -> bool:
    """Whether the relay routes events to the consumer (settings may switch it off, or on)."""
    return bool(_overrides(declared.name).get("enabled", declared.enabled))


def is_ordered(declared: Consumer) -> bool:
    """Whether the consumer handles each aggregate's events in version order (settings may say)."""
    return bool(_overrides(declared.name).get("ordered", declared.ordered))


def skips_dead(declared: Consumer) -> bool:
    """Whether an ordered consumer goes on past a dead event of an aggregate (`on_dead="skip"`)
    rather than blocking the aggregate behind it (`"block"`; settings may say)."""
    return _overrides(declared.name).get("on_dead", declared.on_dead) == "skip"


def declared() -> list[Consumer]:
    """Return every declared consumer, switched off or not."""
    return list(_declared.values())


def enabled() -> list[Consumer]:
    """Return the consumers the relay routes to."""
    return [c for c in _declared.values() if is_enabled(c)]


class NoSuchConsumer(LookupError):
    """No enabled consumer has the name asked for; the message names the ones there are."""


def enabled_consumer(name: str) -> Consumer:
    """Return the enabled consumer named `name`, or raise NoSuchConsumer saying why and naming the others."""
    declared = _declared.get(name)
    if declared is not None and is_enabled(declared):
        return declared
    known = ", ".join(sorted(c.name for c in enabled())) or "none"
    state = "is switched off (OUTBOX_CONSUMERS)" if declared is not None else "is not declared"
    raise NoSuchConsumer(f"Consumer {name!r} {state}. Enabled consumers: {known}.")


def consumer_records() -> list[str]:
    """Return the models ("app_label.model", lower case) holding the declared consumers' effects."""
    return sorted({label.lower() for c in _declared.values() for label in c.records})


def declaration(name: str) -> Consumer | None:
    """Return the named consumer's declaration, or None."""
    return _declared.get(name)


def forget(name: str) -> None:
    """Remove a declaration (for tests that declare consumers of their own)."""
    _declared.pop(name, None)


def actor_declare(declared: Consumer, broker: dramatiq.Broker | None = None) -> dramatiq.Actor[Any, Any]:
    """Make (or return) the consumer's Dramatiq actor on the broker."""
    from outbox.consume.run import BadMessage, deliver

    broker = broker or dramatiq.get_broker()
    if declared.name in broker.actors:
        return broker.get_actor(declared.name)

    def run(event_ids: list[int]) -> None:
        deliver(declared.name, event_ids)

    run.__name__ = run.__qualname__ = declared.name
    run.__doc__ = declared.handler.__doc__
    return dramatiq.actor(  # type: ignore[call-overload]
        run,
        actor_name=declared.name,
        queue_name=queue_of(declared),
        priority=declared.priority,
        broker=broker,
        max_retries=retries_of(declared),
        min_backoff=getattr(settings, "CONSUMER_MIN_BACKOFF_MS", 1_000),
        max_backoff=getattr(settings, "CONSUMER_MAX_BACKOFF_MS", 30_000),
        throws=(BadMessage,),
    )


def actors_declare(broker: dramatiq.Broker | None = None) -> None:
    """Make every declared consumer's actor on the broker (for a broker set up after the declarations)."""
    for declared in _declared.values():
        actor_declare(declared, broker)
