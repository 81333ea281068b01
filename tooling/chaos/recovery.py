"""How long the pipeline takes to recover from a worker's death, measured in the chaos run.

At each worker SIGKILL the clock notes the deliveries then `published` (handed to the broker and
not finished: among them whatever the dead worker held), and measures the seconds until every
one of them has left `published` (done, or failed and on its way to a retry: a worker took it).
Its messages come back from the broker by themselves (RabbitMQ at once, Redis once the worker's
heartbeat is stale); without that, they waited for the sweeper's redelivery deadline.

Left out, because they measure something else: deliveries published before the last broker or
PostgreSQL restart (their messages were lost, or their attempt failed with the database and waits
for its retry: the sweeper and the backoff govern those), and consumers whose messages a relay
holds on purpose (`coalesce`). A kill while the workers are behind (a delivery published more
than BEHIND_SECONDS ago still unfinished: the backlog a broker's restart or a backfill leaves)
starts no measurement, which would time the backlog's drain; `recovery_samples_skipped` counts
those. Recovery that failed shows all the same: the dead worker's messages would stay unfinished
until the sweeper's deadline, in the measurement that its kill started.

While a measurement is under way the monkey kills only relays and holds back the restarts; a
measurement that a deploy or the backfill's kill interrupts is dropped.

The measurements under traffic (`recovery_under_traffic_seconds_*`) time, besides the dead
worker's messages, whatever backlog the workers were working through: a kill soon after the deploy
or a broker restart times that backlog's drain. So `recovery_seconds_*` come from the probes after
the drain (`tooling.chaos.run.recovery_probe`): on a quiet system, a burst of orders placed and a
worker SIGKILLed while their deliveries are in flight, several times over.
"""

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection
from django.utils import timezone

from outbox.consume import declare
from outbox.models import Delivery

# A recovery not finished by then is recorded at this many seconds (and shows in the p99).
GIVE_UP_SECONDS = 120.0
# A kill while a delivery published longer ago than this is unfinished starts no measurement.
BEHIND_SECONDS = 15.0
POLL_SECONDS = 0.2


@dataclass
class _Watch:
    killed_at: float
    ids: list[int]
    probe: bool


@dataclass
class RecoveryClock:
    # The measurements under traffic, and the probes' on a quiet system (after the drain).
    seconds: list[float] = field(default_factory=list)
    probe_seconds: list[float] = field(default_factory=list)
    dropped: int = 0
    skipped: int = 0
    # What became of each measurement, for the run's faults.log.
    notes: list[str] = field(default_factory=list)
    _since: datetime = field(default_factory=timezone.now)
    _watches: list[_Watch] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _paused: int = 0

    @contextmanager
    def disturbance(self) -> Iterator[None]:
        """Around a broker or PostgreSQL restart, a deploy or the backfill's kill: the measurements
        under way are dropped, none starts meanwhile, and what was published before its end is
        left out of the next ones."""
        with self._lock:
            self._paused += 1
            if self._watches:
                self.notes.append(f"{time.strftime('%H:%M:%S')} recovery: {len(self._watches)} measurement(s) dropped")
            self.dropped += len(self._watches)
            self._watches.clear()
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._since = timezone.now()

    def measuring(self) -> bool:
        """Whether a measurement is under way (the monkey then holds back the restarts)."""
        with self._lock:
            return bool(self._watches)

    def paused(self) -> bool:
        with self._lock:
            return self._paused > 0

    def worker_killed(self, *, probe: bool = False) -> bool:
        """Start a measurement: a worker was SIGKILLed just now. Return whether it started (with
        nothing published and unfinished there is nothing to recover, and no measurement)."""
        killed_at = time.monotonic()
        if self.paused():
            return False
        held = [d.name for d in declare.enabled() if d.coalesce > 0]
        try:
            unfinished = Delivery.objects.filter(status=Delivery.Status.PUBLISHED).exclude(consumer__in=held)
            if unfinished.filter(published_at__lt=timezone.now() - timedelta(seconds=BEHIND_SECONDS)).exists():
                # Workers behind (a broker's restart or a backfill left a backlog): the time would
                # be the backlog's drain, not the recovery.
                self.skipped += 1
                return False
            ids = list(unfinished.filter(published_at__gt=self._since).values_list("id", flat=True))
        except DatabaseError:
            connection.close()
            return False
        if not ids:
            return False
        with self._lock:
            self._watches.append(_Watch(killed_at, ids, probe))
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="chaos-recovery", daemon=True)
            self._thread.start()
        return True

    def wait(self, timeout: float = GIVE_UP_SECONDS) -> None:
        """Wait for the measurements under way to end (up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.measuring() and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def _loop(self) -> None:
        while not self._stopping.wait(POLL_SECONDS):
            with self._lock:
                watches = list(self._watches)
            for watch in watches:
                waited = time.monotonic() - watch.killed_at
                try:
                    left = Delivery.objects.filter(id__in=watch.ids, status=Delivery.Status.PUBLISHED).exists()
                except DatabaseError:
                    connection.close()
                    continue
                if left and waited < GIVE_UP_SECONDS:
                    continue
                with self._lock:
                    if watch in self._watches:
                        self._watches.remove(watch)
                        (self.probe_seconds if watch.probe else self.seconds).append(min(waited, GIVE_UP_SECONDS))
                        self.notes.append(
                            f"{time.strftime('%H:%M:%S')} recovery{' (probe)' if watch.probe else ''}: "
                            f"{len(watch.ids)} deliveries handled {waited:.2f} s after the kill"
                        )
        connection.close()

    def finish(self, timeout: float = GIVE_UP_SECONDS) -> None:
        """Wait for the measurements under way (up to `timeout`), then stop."""
        self.wait(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.dropped += len(self._watches)
            self._watches.clear()

    def figures(self) -> dict[str, float | int | None]:
        return {
            **_percentiles("recovery_seconds", self.probe_seconds),
            "recovery_samples": len(self.probe_seconds),
            **_percentiles("recovery_under_traffic_seconds", self.seconds),
            "recovery_under_traffic_samples": len(self.seconds),
            "recovery_samples_dropped": self.dropped,
            "recovery_samples_skipped": self.skipped,
        }


def _percentiles(name: str, samples: list[float]) -> dict[str, float | None]:
    """The median and the nearest-rank p99 of `samples`, as `<name>_p50` and `<name>_p99`."""
    kept = sorted(samples)
    if not kept:
        return {f"{name}_p50": None, f"{name}_p99": None}
    p99 = kept[min(len(kept) - 1, round(0.99 * (len(kept) - 1)))]
    return {f"{name}_p50": round(statistics.median(kept), 2), f"{name}_p99": round(p99, 2)}
