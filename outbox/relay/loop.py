"""The relay: publish committed outbox events to Dramatiq, from any number of processes.

Loop: claim a batch (a short transaction with a lease), publish one message per consumer carrying
the batch's event ids (no transaction open), mark the batch published (another short
transaction). Between batches an idle relay waits on PostgreSQL's LISTEN for the insert trigger's
notification, or polls where there is none. A broker outage releases the batch uncounted and
backs off with jitter; a database outage does the same on the database side.

Between batches the relay also beats its heartbeat (outbox_relay_heartbeat, for status reports),
takes a checkpoint of the sealed log (outbox/eventlog/checkpoints.py) and starts the periodic jobs that
are due (outbox/ops/jobs.py).
"""

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

import dramatiq
from django.db import DatabaseError, connection
from django.utils import timezone

from outbox import conf
from outbox.backends import InsertListener, ops
from outbox.consume import ordering
from outbox.consume.publish import BROKER_ERRORS, PublishFailed, enqueue_all
from outbox.eventlog.checkpoints import checkpoint_take
from outbox.ops.jobs import JobRunner
from outbox.relay import claims, routing, sweeper
from outbox.relay.heartbeats import heartbeat_beat, heartbeat_forget

logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.2
BACKOFF_CAP = 10.0


def default_name() -> str:
    """Return a name that tells relays apart across machines: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Outage:
    """Backoff with jitter for one dependency, logging once per change of state."""

    what: str
    failures: int = 0

    def failed(self, error: BaseException) -> float:
        """Record a failure; return how long to wait before trying again."""
        if self.failures == 0:
            logger.warning("%s unavailable, backing off and retrying: %s", self.what, error)
        self.failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(self.failures, 10))
        return delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not security

    def succeeded(self) -> None:
        """Record a success, logging the recovery after an outage."""
        if self.failures:
            logger.warning("%s available again after %d failed attempts", self.what, self.failures)
            self.failures = 0


@dataclass
class RelayStats:
    """What a relay did, for its log line on exit and for tests."""

    published: int = 0
    batches: int = 0
    republished: int = 0


@dataclass
class Relay:
    """One relay process's loop."""

    name: str = field(default_factory=default_name)
    batch_size: int = field(default_factory=conf.batch_size)
    lease: float = field(default_factory=conf.lease_seconds)
    poll: float = field(default_factory=conf.poll_seconds)
    redelivery: float = field(default_factory=conf.redelivery_seconds)
    heartbeat: float = field(default_factory=conf.heartbeat_seconds)
    stats: RelayStats = field(default_factory=RelayStats)
    stopping: threading.Event = field(default_factory=threading.Event)
    broker: Outage = field(default_factory=lambda: Outage("Broker"))
    database: Outage = field(default_factory=lambda: Outage("Database"))
    # Checks OUTBOX_PERIODIC_JOBS when the relay is created, before it claims anything.
    jobs: JobRunner = field(default_factory=JobRunner)
    started_at: datetime = field(default_factory=timezone.now)
    _listener: InsertListener | None = None
    _next_sweep: float = 0.0
    _next_beat: float = 0.0
    _next_requeue: float = 0.0
    checkpoint_every: float = field(default_factory=conf.checkpoint_seconds)
    _next_checkpoint: float = 0.0
    # Event ids of published deliveries whose messages wait to go out together, per consumer (a
    # declaration's `coalesce`), and since when the oldest has waited.
    _held: dict[str, list[int]] = field(default_factory=dict)
    _held_since: float = 0.0

    # --- one batch ----------------------------------------------------------------------------

    def relay_batch(self) -> int:
        """Claim, publish and mark one batch; return how many events it published."""
        started = time.perf_counter()
        batch = claims.claim(relay=self.name, limit=self.batch_size, lease=self.lease)
        if not batch:
            return 0
        claimed = time.perf_counter()
        ids = [event_id for event_id, _ in batch]
        now, held = routing.split_coalesced(batch)
        if not self._publish(
            now,
            give_back=lambda published_any: claims.release(relay=self.name, event_ids=ids, published_any=published_any),
        ):
            return 0
        published = time.perf_counter()
        claims.mark_published(relay=self.name, batch=batch)
        self._hold(held)
        logger.debug(
            "Batch of %d: claimed in %.1f ms, published in %.1f ms, marked in %.1f ms",
            len(ids),
            (claimed - started) * 1000,
            (published - claimed) * 1000,
            (time.perf_counter() - published) * 1000,
        )
        self.stats.published += len(ids)
        self.stats.batches += 1
        return len(ids)

    def _hold(self, held: dict[str, list[int]]) -> None:
        """Keep the messages of consumers that take their events together (`coalesce`) for a while.

        Their deliveries are recorded published already: if this relay dies holding them, the
        sweeper publishes them after the redelivery deadline, as for a lost message."""
        if held and not self._held:
            self._held_since = time.monotonic()
        for consumer, ids in held.items():
            self._held.setdefault(consumer, []).extend(ids)

    def flush_held(self, *, force: bool = False) -> None:
        """Send the held messages once the oldest waited its consumer's `coalesce` (or at `force`)."""
        if not self._held:
            return
        waited = time.monotonic() - self._held_since
        if not force and waited < routing.coalesce_seconds(self._held):
            return
        limit = conf.message_max_ids()
        messages = [
            routing.message(consumer, ids[start : start + limit])
            for consumer, ids in self._held.items()
            for start in range(0, len(ids), limit)
        ]
        # On a broker error they stay held, to go with the next flush.
        if self._publish(messages, give_back=lambda _: None):
            self._held = {}

    def sweep(self) -> int:
        """Publish again the deliveries overdue for the redelivery deadline, and the ordered
        consumers' waiting deliveries whose predecessors let them run; return how many."""
        return self._sweep_overdue() + self._sweep_waiting()

    def _sweep_waiting(self) -> int:
        released = ordering.recheck(limit=self.batch_size)
        if not released:
            return 0
        limit = conf.message_max_ids()
        messages = [
            routing.message(consumer, ids[start : start + limit])
            for consumer, ids in released.items()
            for start in range(0, len(ids), limit)
        ]
        # On a broker error they are published already: the overdue sweep sends them after the deadline.
        self._publish(messages, give_back=lambda _: None)
        count = sum(map(len, released.values()))
        logger.info("Released %d waiting deliveries whose earlier events are done", count)
        return count

    def _sweep_overdue(self) -> int:
        overdue = sweeper.take_overdue(deadline=self.redelivery, limit=self.batch_size)
        if not overdue:
            return 0
        known = set(dramatiq.get_broker().get_declared_actors())
        orphans = [row for row in overdue if row[2] not in known]
        if orphans:
            names = sorted({row[2] for row in orphans})
            reason = f"Consumer {', '.join(names)} is no longer defined; restore it and replay, or leave it dead."
            logger.error("Marking %d deliveries dead: %s", len(orphans), reason)
            sweeper.abandon(overdue=orphans, reason=reason)
            overdue = [row for row in overdue if row[2] in known]
        messages = [routing.message(consumer, ids) for consumer, ids in sweeper.by_consumer(overdue).items()]
        if not self._publish(
            messages, give_back=lambda _: sweeper.give_back(deadline=self.redelivery, overdue=overdue)
        ):
            return 0
        logger.warning("Republished %d deliveries not done within %.0f s", len(overdue), self.redelivery)
        self.stats.republished += len(overdue)
        return len(overdue)

    def _publish(self, messages: list[Any], *, give_back: Callable[[bool], None]) -> bool:
        """Enqueue every message; return whether all went out.

        On a broker error, `give_back(published_any)` undoes the bookkeeping and the relay backs
        off before it tries again.
        """
        try:
            enqueue_all(messages)
        except PublishFailed as e:
            give_back(e.published_any)
            self.stopping.wait(self.broker.failed(e.cause))
            return False
        self.broker.succeeded()
        return True

    # --- the loop -----------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> RelayStats:
        """Relay until stopped (or, with `once`, until the backlog is empty); return the stats."""
        routing.load_actors()
        logger.info("Relay %s started (batch %d, lease %.0f s)", self.name, self.batch_size, self.lease)
        named = False
        while not self.stopping.is_set():
            try:
                if not named:
                    self._name_session()
                    named = True
                moved = self.relay_batch()
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + max(1.0, self.redelivery / 4)
                    moved += self.sweep()
                if time.monotonic() >= self._next_requeue:
                    self._next_requeue = time.monotonic() + conf.worker_heartbeat_seconds()
                    self.requeue_dead_workers()
                if time.monotonic() >= self._next_beat:
                    self._next_beat = time.monotonic() + self.heartbeat
                    self.beat()
                if not once and time.monotonic() >= self._next_checkpoint:
                    self._next_checkpoint = time.monotonic() + self.checkpoint_every
                    self.checkpoint()
                self.flush_held(force=once and not moved)
                if not once:
                    self.jobs.run_due(runner=self.name)
                self.database.succeeded()
            except DatabaseError as e:
                named = False
                self._drop_connections()
                self.stopping.wait(self.database.failed(e))
                continue
            if moved:
                continue
            if once:
                break
            self.wait_for_events()
        self._close_listener()
        self.jobs.wait()
        self._forget()
        logger.info(
            "Relay %s stopped: %d events in %d batches, %d republished",
            self.name,
            self.stats.published,
            self.stats.batches,
            self.stats.republished,
        )
        return self.stats

    def requeue_dead_workers(self) -> None:
        """On Redis, give the messages a dead worker held back to the other workers (its heartbeat
        is stale: outbox.consume.worker.WorkerHeartbeat). A broker error is left to the publishing
        path's backoff; this runs again on the next round."""
        requeue = getattr(dramatiq.get_broker(), "requeue_dead", None)
        if requeue is None:
            return
        try:
            requeue()
        except BROKER_ERRORS as e:
            logger.debug("Relay %s could not look for dead workers' messages: %s", self.name, e)

    def checkpoint(self) -> None:
        """Take a checkpoint of the sealed log. A failure that is not the database's is logged and
        relaying goes on: the next round tries again (the database's go to the loop's backoff)."""
        try:
            checkpoint_take()
        except DatabaseError:
            raise
        except Exception:
            logger.exception(
                "Relay %s could not take a checkpoint of the event log; relaying goes on, and it tries again in %.0f s",
                self.name,
                self.checkpoint_every,
            )

    def beat(self) -> None:
        """Record in the relay's heartbeat row that it is alive, and how many events it relayed."""
        heartbeat_beat(name=self.name, pid=os.getpid(), started_at=self.started_at, events_relayed=self.stats.published)

    def _forget(self) -> None:
        """Remove the heartbeat row of a relay that stops cleanly (best effort: the database may be down)."""
        try:
            heartbeat_forget(name=self.name)
        except DatabaseError as e:
            logger.warning("Relay %s could not remove its heartbeat row: %s", self.name, e)

    def stop(self, *_: object) -> None:
        """Finish the batch in hand, then leave the loop."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        """Stop on SIGTERM and SIGINT (after the batch in hand)."""
        handler: Callable[[int, FrameType | None], None] = lambda signum, frame: self.stop()  # noqa: E731
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # --- waiting ------------------------------------------------------------------------------

    def wait_for_events(self) -> None:
        """Sleep until an insert is notified (PostgreSQL) or the poll interval passes."""
        backend = ops()
        if not backend.notifies_inserts:
            self.stopping.wait(self.poll)
            return
        try:
            if self._listener is None or self._listener.closed:
                self._listener = backend.insert_listener()
            self._listener.wait(timeout=self.poll)
        except backend.listener_errors as e:
            self._close_listener()
            self.stopping.wait(self.database.failed(e))

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _name_session(self) -> None:
        """Prepare the relay's PostgreSQL session.

        Its name shows in pg_stat_activity, for operators (and fault tests). Its commits do not
        wait for the WAL flush (`synchronous_commit = off`): the relay writes only bookkeeping
        (claims, published deliveries), and a crash that loses the last of it makes the relay
        publish those events again, which the consumers absorb. It saves a disk flush per claim
        and per mark: the better part of a batch's latency.
        """
        ops().relay_session(name=self.name)

    def _drop_connections(self) -> None:
        connection.close()
        self._close_listener()
