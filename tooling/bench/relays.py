"""The relays figure for `outbox_bench`: events per second as 1, 2 and 4 relay processes drain one
shared backlog (`relay_events_per_s_by_relays`).

Each relay is `manage.py outbox_relay`, a process of its own, on the broker BROKER_URL selects (the
bench's: tooling/bench/pipeline.py `bench_broker`). The events are routed to the three bench
consumers only (tooling/bench/consumers.py, which the relays declare through tooling/consumers.py),
whose messages no worker reads; the broker is emptied before and after each drain.
"""

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from django.db import connection

from tooling.bench.consumers import BENCH_CONSUMERS
from tooling.bench.pipeline import STARTUP_SECONDS, PipelineError, bench_broker, log_tail
from tooling.bench.relay import backlog_create, bench_routes, drain_prepare
from tooling.brokers import ToolBroker
from tooling.database import max_event_id
from tooling.processes import child_env, manage_start, stop_children

RELAY_COUNTS = (1, 2, 4)
# The clock's resolution: 10 ms, in drains of seconds. Each look is one probe of outbox_pending for a row.
POLL_SECONDS = 0.01

# What a relay's listener session last ran, in pg_stat_activity, while it waits for notifications.
_LISTENING = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN outbox_event'
"""
_STOPPED = re.compile(r"Relay (\S+) stopped: (\d+) events")
_NOT_DECLARED = (
    " (a relay that does not know the bench consumers refuses OUTBOX_CONSUMERS naming them, outbox.E005: "
    "tooling/consumers.py must import tooling.bench.consumers)"
)


def _pending() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM outbox_pending)")
        return bool(cursor.fetchone()[0])


def _listening() -> int:
    with connection.cursor() as cursor:
        cursor.execute(_LISTENING)
        return int(cursor.fetchone()[0])


def _check_alive(children: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path], when: str) -> None:
    for name, child in children.items():
        if child.poll() is not None:
            hint = _NOT_DECLARED if "outbox.E005" in log_tail(logs[name], 40) else ""
            raise PipelineError(
                f"Relay {name} exited with code {child.returncode} {when}{hint}:\n{log_tail(logs[name])}"
            )


def _relays_ready(children: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    """Wait until every relay logged that it started and waits, idle, on its LISTEN session."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        _check_alive(children, logs, "on start")
        started = all(f"Relay {name} started" in logs[name].read_text(errors="replace") for name in children)
        if started and _listening() >= len(children):
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {name}\n{log_tail(log)}" for name, log in logs.items())
            raise PipelineError(f"The relays did not start within {STARTUP_SECONDS:.0f} s:\n{tails}")
        time.sleep(0.05)


def _delivery_counts(*, after: int) -> dict[tuple[str, str], int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT consumer, status, count(*) FROM outbox_delivery WHERE event_id > %s GROUP BY consumer, status",
            [after],
        )
        return {(consumer, status): count for consumer, status, count in cursor.fetchall()}


def relays_drain(*, relays: int, backlog: int, batch_size: int, broker: ToolBroker, workdir: Path) -> dict[str, Any]:
    """Drain a `backlog`-event backlog with `relays` relay processes; return its events per
    second, its seconds, and the events each relay published.

    The relays start first, on an empty backlog; once each has logged "Relay <name> started" and
    waits on its LISTEN session (pg_stat_activity), the whole backlog is committed at once
    (`backlog_create`, one statement), and the clock runs from that commit until outbox_pending is
    empty, the last batch marked published (polled every 10 ms). So no relay gets a head start
    on a backlog that others, still starting, do not see yet, and Python's start-up, the relays'
    first round of housekeeping (sweep, heartbeat, event-log checkpoint) and the writing of the
    backlog are not timed; the wake-up on the insert's notification is, for every relay alike.
    (A clock started at the last "started" line, over a backlog written before, would give the
    first relays up a head start; one started at the first claim would need its time, which
    outbox_pending does not keep.)
    Unlike the in-process figure, the drain shares the disk with the write-back of the backlog
    just written (a checkpoint in between would have to come after the commit, with the relays
    already draining); drain_prepare() vacuums and checkpoints what came before.
    """
    names = [f"bench{i}" for i in range(1, relays + 1)]
    logs = {name: workdir / f"relays-{relays}-{name}.log" for name in names}
    env = child_env(
        **broker.env(),
        # Every event to the bench consumers, and to no other (the same routes as the in-process figure).
        OUTBOX_CONSUMERS=json.dumps(bench_routes()),
        # No sweeping: nothing consumes the bench's messages, and redelivering them is not measured here.
        OUTBOX_REDELIVERY_SECONDS=str(10**9),
        PYTHONUNBUFFERED="1",
    )
    drain_prepare()
    after = max_event_id()
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            children[name] = manage_start(
                ["outbox_relay", "--name", name, "--batch-size", str(batch_size)], env=env, log=logs[name]
            )
        _relays_ready(children, logs)
        backlog_create(n=backlog, prefix=f"relays-{relays}-")
        start = time.perf_counter()
        deadline = start + max(120.0, backlog / 1000)
        while _pending():
            _check_alive(children, logs, "while draining")
            if time.perf_counter() > deadline:
                raise PipelineError(f"{relays} relays did not drain {backlog} events within {deadline - start:.0f} s.")
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - start
    finally:
        stop_children(list(children.values()))
        broker.empty()
    counts = _delivery_counts(after=after)
    wanted = {(consumer, "published"): backlog for consumer in BENCH_CONSUMERS}
    if counts != wanted:
        raise PipelineError(f"{relays} relays left deliveries {counts}; expected {wanted}.")
    # Each relay's own count, from the line it logs on stopping.
    published = {
        match[1]: int(match[2]) for log in logs.values() for match in _STOPPED.finditer(log.read_text(errors="replace"))
    }
    return {
        "events_per_s": round(backlog / seconds),
        "seconds": round(seconds, 3),
        "per_relay": [published.get(name, 0) for name in names],
    }


def relays_figures(*, backlog: int, batch_size: int) -> dict[str, Any]:
    """Measure relay_events_per_s_by_relays: one drain of `backlog` events per count of relays."""
    if connection.vendor != "postgresql":
        raise PipelineError("The relays group needs PostgreSQL (DATABASE_URL): relays claim side by side there only.")
    broker = bench_broker()
    drains: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="outbox-bench-relays-") as tmp:
        for relays in RELAY_COUNTS:
            drains[str(relays)] = relays_drain(
                relays=relays, backlog=backlog, batch_size=batch_size, broker=broker, workdir=Path(tmp)
            )
    return {
        "relay_events_per_s_by_relays": {n: drain["events_per_s"] for n, drain in drains.items()},
        "relay_drain_s_by_relays": {n: drain["seconds"] for n, drain in drains.items()},
        # The events each relay published: how evenly the relays shared the backlog.
        "relay_events_per_relay_by_relays": {n: drain["per_relay"] for n, drain in drains.items()},
    }
