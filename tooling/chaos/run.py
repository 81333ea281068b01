"""The chaos run: real relays and workers under faults, then the invariants checked.

While orders are placed, edited and cancelled (and some transactions rolled back on purpose),
relays and workers are SIGKILLed at random and started again, the broker BROKER_URL selects is
restarted once (Redis: a server of the run's own, its data lost; RabbitMQ: this machine's, with
rabbitmqctl, its durable queues kept), and PostgreSQL is restarted once. After each worker's
SIGKILL, `recovery_seconds_p99` measures how long its messages took to be handled by another
(tooling/chaos/recovery.py). Halfway, a deploy adds a consumer
(tooling/consumers.py: every process restarted with it switched on) and `outbox_backfill` gives it
the history while the traffic goes on; the backfill is SIGKILLed once and resumed. Then the run
waits for the pipeline to drain, and measures `drain_seconds` (from the last fault to every
delivery done); `tooling.chaos.checks` checks the invariants.
"""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import F
from django.test.utils import override_settings

from core import services
from core.models import Customer
from outbox.models import Backfill as BackfillRecord
from tooling.brokers import ToolBroker, restartable_broker
from tooling.chaos.checks import ROLLBACK_EMAIL, SKU_PREFIX, check
from tooling.chaos.recovery import RecoveryClock
from tooling.consumers import CONSUMER as BACKFILLED
from tooling.database import max_event_id, undone_deliveries
from tooling.processes import (
    NoticeCounter,
    ProcessError,
    child_env,
    manage_start,
    smtp_server,
    stop_children,
    wait_until,
)
from tooling.traffic import Shopper, catalogue_ensure

logger = logging.getLogger("tooling.chaos")


class ChaosError(RuntimeError):
    """The run could not be carried out (a tool missing, a service that did not come back)."""


@dataclass
class Scale:
    orders: int = 20_000
    relays: int = 2
    workers: int = 2
    kill_interval: float = 3.0
    rollback_every: int = 50
    redelivery_seconds: float = 10.0
    drain_timeout: float = 600.0
    restart_postgres: bool = True
    backfill: bool = True
    recovery_probes: int = 5
    seed: int = 1


@dataclass
class Faults:
    kills: int = 0
    worker_kills: int = 0
    broker_restarts: int = 0
    postgres_restarts: int = 0
    backfill_kills: int = 0
    last_at: float = 0.0
    log: list[str] = field(default_factory=list)


# --- services under our control ---------------------------------------------------------------


def postgres_restart_command() -> list[str]:
    """The command that restarts this machine's PostgreSQL cluster (Debian's pg_ctlcluster)."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") is None or not versions:
        raise ChaosError(
            "pg_ctlcluster was not found, so PostgreSQL cannot be restarted here. Run with --no-postgres-restart, "
            "or restart it by hand during the run."
        )
    return [
        shutil.which("pg_ctlcluster") or "pg_ctlcluster",
        "--skip-systemctl-redirect",
        versions[-1],
        "main",
        "restart",
        "-m",
        "fast",
    ]


def _db_up() -> bool:
    try:
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except (OperationalError, InterfaceError):
        connection.close()
        return False


# --- processes --------------------------------------------------------------------------------


class Fleet:
    """The relays and workers, each restartable."""

    def __init__(self, env: dict[str, str], logs: Path, scale: Scale) -> None:
        self.env = env
        self.logs = logs
        self.specs: dict[str, list[str]] = {}
        for i in range(scale.relays):
            self.specs[f"relay{i}"] = ["outbox_relay", "--name", f"chaos-relay{i}"]
        for i in range(scale.workers):
            self.specs[f"worker{i}"] = ["rundramatiq", "--processes", "1", "--threads", "4"]
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.generation: Counter[str] = Counter()
        # The monkey's thread and the traffic's (the deploy) both start and kill processes.
        self.lock = threading.RLock()

    def start(self, name: str, args: list[str] | None = None) -> None:
        """Start the named process (`args` for one outside the fleet's relays and workers)."""
        with self.lock:
            self.generation[name] += 1
            log = self.logs / f"{name}.{self.generation[name]}.log"
            self.running[name] = manage_start(args or self.specs[name], env=self.env, log=log)

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started, as a crashed machine would."""
        with self.lock:
            with suppress(ProcessLookupError):
                os.killpg(self.running[name].pid, signal.SIGKILL)
            self.running[name].wait(timeout=10)

    def deploy(self, **env: str) -> None:
        """Restart every relay and worker with `env` added, as a deploy of new settings would."""
        with self.lock:
            self.env = {**self.env, **env}
            for name in self.specs:
                self.kill(name)
                self.start(name)

    def stop_all(self) -> None:
        stop_children(list(self.running.values()))

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (after a failed run): nothing may outlive the command."""
        for name, process in self.running.items():
            if process.poll() is None:
                self.kill(name)


# --- traffic ------------------------------------------------------------------------------------


def _retrying(action: Callable[[], Any]) -> Any:
    """Run a business write; while the database is away (its restart), wait and try again."""
    for _ in range(1800):
        try:
            return action()
        except (OperationalError, InterfaceError):
            connection.close()
            time.sleep(0.1)
    raise ChaosError("the database did not come back within three minutes")


class Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose."""


# The deploy's setting, for the relays and workers (from the environment) and for this process,
# which counts the deliveries routed to the consumer from then on.
BACKFILL_ON_SETTINGS = {"OUTBOX_CONSUMERS": {BACKFILLED: {"enabled": True}}}
BACKFILL_ON = {name: json.dumps(value) for name, value in BACKFILL_ON_SETTINGS.items()}


class Backfill:
    """The backfill of the consumer the deploy adds: started right after it, SIGKILLed once by the
    monkey, and run again until it finishes (it resumes at its cursor)."""

    NAME = "backfill"

    def __init__(self, fleet: Fleet, scale: Scale) -> None:
        self.fleet, self.scale = fleet, scale
        self.args: list[str] = []
        self.runs = 0

    @property
    def started(self) -> bool:
        return bool(self.args)

    def start(self) -> None:
        """Start it; the first time, throttled to last about ten fault intervals, so that the
        faults meet it."""
        if not self.args:
            rate = max(10, int(max_event_id() / (10 * self.scale.kill_interval)))
            self.args = ["outbox_backfill", BACKFILLED, "--chunk", "100", "--rate", str(rate)]
        self.runs += 1
        self.fleet.start(self.NAME, self.args)

    def running(self) -> bool:
        process = self.fleet.running.get(self.NAME)
        return process is not None and process.poll() is None

    def halfway(self) -> bool:
        """Whether it is running and its cursor has passed the middle of its range."""
        if not self.running():
            return False
        try:
            return (
                BackfillRecord.objects.filter(consumer=BACKFILLED, status=BackfillRecord.Status.RUNNING)
                .annotate(twice=F("cursor") * 2 - F("after"))
                .filter(twice__gte=F("upto"))
                .exists()
            )
        except (OperationalError, InterfaceError):  # PostgreSQL's restart: ask again later
            connection.close()
            return False

    def revive(self) -> None:
        """Start it again if it failed (PostgreSQL's restart ends it with an error)."""
        process = self.fleet.running.get(self.NAME)
        if process is not None and process.poll() not in (None, 0) and self.runs < 20:
            self.start()

    def finish(self, timeout: float, meanwhile: Callable[[], None]) -> bool:
        """Wait for the backfill to end, running it again after a failure (PostgreSQL's restart)
        and calling `meanwhile` on each round (the monkey's kill halfway, if the traffic ended too
        soon for it); return whether it finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.runs < 20:
            if self.fleet.running[self.NAME].poll() == 0:
                return True
            meanwhile()
            self.revive()
            time.sleep(0.2)
        return False


def traffic(scale: Scale, rng: random.Random, progress: Callable[[int], None] | None) -> dict[str, int]:
    """Place `scale.orders` orders, every `rollback_every`th in a transaction rolled back on purpose,
    editing and cancelling some and receiving stock between them; return what was done."""
    catalogue = catalogue_ensure(prefix=SKU_PREFIX, products=30, customers=20, opening_stock=100_000, label="chaos")
    doomed = Customer.objects.filter(email=ROLLBACK_EMAIL).first() or services.customer_create(
        name="Rolled back", email=ROLLBACK_EMAIL
    )
    shopper = Shopper(catalogue, rng, run=_retrying, receive_range=(1, 20))
    for n in range(1, scale.orders + 1):
        if scale.rollback_every and n % scale.rollback_every == 0:
            lines = shopper.lines()

            def rolled_back(lines: list[services.LineRequest] = lines) -> None:
                with suppress(Rollback), transaction.atomic():
                    services.order_create(customer=doomed, lines=lines, place=True)
                    raise Rollback

            _retrying(rolled_back)
            shopper.counts["rolled_back"] += 1
        else:
            shopper.place()
        if rng.random() < 0.10:
            shopper.edit()
        if rng.random() < 0.08:
            shopper.cancel()
        if rng.random() < 0.05:
            shopper.receive()
        if progress:
            progress(1)
    return dict(shopper.counts)


# --- the run ------------------------------------------------------------------------------------


class Monkey:
    """The faults: a random relay or worker SIGKILLed and started again about every
    `kill_interval` seconds, the broker restarted once and PostgreSQL once, each at a random point
    of the traffic."""

    def __init__(self, scale: Scale, rng: random.Random, fleet: Fleet, broker: ToolBroker, backfill: Backfill) -> None:
        self.scale, self.rng, self.fleet, self.broker, self.backfill = scale, rng, fleet, broker, backfill
        self.restart_pg = postgres_restart_command() if scale.restart_postgres else None
        self.broker_at = rng.uniform(0.25, 0.4)
        self.postgres_at = rng.uniform(0.6, 0.75)
        self.faults = Faults()
        self.recovery = RecoveryClock()
        self.orders_done = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="chaos-monkey", daemon=True)

    def _record(self, what: str) -> None:
        self.faults.last_at = time.monotonic()
        self.faults.log.append(f"{time.strftime('%H:%M:%S')} order {self.orders_done}: {what}")

    def restart_broker(self) -> None:
        try:
            with self.recovery.disturbance():
                what = self.broker.restart()
        except (ProcessError, subprocess.SubprocessError) as e:
            raise ChaosError(f"the broker could not be restarted: {e}") from e
        self.faults.broker_restarts += 1
        self._record(what)

    def restart_postgres(self) -> None:
        assert self.restart_pg is not None
        with self.recovery.disturbance():
            subprocess.run(self.restart_pg, check=True, timeout=180, capture_output=True)  # noqa: S603
            wait_until(_db_up, timeout=60, what="PostgreSQL to answer again", interval=0.2)
        self.faults.postgres_restarts += 1
        self._record("PostgreSQL restarted")

    def kill_backfill_halfway(self) -> None:
        """SIGKILL the backfill and start it again, once, when its cursor passes the middle."""
        if self.faults.backfill_kills or not self.backfill.halfway():
            return
        with self.recovery.disturbance():
            self.fleet.kill(Backfill.NAME)
        self.backfill.start()
        self.faults.backfill_kills += 1
        self._record("SIGKILL the backfill, started again")

    def kill_one(self, *, among: str = "", name: str = "", probe: bool = False) -> None:
        """SIGKILL the named process of the fleet, or a random one whose name starts with `among`,
        and start it again (`probe`: a worker killed for a measurement after the drain)."""
        name = name or self.rng.choice([n for n in sorted(self.fleet.specs) if n.startswith(among)])
        self.fleet.kill(name)
        measured = False
        if name.startswith("worker"):
            measured = self.recovery.worker_killed(probe=probe)
            self.faults.worker_kills += 1
        self.fleet.start(name)
        self.faults.kills += 1
        self._record(f"SIGKILL {name}, started again" + (" (its recovery measured)" if measured else ""))

    def _loop(self) -> None:
        while not self.stopping.wait(self.rng.uniform(0.5, 1.5) * self.scale.kill_interval):
            share = self.orders_done / self.scale.orders
            self.backfill.revive()
            if self.recovery.measuring():
                self.kill_one(among="relay")  # a restart now would measure the restart
            elif self.faults.broker_restarts == 0 and share >= self.broker_at:
                self.restart_broker()
            elif self.restart_pg and self.faults.postgres_restarts == 0 and share >= self.postgres_at:
                self.restart_postgres()
            else:
                self.kill_one()
        connection.close()  # this thread's: the scratch database is dropped once the run ends

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        """Stop the loop; cause the restarts that the traffic ended too soon for."""
        self.stopping.set()
        self.thread.join(timeout=240)
        self.recovery.wait()
        if self.faults.broker_restarts == 0:
            self.restart_broker()
        if self.restart_pg and self.faults.postgres_restarts == 0:
            self.restart_postgres()


def run(scale: Scale, *, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the chaos scenario in the current database; return the figures."""
    rng = random.Random(scale.seed)  # noqa: S311 - fault timing, not secrets
    workdir = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
    try:
        broker = restartable_broker(workdir)
        broker.empty()
    except ProcessError as e:
        raise ChaosError(str(e)) from e
    first_event = max_event_id()
    try:
        with ExitStack() as stack, smtp_server(NoticeCounter()) as smtp:
            env = child_env(
                **broker.env(),
                EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                EMAIL_HOST=smtp.host,
                EMAIL_PORT=str(smtp.port),
                OUTBOX_REDELIVERY_SECONDS=str(scale.redelivery_seconds),
                OUTBOX_RELAY_POLL_SECONDS="0.5",
            )
            fleet = Fleet(env, workdir, scale)
            stack.callback(fleet.kill_all)
            fleet.start_all()
            backfill = Backfill(fleet, scale)
            monkey = Monkey(scale, rng, fleet, broker, backfill)
            monkey.start()

            def counted(n: int) -> None:
                monkey.orders_done += n
                if scale.backfill and not backfill.started and monkey.orders_done >= scale.orders / 2:
                    # The deploy: from here on the relays route to the consumer, and the backfill
                    # gives it what came before.
                    with monkey.recovery.disturbance():
                        fleet.deploy(**BACKFILL_ON)
                    stack.enter_context(override_settings(**BACKFILL_ON_SETTINGS))
                    backfill.start()
                    monkey._record("deploy: the backfilled consumer switched on, its backfill started")
                elif monkey.orders_done % 10 == 0:
                    monkey.kill_backfill_halfway()
                if progress:
                    progress(n)

            started = time.monotonic()
            try:
                made = traffic(scale, rng, counted)
            finally:
                monkey.finish()
            try:
                wait_until(_db_up, timeout=60, what="PostgreSQL to answer again", interval=0.2)
            except ProcessError as e:
                raise ChaosError(str(e)) from e
            traffic_seconds = time.monotonic() - started
            backfilled = (
                backfill.finish(scale.drain_timeout, monkey.kill_backfill_halfway) if backfill.started else False
            )
            drained = _drain(first_event, scale.drain_timeout)
            drain_seconds = time.monotonic() - monkey.faults.last_at
            probe_orders = recovery_probe(monkey, scale) if drained else 0
            drained = drained and _drain(first_event, scale.drain_timeout)
            monkey.recovery.finish()
            fleet.stop_all()
            figures = check(first_event, smtp.handler, backfilled=backfill.started)
    finally:
        with suppress(ProcessError):
            broker.stop()
    faults = monkey.faults
    (workdir / "faults.log").write_text("\n".join(sorted([*faults.log, *monkey.recovery.notes])) + "\n")
    figures.update(
        {
            "drain_seconds": round(drain_seconds, 2),
            "drained": drained,
            "orders_placed": made.get("placed", 0),
            "recovery_probe_orders": probe_orders,
            "orders_edited": made.get("edited", 0),
            "orders_cancelled": made.get("cancelled", 0),
            "transactions_rolled_back": made.get("rolled_back", 0),
            "stock_receipts": made.get("received", 0),
            "traffic_seconds": round(traffic_seconds, 2),
            "broker": broker.kind,
            "relays": scale.relays,
            "workers": scale.workers,
            "kills": faults.kills,
            "worker_kills": faults.worker_kills,
            "broker_restarts": faults.broker_restarts,
            **monkey.recovery.figures(),
            "postgres_restarts": faults.postgres_restarts,
            "backfill_finished": backfilled,
            "backfill_runs": backfill.runs,
            "backfill_kills": faults.backfill_kills,
            "logs": str(workdir),
        }
    )
    return figures


def recovery_probe(monkey: Monkey, scale: Scale, *, orders: int = 40) -> int:
    """After the drain, with no other fault: `scale.recovery_probes` times, place a burst of orders
    and SIGKILL a worker (each in turn) while their deliveries are in flight, and measure how long
    until they are all handled, on a system with no backlog but the burst (at most twice as many
    bursts as probes: one with nothing in flight measures nothing). Return how many orders it placed."""
    catalogue = catalogue_ensure(prefix=SKU_PREFIX, products=30, customers=20, opening_stock=100_000, label="chaos")
    shopper = Shopper(catalogue, random.Random(scale.seed + 1), run=_retrying)  # noqa: S311 - traffic, not secrets
    placed = 0
    for burst in range(2 * scale.recovery_probes):
        if len(monkey.recovery.probe_seconds) >= scale.recovery_probes:
            break
        for _ in range(orders):
            shopper.place()
        placed += orders
        monkey.kill_one(name=f"worker{burst % scale.workers}", probe=True)
        monkey.recovery.wait()
    return placed


def _drain(first_event: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if undone_deliveries(after=first_event) == 0:
                return True
        except DatabaseError:
            connection.close()
        time.sleep(0.5)
    return False
