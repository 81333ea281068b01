"""Who and what caused the events written in the current request, command or task.

The middleware sets the context for a web request; management commands and the shell get a
"system" actor named after the command. Code that acts on someone's behalf can set it explicitly:

    with event_context(actor="user:alice", source="import"):
        ...
"""

import contextlib
import contextvars
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SYSTEM_ACTOR = "system"


def _process_source() -> str:
    argv = sys.argv
    program = os.path.basename(argv[0]) if argv and argv[0] else "python"
    if program == "manage.py" and len(argv) > 1:
        return f"command:{argv[1]}"
    return f"process:{program}"


@dataclass(frozen=True)
class EventContext:
    """The actor, correlation id and source stamped on every event written in this context."""

    source: str
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    actor: str = SYSTEM_ACTOR
    # Resolving the user lazily lets the middleware run before the view touches request.user.
    actor_resolver: Callable[[], str] | None = None

    def resolved_actor(self) -> str:
        """Return the actor, resolving a lazy one on first use."""
        if self.actor_resolver is not None:
            return self.actor_resolver()
        return self.actor


_process_context: EventContext | None = None
_current: contextvars.ContextVar[EventContext | None] = contextvars.ContextVar("outbox_event_context", default=None)


def current() -> EventContext:
    """Return the context of the running request or task, or the process's system context."""
    ctx = _current.get()
    if ctx is not None:
        return ctx
    global _process_context
    if _process_context is None:
        _process_context = EventContext(source=_process_source())
    return _process_context


@contextlib.contextmanager
def event_context(
    *,
    actor: str | None = None,
    source: str | None = None,
    correlation_id: str | None = None,
    actor_resolver: Callable[[], str] | None = None,
) -> Iterator[EventContext]:
    """Stamp events written inside the block with the given actor, source and correlation id."""
    outer = current()
    ctx = EventContext(
        actor=actor if actor is not None else outer.actor,
        actor_resolver=actor_resolver if actor is None else None,
        source=source if source is not None else outer.source,
        correlation_id=correlation_id or uuid.uuid4().hex,
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("outbox_enabled", default=True)


def emission_enabled() -> bool:
    """Whether saves of emitting models write events (always, outside the benchmark)."""
    return _enabled.get()


@contextlib.contextmanager
def emission_disabled() -> Iterator[None]:
    """Turn event writing off inside the block.

    Only the benchmark uses this, to measure what the outbox costs a save; turning events off
    anywhere else breaks the promise that every committed change has its event.
    """
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)
