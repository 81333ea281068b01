"""Browser tests: Debian's headless Chromium, driven by Playwright, against the running system.

The system is real processes on loopback, on the pytest test database: `manage.py runserver`, an
`outbox_relay` and a `rundramatiq` worker, with Redis database 12 and an SMTP server (aiosmtpd)
in this process. Every step a test names is screenshotted to
`test-artifacts/browser/<test>/<nn-step>.png`; a failing test adds `failure.png`, and the
processes' logs are copied beside the screenshots.
"""

import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.db import connection, connections
from playwright.sync_api import Page, expect, sync_playwright

from tests.processes import REPO, Process, processes
from tests.smtp import Mailbox, smtp_server
from tooling.processes import free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")
REDIS_URL = "redis://127.0.0.1:6379/12"
ARTIFACTS = REPO / "test-artifacts" / "browser"
SERVER_START_TIMEOUT = 30.0  # seconds for runserver to answer its login page
ACTION_TIMEOUT_MS = 10_000  # for each click, fill and expectation in the browser

PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report: pytest.TestReport = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(PHASE_REPORTS, {})
    return any(report.failed for report in reports.values())


@dataclass
class System:
    """The running system: where the admin answers, its processes, and the mailbox it sends to."""

    base_url: str
    web: Process
    relay: Process
    worker: Process
    mail: Mailbox


@dataclass
class Screenshots:
    """Numbered screenshots of a test's steps, in its own artifact folder."""

    folder: Path
    taken: int = 0

    def __call__(self, page: Page, step: str) -> None:
        self.taken += 1
        name = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
        page.screenshot(path=self.folder / f"{self.taken:02d}-{name}.png", full_page=True)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's artifact folder, emptied of an earlier run's files."""
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def shot(artifacts: Path) -> Screenshots:
    return Screenshots(artifacts)


@pytest.fixture
def empty_redis() -> Iterator[None]:
    """Redis database 12, the browser tests' own, emptied before and after each test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture
def mail() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http to 127.0.0.1 only
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _other_sessions() -> list[tuple[int, str, str]]:
    """The sessions on the test database other than this one: process id, state, query."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, left(query, 80) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        return list(cursor.fetchall())


@pytest.fixture
def system(
    transactional_db: None, empty_redis: None, mail: Mailbox, tmp_path: Path, artifacts: Path
) -> Iterator[System]:
    """runserver, a relay and a worker on the test database; stopped (and their logs kept) at the end."""
    port = free_port()
    env = {
        "REDIS_URL": REDIS_URL,
        "OUTBOX_RELAY_POLL_SECONDS": "0.2",
        # Beyond every wait here: what a test sees delivered was sent, not swept up and sent again.
        "OUTBOX_REDELIVERY_SECONDS": "600",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": mail.host,
        "EMAIL_PORT": str(mail.port),
    }
    try:
        with processes(tmp_path, **env) as procs:
            web = procs.manage("runserver", f"127.0.0.1:{port}", "--noreload", name="web")
            relay = procs.relay("relay")
            worker = procs.worker()
            base_url = f"http://127.0.0.1:{port}"

            def web_up() -> bool:
                assert web.popen.poll() is None, f"runserver exited:\n{web.output()}"
                return _answers(f"{base_url}/admin/login/")

            wait_until(web_up, timeout=SERVER_START_TIMEOUT, what=f"runserver to answer on {base_url}", interval=0.2)
            yield System(base_url=base_url, web=web, relay=relay, worker=worker, mail=mail)
    finally:
        for log in tmp_path.glob("*.log"):
            shutil.copy(log, artifacts / log.name)
    # A killed process's server session ends a moment later; the flush and the database's
    # removal after the last test need it gone.
    try:
        wait_until(lambda: not _other_sessions(), timeout=10, what="the processes' database sessions to end")
    except AssertionError as e:
        raise AssertionError(f"{e}: {_other_sessions()}") from None


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; its absence fails the test (never skips it), before any process starts."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"The browser tests need Debian's Chromium at {CHROMIUM}, which is missing: "
            "install it with `apt-get install chromium`.",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
def page(
    chromium: Path,
    system: System,
    shot: Screenshots,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Page]:
    """Debian's Chromium, headless, on the system's admin with no cookies; a failing test's last
    page is screenshotted. Playwright's own browser builds are not used (nor downloaded)."""
    # Playwright's synchronous API runs its event loop in a greenlet of this thread, so Django
    # sees a running loop and refuses ORM calls; Django's documentation for browser tests says to
    # allow them. Started after the test database and stopped before its flush, for this test only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"], timeout=30_000
        )
        context = browser.new_context(base_url=system.base_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        browser_page = context.new_page()
        try:
            yield browser_page
        finally:
            if _failed(request):
                shot(browser_page, "failure")
            browser.close()
            # While Playwright's loop runs, Django hands this thread a second connection (its
            # connections are per context); left open, it would block the test database's removal.
            connections.close_all()


@pytest.fixture(scope="session", autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=ACTION_TIMEOUT_MS)


def reload_until(page: Page, found: Callable[[], object], *, timeout: float, what: str) -> None:
    """Reload the page until `found()` is truthy on it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not found():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
        page.reload()
