"""Periodic jobs run by the relay loop: once per period across relays, failures recorded.

(The sales summary, a job of core's, is tested in tests/core/test_sales_summary.py.)"""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from outbox import testing
from outbox.models import Event, JobRun, Pending
from outbox.ops.jobs import JobRunner, jobs_configured
from outbox.relay.loop import Relay
from tests.outbox.helpers import committed_count
from tests.outbox_app.models import Item
from tests.processes import manage_run, two_relays_run_once
from tooling.processes import wait_until

CALLS: list[str] = []
CALLS_LOCK = threading.Lock()


def count_call(label: str = "counted") -> str:
    """A job: record that it ran, slowly enough for another relay to look meanwhile."""
    with CALLS_LOCK:
        CALLS.append(label)
    threading.Event().wait(0.3)
    return label


def explode() -> None:
    """A job that fails."""
    raise RuntimeError("the job's own error")


def job(callable_: str, daily_at: str = "00:00", **kwargs: object) -> dict[str, object]:
    return {"callable": callable_, "daily_at": daily_at, "kwargs": kwargs}


@pytest.fixture(autouse=True)
def no_calls() -> None:
    CALLS.clear()


# The relays here publish to Redis: empty it around each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("empty_queues")


@contextmanager
def running(*relays: Relay) -> Iterator[None]:
    """Run in-process relays on threads until the block ends."""

    def loop(relay: Relay) -> None:
        try:
            relay.run()
        finally:
            connection.close()

    threads = [threading.Thread(target=loop, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for relay in relays:
            relay.stop()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)


def today() -> str:
    return timezone.now().astimezone(UTC).date().isoformat()


@pytest.mark.django_db(transaction=True)
def test_a_job_runs_once_per_period_across_two_relays() -> None:
    """Two relays find the job due: one inserts the period's run and runs it; the other sees it
    taken and does not. The run records its runner, finish time and outcome."""
    with override_settings(OUTBOX_PERIODIC_JOBS={"count": job("tests.outbox.test_jobs.count_call")}):
        first, second = Relay(name="first", poll=0.05), Relay(name="second", poll=0.05)
        with running(first, second):
            wait_until(
                lambda: first.jobs.handled.get("count") == today() and second.jobs.handled.get("count") == today(),
                timeout=30,
                what="both relays to consider the job",
            )
            wait_until(
                lambda: JobRun.objects.filter(finished_at__isnull=False).exists(), timeout=30, what="the run to finish"
            )
    assert CALLS == ["counted"]
    [run] = JobRun.objects.all()
    assert (run.job, run.period, run.outcome) == ("count", today(), "ok: counted")
    assert run.runner in {"first", "second"}
    assert run.finished_at is not None
    assert run.finished_at >= run.started_at


@pytest.mark.django_db(transaction=True)
def test_a_job_is_due_from_its_time_of_day_and_runs_again_the_next_day() -> None:
    """Before its time nothing runs; from it, one run for the day; the next day, another."""
    day = datetime(2026, 3, 1, tzinfo=UTC)
    with override_settings(OUTBOX_PERIODIC_JOBS={"count": job("tests.outbox.test_jobs.count_call", "03:30")}):
        runner = JobRunner()
    assert runner.run_due(runner="r", now=day.replace(hour=3, minute=29)) is None
    first = runner.run_due(runner="r", now=day.replace(hour=3, minute=30))
    assert first is not None
    assert first.period == "2026-03-01"
    runner.wait()
    assert runner.run_due(runner="r", now=day.replace(hour=23)) is None
    second = runner.run_due(runner="r", now=day + timedelta(days=1, hours=4))
    assert second is not None
    assert second.period == "2026-03-02"
    runner.wait()
    assert CALLS == ["counted", "counted"]
    assert sorted(JobRun.objects.values_list("period", flat=True)) == ["2026-03-01", "2026-03-02"]


@pytest.mark.django_db(transaction=True)
def test_a_failing_job_is_recorded_and_the_relay_keeps_relaying() -> None:
    """The job raises: the run records the error as its outcome; the relay goes on publishing."""
    with override_settings(OUTBOX_PERIODIC_JOBS={"boom": job("tests.outbox.test_jobs.explode")}):
        relay = Relay(name="steady", poll=0.05)
        with running(relay):
            wait_until(
                lambda: JobRun.objects.filter(job="boom", finished_at__isnull=False).exists(),
                timeout=30,
                what="the failed run to be recorded",
            )
            Item.objects.create(sku="AFTER-1", name="After", price=1)
            wait_until(lambda: committed_count("outbox_pending") == 0, timeout=30, what="the relay to publish")
    run = JobRun.objects.get(job="boom")
    assert run.outcome == "failed: RuntimeError: the job's own error"
    assert relay.stats.published == 1
    assert not Pending.objects.exists()


def test_a_job_with_a_bad_time_of_day_is_refused_when_the_relay_is_created() -> None:
    """A misconfigured schedule stops the relay at start, naming the setting, not at 3 in the morning."""
    with (
        override_settings(OUTBOX_PERIODIC_JOBS={"purge": job("outbox.eventlog.purge.purge_settled", "3am")}),
        pytest.raises(ImproperlyConfigured, match=r"OUTBOX_PERIODIC_JOBS\['purge'\]\['daily_at'\]"),
    ):
        Relay()


def test_the_retention_purge_is_registered_only_with_a_retention_period() -> None:
    """OUTBOX_RETENTION_DAYS adds the purge, by dotted path, with its age and batch size."""
    with override_settings(OUTBOX_PERIODIC_JOBS={}):
        assert jobs_configured() == []
    # settings/base.py reads the environment once; what it builds from OUTBOX_RETENTION_DAYS=30:
    script = (
        "from django.conf import settings; j = settings.OUTBOX_PERIODIC_JOBS; "
        "print(sorted(j)); print(j['retention_purge'])"
    )
    env = {
        "OUTBOX_RETENTION_DAYS": "30",
        "OUTBOX_PURGE_BATCH_SIZE": "200",
        "SALES_SUMMARY_AT": "06:00",
        "DJANGO_SETTINGS_MODULE": "settings.test",
    }
    result = manage_run("shell", "-c", script, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert "['retention_purge', 'sales_summary']" in result.stdout
    assert "'callable': 'outbox.eventlog.purge.purge_settled'" in result.stdout
    assert "'older_than': datetime.timedelta(days=30), 'batch_size': 200" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_two_relay_processes_run_the_daily_purge_once(tmp_path: Path) -> None:
    """Two real relays with the retention purge due: one JobRun, which purged the settled events."""
    for i in range(3):
        Item.objects.create(sku=f"PURGE-{i}", name=f"P{i}", price=1)
    ids = list(Event.objects.order_by("id").values_list("id", flat=True))
    Pending.objects.filter(event_id__in=ids).delete()  # as if relayed
    testing.deliver("journal", ids)  # handled and sealed: settled
    run = two_relays_run_once(tmp_path, "retention_purge", OUTBOX_RETENTION_DAYS="0", OUTBOX_RETENTION_PURGE_AT="00:00")
    assert run.outcome.startswith("ok: PurgeSummary("), run.outcome
    assert "events=3," in run.outcome
    assert run.runner in {"one", "two"}
    assert JobRun.objects.count() == 1
    assert not Event.objects.filter(id__in=ids).exists()
