"""Real processes for fault tests: relays, workers and a private Redis, all on loopback.

Every wait is bounded in time (tooling.processes.wait_until); every process is stopped when its test ends.
"""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import redis
from django.conf import settings
from django.db import connection

from tooling.processes import LocalRedis

if TYPE_CHECKING:
    from outbox.models import JobRun

REPO = Path(__file__).resolve().parents[1]


def manage_run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `manage.py <args>` to its end in a fresh process, its output captured as text.

    `env` is the child's whole environment; by default this one's, with the test settings.
    The exit code is the caller's to check.
    """
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test"} if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def database_url() -> str:
    """The test database's URL, for processes started by a test."""
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _descendants(pid: int) -> list[int]:
    """Return the ids of every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (Dramatiq's worker processes among them)."""
    for target in [pid, *_descendants(pid)]:
        with suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    log: IO[bytes] = field(repr=False)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL the process and every process it started, as a machine failure would."""
        kill_tree(self.popen.pid)
        self.popen.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `timeout`)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


@dataclass
class Processes:
    """Starts manage.py commands against the test database; stops them all at the end."""

    tmp: Path
    env: dict[str, str]
    started: list[Process] = field(default_factory=list)

    def manage(self, *args: str, name: str, env: dict[str, str] | None = None) -> Process:
        log_path = self.tmp / f"{name}.log"
        log = log_path.open("wb")
        full = [sys.executable, "manage.py", *args]
        popen = subprocess.Popen(full, cwd=REPO, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        process = Process(full, log_path, popen, log)
        self.started.append(process)
        return process

    def relay(self, name: str, *extra: str, env: dict[str, str] | None = None) -> Process:
        return self.manage("outbox_relay", "--name", name, *extra, name=name, env=env)

    def worker(self, name: str = "worker", env: dict[str, str] | None = None) -> Process:
        return self.manage("rundramatiq", "--processes", "1", "--threads", "2", name=name, env=env)

    def stop_all(self) -> None:
        for process in self.started:
            kill_tree(process.popen.pid)
            process.stop(signal.SIGKILL, timeout=10)
            process.log.close()


@contextmanager
def processes(tmp: Path, **env: str) -> Iterator[Processes]:
    """Yield a process starter whose children use the test database and the given settings."""
    base = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.test",
        "DATABASE_URL": database_url(),
        "PYTHONUNBUFFERED": "1",
        "dramatiq_worker_timeout": "100",
        **env,
    }
    started = Processes(tmp, base)
    try:
        yield started
    finally:
        started.stop_all()


@contextmanager
def private_redis(tmp: Path) -> Iterator[LocalRedis]:
    """Run a throwaway Redis on a free loopback port until the block ends; `.stop()` and `.start()` it at will."""
    server = LocalRedis(tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def queued(queue: str) -> list[int]:
    """Return the event ids of the messages waiting on a Dramatiq queue in the tests' Redis, sorted."""
    ids: list[int] = []
    for raw in redis.Redis.from_url(settings.REDIS_URL).hvals(f"dramatiq:{queue}.msgs"):
        ids += json.loads(raw)["args"][0]
    return sorted(ids)


def app_role_env(app_role: str, *, smtp_host: str, smtp_port: int) -> dict[str, str]:
    """The environment of a relay and a worker that connect as the app role and mail to loopback."""
    return {
        "DATABASE_URL": database_url().replace("postgres://postgres@", f"postgres://{app_role}@"),
        "REDIS_URL": settings.REDIS_URL,
        "OUTBOX_RELAY_POLL_SECONDS": "0.2",
        "OUTBOX_CHECKPOINT_SECONDS": "0.5",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": smtp_host,
        "EMAIL_PORT": str(smtp_port),
    }


def two_relays_run_once(tmp: Path, job: str, **env: str) -> "JobRun":
    """Run two real relays with `job` due until it has run and both went round their loop again;
    return its JobRun (the relays are stopped, and must have exited 0)."""
    from datetime import timedelta

    from outbox.models import JobRun, RelayHeartbeat
    from tooling.processes import wait_until

    env = {"OUTBOX_RELAY_POLL_SECONDS": "0.2", "OUTBOX_HEARTBEAT_SECONDS": "0.2", **env}
    with processes(tmp, **env) as procs:
        relays = [procs.relay("one"), procs.relay("two")]
        run: JobRun = wait_until(
            lambda: JobRun.objects.filter(job=job, finished_at__isnull=False).first(),
            timeout=60,
            what=f"the {job} job's run",
        )
        # Both relays have looked at the schedule since: each has gone round its loop (and beaten,
        # every 0.2 s) a second after the run ended.
        assert run.finished_at is not None
        after = run.finished_at + timedelta(seconds=1)
        wait_until(
            lambda: RelayHeartbeat.objects.filter(beat_at__gt=after).count() == 2,
            timeout=60,
            what="both relays to go round their loop again",
        )
        assert [r.stop() for r in relays] == [0, 0], [r.output()[-2000:] for r in relays]
    return run
