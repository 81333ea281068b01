"""Loopback processes for the tools and the tests: a free port, a bounded wait, an SMTP server,
a Redis of one's own that can be restarted with its data lost, and manage.py children.

Nothing here talks to anything but 127.0.0.1. aiosmtpd is a development requirement: it is
imported when an SMTP server starts, never with this module.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import connection

LOOPBACK = "127.0.0.1"

H = TypeVar("H")


class ProcessError(RuntimeError):
    """A loopback service could not be started or stopped, or a wait timed out; the message says which."""


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on (aiosmtpd and Redis need an explicit one)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy, and return that; raise ProcessError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ProcessError(f"timed out after {timeout:.0f} s waiting for {what}")
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


@dataclass(frozen=True)
class SmtpServer(Generic[H]):
    """Where an SMTP server listens, and the aiosmtpd handler that receives its messages."""

    host: str
    port: int
    handler: H


@contextmanager
def smtp_server(handler: H) -> Iterator[SmtpServer[H]]:
    """Run an SMTP server on a free loopback port, in a thread, until the block ends; each message
    goes to `handler.handle_DATA` (aiosmtpd's handler interface)."""
    from aiosmtpd.controller import Controller  # a development requirement: only when a server starts

    server = SmtpServer(host=LOOPBACK, port=free_port(), handler=handler)
    controller = Controller(handler, hostname=server.host, port=server.port)
    # aiosmtpd logs every session at INFO: thousands of lines on the console otherwise.
    with quiet("mail.log"):
        controller.start()
        try:
            yield server
        finally:
            controller.stop()


class NoticeCounter:
    """An SMTP handler that accepts every message and counts it, per (order, notice) from the
    e-mail consumer's X-Order-Id and X-Notice headers, and per recipient."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.notices: Counter[tuple[str, str]] = Counter()
        self.recipients: Counter[str] = Counter()
        # Per order, its notices in the order they first arrived.
        self.arrivals: dict[str, list[str]] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = envelope.content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        fields = dict(line.split(": ", 1) for line in head.split("\r\n") if ": " in line)
        with self.lock:
            self.received += 1
            order, notice = fields.get("X-Order-Id", "?"), fields.get("X-Notice", "?")
            self.notices[(order, notice)] += 1
            seen = self.arrivals.setdefault(order, [])
            if notice not in seen:
                seen.append(notice)
            for rcpt in envelope.rcpt_tos:
                self.recipients[rcpt] += 1
        return "250 OK"

    def arrived_before(self, later: str, earlier: str) -> int:
        """Return how many orders' `later` notice arrived before their `earlier` one."""
        with self.lock:
            return sum(
                1
                for seen in self.arrivals.values()
                if later in seen and earlier in seen and seen.index(later) < seen.index(earlier)
            )

    def duplicates(self) -> int:
        """Return how many notices arrived more than once, counting each extra copy."""
        with self.lock:
            return sum(n - 1 for n in self.notices.values() if n > 1)


# --- Redis --------------------------------------------------------------------------------------


class LocalRedis:
    """A throwaway Redis without persistence on a loopback port, restartable with its data lost."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ProcessError("redis-server is not on PATH (Debian: apt-get install redis-server).")
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
        wait_until(self.ping, timeout=15, what=f"Redis on port {self.port} to start")

    def ping(self) -> bool:
        """Whether the server answers."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Without redis-py's default retries, which take about 4 s to report a server that is gone.
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server without saving: its data is lost, as in a crash."""
        import redis

        # SHUTDOWN closes the connection it arrived on, which the client reports as an error.
        with suppress(redis.RedisError):
            redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2).shutdown(nosave=True)
        wait_until(lambda: not self.ping(), timeout=15, what=f"Redis on port {self.port} to stop")

    def restart(self) -> None:
        """Stop the server (its data lost) and start it again, empty."""
        self.stop()
        self.start()


# --- manage.py children ---------------------------------------------------------------------------


def child_env(*, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """Return the environment of a manage.py child that uses this process's (scratch) database."""
    settings_dict = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "settings.local"),
        "DATABASE_URL": (
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST'] or '127.0.0.1'}:"
            f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
        ),
        "REDIS_URL": redis_url or settings.REDIS_URL,
        # Dramatiq's own (lower-case) name; 100 ms as in compose.yaml.
        "dramatiq_worker_timeout": os.environ.get("dramatiq_worker_timeout", "100"),  # noqa: SIM112
        **extra,
    }


def manage_start(args: list[str], *, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `manage.py <args>` in a session of its own, its output to `log` (or nowhere)."""
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]
    # A session of its own: stop_children() can then kill the worker's forked processes with it.
    if log is None:
        return subprocess.Popen(  # noqa: S603
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Ask each child to stop (SIGTERM); kill its whole session if it is not gone within 30 s."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
