"""Periodic jobs run by the relay loop: once per period across relays, failures recorded, the sales summary."""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from core import services
from core.models import Customer, Product
from core.reports import sales_summary_send
from outbox.models import JobRun, Pending, RelayHeartbeat
from outbox.ops.jobs import JobRunner, jobs_configured
from outbox.relay.loop import Relay
from tests.outbox.helpers import committed_count
from tests.processes import manage_run, processes
from tests.smtp import smtp_server
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
            services.customer_create(name="After", email="after@example.com")
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


# --- the daily sales summary ------------------------------------------------------------------


@pytest.fixture
def staff(db: None) -> list[User]:
    """Two active staff users with addresses, and users who must get nothing."""
    User.objects.create_user("inactive", "inactive@example.com", is_staff=True, is_active=False)
    User.objects.create_user("customer", "customer@example.com")
    User.objects.create_user("noaddress", "", is_staff=True)
    return [
        User.objects.create_user("bob", "bob@example.com", is_staff=True),
        User.objects.create_superuser("alice", "alice@example.com", "pw"),
    ]


def line(sku: str, quantity: int) -> services.LineRequest:
    return services.LineRequest(sku=sku, quantity=quantity)


@pytest.mark.django_db
def test_sales_summary_over_smtp_lists_the_days_orders_revenue_cancellations_and_top_products(
    customer: Customer, products: list[Product], staff: list[User]
) -> None:
    """Placed orders (a cancelled one among them), their revenue, the cancellation and the best
    sellers, e-mailed to each active staff user with an address, and to nobody else."""
    services.order_create(customer=customer, lines=[line("KB-001", 2), line("MS-002", 1)], place=True)
    services.order_create(customer=customer, lines=[line("MS-002", 3)], place=True)
    cancelled = services.order_create(customer=customer, lines=[line("MN-003", 1)], place=True)
    services.order_set_status(order=cancelled, status="cancelled")
    services.order_create(customer=customer, lines=[line("MN-003", 5)])  # a draft: not a sale

    with (
        smtp_server() as mailbox,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST=mailbox.host,
            EMAIL_PORT=mailbox.port,
        ),
    ):
        outcome = sales_summary_send(day=timezone.localdate())

    assert outcome == f"sent the summary for {timezone.localdate()} to 2 staff"
    assert sorted(str(m["To"]) for m in mailbox.messages) == ["alice@example.com", "bob@example.com"]
    message = mailbox.messages[0]
    assert str(message["Subject"]) == f"Sales summary for {timezone.localdate():%A %d %B %Y}"
    body = message.get_content().replace("\r\n", "\n")
    # 2 x 89.00 + 29.50 + 3 x 29.50 + 249.00
    revenue = Decimal("178.00") + Decimal("29.50") + Decimal("88.50") + Decimal("249.00")
    assert "Orders placed:  3\n" in body
    assert f"Revenue:        {revenue:,.2f}\n" in body
    assert "Cancellations:  1 (249.00)\n" in body
    top = body.split("Top products (units sold):\n", 1)[1].splitlines()[:3]
    assert top == [
        "  MS-002  Mouse: 4 units, 118.00",
        "  KB-001  Keyboard: 2 units, 178.00",
        "  MN-003  Monitor: 1 units, 249.00",
    ]


@pytest.mark.django_db
def test_sales_summary_of_a_day_without_orders_says_so(staff: list[User]) -> None:
    """Yesterday (the default) had no orders: zeros, and no products."""
    with (
        smtp_server() as mailbox,
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST=mailbox.host,
            EMAIL_PORT=mailbox.port,
        ),
    ):
        sales_summary_send()
    body = mailbox.messages[0].get_content().replace("\r\n", "\n")
    assert f"Sales on {timezone.localdate() - timedelta(days=1)}" in body
    assert "Orders placed:  0\n" in body
    assert "No products sold." in body


@pytest.mark.django_db(transaction=True)
def test_two_relay_processes_send_the_daily_summary_once(tmp_path: Path, staff: list[User]) -> None:
    """Two real relays with the sales summary due: one JobRun, one e-mail per staff user."""
    with smtp_server() as mailbox:
        env = {
            "SALES_SUMMARY_AT": "00:00",
            "EMAIL_HOST": mailbox.host,
            "EMAIL_PORT": str(mailbox.port),
            "OUTBOX_RELAY_POLL_SECONDS": "0.2",
            "OUTBOX_HEARTBEAT_SECONDS": "0.2",
        }
        with processes(tmp_path, **env) as procs:
            relays = [procs.relay("one"), procs.relay("two")]
            run = wait_until(
                lambda: JobRun.objects.filter(job="sales_summary", finished_at__isnull=False).first(),
                timeout=60,
                what="the summary's run",
            )
            # Both relays have looked at the schedule since: each has gone round its loop (and beaten,
            # every 0.2 s) a second after the run ended.
            after = run.finished_at + timedelta(seconds=1)
            wait_until(
                lambda: RelayHeartbeat.objects.filter(beat_at__gt=after).count() == 2,
                timeout=60,
                what="both relays to go round their loop again",
            )
            assert [r.stop() for r in relays] == [0, 0], [r.output()[-2000:] for r in relays]
        assert run.outcome == f"ok: sent the summary for {timezone.localdate() - timedelta(days=1)} to 2 staff"
        assert JobRun.objects.count() == 1
        assert sorted(str(m["To"]) for m in mailbox.messages) == ["alice@example.com", "bob@example.com"]
