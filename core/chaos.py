"""The chaos run: real relays and workers under faults, then the invariants checked.

While orders are placed (and some transactions rolled back on purpose), relays and workers are
SIGKILLed at random and started again, Redis is restarted once with its data lost, and
PostgreSQL is restarted once. Then the run waits for the pipeline to drain and checks, from the
database and from what the SMTP server received:

- lost_events: routed (event, consumer) deliveries that never got done;
- duplicate_effects: stock movements applied twice (same event and product);
- stock_mismatches: products whose stock differs from receipts minus placed lines, or from their ledger;
- duplicate_emails: notices the SMTP server received more than once (the design's one window);
- rolled_back_published: events, deliveries or e-mails of rolled-back transactions;
- version_regressions: a source's ledger applying a lower version after a higher one;
- drain_seconds: from the last fault to every delivery done.
"""

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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import Count

from core import services
from core.bench_pipeline import free_port, quiet
from core.bench_relay import child_env, manage_start, stop_children
from core.models import Customer, Order, Product

logger = logging.getLogger("core.chaos")

SKU_PREFIX = "CHAOS-"
ROLLBACK_EMAIL = "chaos-rollback@example.com"


class ChaosError(RuntimeError):
    """The run could not be carried out (a tool missing, a service that did not come back)."""


class NoticeCounter:
    """An SMTP handler counting messages per (order, notice) from the consumer's headers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.notices: Counter[tuple[str, str]] = Counter()
        self.recipients: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = envelope.content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields = dict(line.split(": ", 1) for line in head.split("\r\n") if ": " in line)
        with self.lock:
            self.notices[(fields.get("X-Order-Id", "?"), fields.get("X-Notice", "?"))] += 1
            for rcpt in envelope.rcpt_tos:
                self.recipients[rcpt] += 1
        return "250 OK"


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
    seed: int = 1


@dataclass
class Faults:
    kills: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    last_at: float = 0.0
    log: list[str] = field(default_factory=list)


# --- services under our control ---------------------------------------------------------------


class PrivateRedis:
    """A throwaway Redis without persistence, on its own port, restartable with its data lost."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise ChaosError("redis-server is not on PATH: the chaos run starts a Redis of its own.")
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(  # noqa: S603
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            check=True,
            timeout=30,
        )
        _wait(self.ping, 15, "the private Redis to start")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        import redis

        with suppress(redis.RedisError):
            redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2).shutdown(nosave=True)
        _wait(lambda: not self.ping(), 15, "the private Redis to stop")


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


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


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

    def start(self, name: str) -> None:
        self.generation[name] += 1
        log = self.logs / f"{name}.{self.generation[name]}.log"
        self.running[name] = manage_start(self.specs[name], env=self.env, log=log)

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started, as a crashed machine would."""
        with suppress(ProcessLookupError):
            os.killpg(self.running[name].pid, signal.SIGKILL)
        self.running[name].wait(timeout=10)

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
    pass


def traffic(scale: Scale, rng: random.Random, progress: Callable[[int], None] | None) -> dict[str, int]:
    skus = [f"{SKU_PREFIX}{i:03d}" for i in range(1, 31)]
    existing = set(Product.objects.filter(sku__in=skus).values_list("sku", flat=True))
    for sku in skus:
        if sku not in existing:
            services.product_create(sku=sku, name=f"Chaos {sku}", price=Decimal("5.00"))
            services.stock_receive(sku=sku, quantity=100_000, note="chaos: opening stock")
    customers = [
        Customer.objects.filter(email=f"chaos{i}@example.com").first()
        or services.customer_create(name=f"Chaos {i}", email=f"chaos{i}@example.com")
        for i in range(20)
    ]
    doomed = Customer.objects.filter(email=ROLLBACK_EMAIL).first() or services.customer_create(
        name="Rolled back", email=ROLLBACK_EMAIL
    )
    counts: Counter[str] = Counter()
    placed: list[int] = []
    for n in range(1, scale.orders + 1):
        lines = [services.LineRequest(sku=s, quantity=rng.randint(1, 3)) for s in rng.sample(skus, rng.randint(1, 4))]
        if scale.rollback_every and n % scale.rollback_every == 0:

            def rolled_back(lines: list[services.LineRequest] = lines) -> None:
                try:
                    with transaction.atomic():
                        services.order_create(customer=doomed, lines=lines, place=True)
                        raise Rollback
                except Rollback:
                    pass

            _retrying(rolled_back)
            counts["rolled_back"] += 1
        else:
            customer = rng.choice(customers)

            def place(customer: Customer = customer, lines: list[services.LineRequest] = lines) -> Order:
                return services.order_create(customer=customer, lines=lines, place=True)

            order = _retrying(place)
            placed.append(order.pk)
            counts["placed"] += 1
        if placed and rng.random() < 0.08:
            order_id = placed.pop(rng.randrange(len(placed)))

            def cancel(order_id: int = order_id) -> None:
                order = Order.objects.get(pk=order_id)
                if order.status == Order.Status.PLACED:
                    services.order_set_status(order=order, status=Order.Status.CANCELLED)

            _retrying(cancel)
            counts["cancelled"] += 1
        if rng.random() < 0.05:
            _retrying(lambda: services.stock_receive(sku=rng.choice(skus), quantity=rng.randint(1, 20)))
            counts["received"] += 1
        if progress:
            progress(1)
    return dict(counts)


# --- the run ------------------------------------------------------------------------------------


@contextmanager
def notice_server() -> Iterator[tuple[str, int, NoticeCounter]]:
    counter = NoticeCounter()
    port = free_port()
    controller = Controller(counter, hostname="127.0.0.1", port=port)
    with quiet("mail.log"):
        controller.start()
        try:
            yield "127.0.0.1", port, counter
        finally:
            controller.stop()


def run(scale: Scale, *, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the chaos scenario in the current database; return the figures."""
    rng = random.Random(scale.seed)  # noqa: S311 - fault timing, not secrets
    restart_pg = postgres_restart_command() if scale.restart_postgres else None
    workdir = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
    redis_server = PrivateRedis(workdir)
    redis_server.start()
    faults = Faults()
    first_event = _max_event_id()
    try:
        with ExitStack() as stack, notice_server() as (host, port, counter):
            env = child_env(
                redis_url=redis_server.url,
                EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                EMAIL_HOST=host,
                EMAIL_PORT=str(port),
                OUTBOX_REDELIVERY_SECONDS=str(scale.redelivery_seconds),
                OUTBOX_RELAY_POLL_SECONDS="0.5",
            )
            fleet = Fleet(env, workdir, scale)
            stack.callback(fleet.kill_all)
            fleet.start_all()
            stop = threading.Event()
            plan = {"redis_at": rng.uniform(0.25, 0.4), "postgres_at": rng.uniform(0.6, 0.75)}
            done_orders = [0]

            def chaos_monkey() -> None:
                while not stop.wait(rng.uniform(0.5, 1.5) * scale.kill_interval):
                    share = done_orders[0] / scale.orders
                    if faults.redis_restarts == 0 and share >= plan["redis_at"]:
                        redis_server.stop()
                        redis_server.start()
                        faults.redis_restarts += 1
                        faults.log.append(f"{time.monotonic():.1f} redis restarted (data lost)")
                    elif restart_pg and faults.postgres_restarts == 0 and share >= plan["postgres_at"]:
                        subprocess.run(restart_pg, check=True, timeout=120, capture_output=True)  # noqa: S603
                        faults.postgres_restarts += 1
                        faults.log.append(f"{time.monotonic():.1f} postgres restarted")
                    else:
                        name = rng.choice(sorted(fleet.specs))
                        fleet.kill(name)
                        fleet.start(name)
                        faults.kills += 1
                        faults.log.append(f"{time.monotonic():.1f} SIGKILL {name}")
                    faults.last_at = time.monotonic()

            monkey = threading.Thread(target=chaos_monkey, name="chaos-monkey", daemon=True)
            monkey.start()

            def counted(n: int) -> None:
                done_orders[0] += n
                if progress:
                    progress(n)

            started = time.monotonic()
            try:
                made = traffic(scale, rng, counted)
            finally:
                stop.set()
                monkey.join(timeout=180)
            # Every fault happens during the traffic; the missing ones happen now.
            if faults.redis_restarts == 0:
                redis_server.stop()
                redis_server.start()
                faults.redis_restarts += 1
                faults.last_at = time.monotonic()
            if restart_pg and faults.postgres_restarts == 0:
                subprocess.run(restart_pg, check=True, timeout=120, capture_output=True)  # noqa: S603
                faults.postgres_restarts += 1
                faults.last_at = time.monotonic()
            _wait(_db_up, 60, "PostgreSQL to answer again")
            traffic_seconds = time.monotonic() - started
            drained = _drain(first_event, scale.drain_timeout)
            drain_seconds = time.monotonic() - faults.last_at
            fleet.stop_all()
            figures = check(first_event, counter)
    finally:
        with suppress(ChaosError):
            redis_server.stop()
    figures.update(
        {
            "drain_seconds": round(drain_seconds, 2),
            "drained": drained,
            "orders_placed": made.get("placed", 0),
            "orders_cancelled": made.get("cancelled", 0),
            "transactions_rolled_back": made.get("rolled_back", 0),
            "stock_receipts": made.get("received", 0),
            "traffic_seconds": round(traffic_seconds, 2),
            "kills": faults.kills,
            "redis_restarts": faults.redis_restarts,
            "postgres_restarts": faults.postgres_restarts,
            "logs": str(workdir),
        }
    )
    return figures


def _max_event_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM outbox_event")
        return int(cursor.fetchone()[0])


def _undone(first_event: int) -> int:
    from outbox.models import Event
    from outbox.routing import consumers_for

    types = Counter(dict(Event.objects.filter(id__gt=first_event).values_list("event_type").annotate(Count("id"))))
    routed = sum(n * len(consumers_for(t)) for t, n in types.items())
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_delivery WHERE event_id > %s AND status = 'done'", [first_event])
        return routed - int(cursor.fetchone()[0])


def _drain(first_event: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _undone(first_event) == 0:
                return True
        except DatabaseError:
            connection.close()
        time.sleep(0.5)
    return False


_OVER_APPLIED = """
WITH wanted AS (
    SELECT 'order:' || o.id AS source, l.product_id, -sum(l.quantity) AS quantity
    FROM core_order o JOIN core_orderline l ON l.order_id = o.id
    WHERE o.status IN ('placed', 'fulfilled') GROUP BY 1, 2
), applied AS (
    SELECT source, product_id, sum(quantity) AS quantity FROM inventory_movement
    WHERE source LIKE 'order:%%' GROUP BY 1, 2
)
SELECT count(*) FROM applied a FULL JOIN wanted w ON w.source = a.source AND w.product_id = a.product_id
WHERE coalesce(a.quantity, 0) <> coalesce(w.quantity, 0)
"""

_TWICE = """
SELECT count(*) FROM (SELECT 1 FROM inventory_movement GROUP BY event_id, product_id HAVING count(*) > 1) t
"""

_REGRESSIONS = """
SELECT count(*) FROM (
    SELECT version < lag(version) OVER (PARTITION BY source ORDER BY id) AS back FROM inventory_movement
) t WHERE back
"""

_STOCK = """
SELECT p.sku, p.stock,
       coalesce((SELECT sum(quantity) FROM core_stockreceipt r WHERE r.product_id = p.id), 0)
       - coalesce((SELECT sum(l.quantity) FROM core_orderline l JOIN core_order o ON o.id = l.order_id
                   WHERE l.product_id = p.id AND o.status IN ('placed', 'fulfilled')), 0) AS expected,
       coalesce((SELECT sum(quantity) FROM inventory_movement m WHERE m.product_id = p.id), 0) AS ledger
FROM core_product p WHERE p.sku LIKE %s
"""


def check(first_event: int, counter: NoticeCounter) -> dict[str, Any]:
    """Check the invariants over everything written since `first_event`."""
    from outbox.models import Delivery, Event

    doomed = Customer.objects.filter(email=ROLLBACK_EMAIL).values_list("id", flat=True).first()
    with connection.cursor() as cursor:
        cursor.execute(_TWICE)
        twice = int(cursor.fetchone()[0])
        cursor.execute(_OVER_APPLIED)
        misapplied = int(cursor.fetchone()[0])
        cursor.execute(_REGRESSIONS)
        regressions = int(cursor.fetchone()[0])
        cursor.execute(_STOCK, [SKU_PREFIX + "%"])
        stock_rows = cursor.fetchall()
    stock_mismatches = [
        {"sku": sku, "stock": stock, "expected": expected, "ledger": ledger}
        for sku, stock, expected, ledger in stock_rows
        if not stock == expected == ledger
    ]
    rolled_back = Event.objects.filter(
        id__gt=first_event, aggregate_type="order", payload__state__customer_id=doomed
    ).count()
    with counter.lock:
        duplicate_emails = sum(n - 1 for n in counter.notices.values() if n > 1)
        emails = sum(counter.notices.values())
        rolled_back += counter.recipients.get(ROLLBACK_EMAIL, 0)
    dead = Delivery.objects.filter(event_id__gt=first_event, status="dead").count()
    return {
        "lost_events": _undone(first_event),
        "duplicate_effects": twice + misapplied,
        "duplicate_emails": duplicate_emails,
        "stock_mismatches": len(stock_mismatches),
        "rolled_back_published": rolled_back,
        "version_regressions": regressions,
        "dead_deliveries": dead,
        "emails_received": emails,
        "events": Event.objects.filter(id__gt=first_event).count(),
        "stock_mismatch_examples": stock_mismatches[:5],
    }
