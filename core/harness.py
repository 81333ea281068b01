"""Loopback tools shared by the benchmark, the traffic generator and the chaos run.

A free port, an SMTP server that counts what it receives per order notice, a Redis of one's own
that can be restarted with its data lost, and the database's count of what the pipeline has yet
to do. Nothing here talks to anything but 127.0.0.1.
"""

import logging
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from django.db import connection

from outbox.relay import routing

LOOPBACK = "127.0.0.1"


class HarnessError(RuntimeError):
    """A loopback service could not be started or stopped; the message says which and why."""


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on (aiosmtpd and Redis need an explicit one)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll `predicate` until it is true; raise HarnessError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def quiet(name: str) -> Iterator[None]:
    """Raise the logger `name` to WARNING until the block ends: its INFO lines are per message."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- SMTP ---------------------------------------------------------------------------------------


class NoticeCounter:
    """An aiosmtpd handler that accepts every message and counts it, per (order, notice) from the
    e-mail consumer's X-Order-Id and X-Notice headers, and per recipient."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.notices: Counter[tuple[str, str]] = Counter()
        self.recipients: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = envelope.content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields = dict(line.split(": ", 1) for line in head.split("\r\n") if ": " in line)
        with self.lock:
            self.received += 1
            self.notices[(fields.get("X-Order-Id", "?"), fields.get("X-Notice", "?"))] += 1
            for rcpt in envelope.rcpt_tos:
                self.recipients[rcpt] += 1
        return "250 OK"

    def duplicates(self) -> int:
        """Return how many notices arrived more than once, counting each extra copy."""
        with self.lock:
            return sum(n - 1 for n in self.notices.values() if n > 1)


@dataclass(frozen=True)
class SmtpServer:
    """Where the in-process SMTP server listens, and its counter."""

    host: str
    port: int
    counter: NoticeCounter


@contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    """Run a counting SMTP server on a free loopback port, in a thread, until the block ends."""
    server = SmtpServer(host=LOOPBACK, port=free_port(), counter=NoticeCounter())
    controller = Controller(server.counter, hostname=server.host, port=server.port)
    # aiosmtpd logs every session at INFO: thousands of lines on the console otherwise.
    with quiet("mail.log"):
        controller.start()
        try:
            yield server
        finally:
            controller.stop()


# --- Redis --------------------------------------------------------------------------------------


class LocalRedis:
    """A throwaway Redis without persistence on a loopback port, restartable with its data lost."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise HarnessError("redis-server is not on PATH (Debian: apt-get install redis-server).")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.url = f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        subprocess.run(  # noqa: S603 - our own binary, fixed arguments
            [
                self.binary,
                *("--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"),
                *("--daemonize", "yes", "--dir", str(self.workdir)),
                *("--logfile", str(self.workdir / f"redis-{self.port}.log")),
            ],
            check=True,
            timeout=30,
        )
        wait_for(self.ping, timeout=15, what=f"Redis on port {self.port} to start")

    def ping(self) -> bool:
        """Whether the server answers."""
        import redis

        try:
            return bool(redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server without saving: its data is lost, as in a crash."""
        import redis

        # SHUTDOWN closes the connection it arrived on, which the client reports as an error.
        with suppress(redis.RedisError):
            redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2).shutdown(nosave=True)
        wait_for(lambda: not self.ping(), timeout=15, what=f"Redis on port {self.port} to stop")

    def restart(self) -> None:
        """Stop the server (its data lost) and start it again, empty."""
        self.stop()
        self.start()


# --- the database's view of the pipeline --------------------------------------------------------


def max_event_id() -> int:
    """Return the id of the latest event (0 when there is none)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM outbox_event")
        return int(cursor.fetchone()[0])


def routed_deliveries(*, after: int) -> tuple[int, dict[str, int]]:
    """Return the number of events after id `after` and, per consumer, the deliveries routed to it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT type, count(*) FROM outbox_event WHERE id > %s GROUP BY type", [after])
        rows = cursor.fetchall()
    expected: dict[str, int] = {}
    for event_type, count in rows:
        for consumer in routing.consumers_for(event_type):
            expected[consumer] = expected.get(consumer, 0) + count
    return sum(count for _, count in rows), expected


def undone_deliveries(*, after: int) -> int:
    """Return how many routed deliveries of the events after id `after` are not done (missing ones included)."""
    _, expected = routed_deliveries(after=after)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM outbox_delivery WHERE event_id > %s AND status = 'done'", [after])
        return sum(expected.values()) - int(cursor.fetchone()[0])
