"""Smoke test of the embedded default (SQLite, stub broker): the `make run` path, end to end, in subprocesses.

This is the only place SQLite is used; everything else runs on PostgreSQL and Redis.
"""

import http.client
import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import manage_run
from tooling.processes import free_port

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds for any one manage.py run
SERVER_START_TIMEOUT = 30.0  # seconds for runserver to answer
SERVER_STOP_TIMEOUT = 10.0  # seconds for runserver to exit after SIGTERM
POLL_INTERVAL = 0.25
HTTP_TIMEOUT = 10.0
# Variables that select a deployment: removed so that the child falls back to the embedded default.
SELECTING_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "DJANGO_SETTINGS_MODULE",
    "DEBUG",
    "SQLITE_PATH",
    "EMAIL_HOST",
    "EMAIL_BACKEND",
)

COUNT_SCRIPT = """
from core.models import Order
from outbox.models import Event
print("EVENTS=" + str(Event.objects.count()))
print("ORDER_PLACED_EVENTS=" + str(Event.objects.filter(event_type="order.placed").count()))
print("ORDERS=" + str(Order.objects.count()))
"""


@dataclass(frozen=True)
class Embedded:
    env: dict[str, str]
    first_demo_data_output: str


@dataclass(frozen=True)
class Server:
    base_url: str


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = manage_run(*args, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result


def _counts(env: dict[str, str]) -> dict[str, int]:
    result = _manage("shell", "-c", COUNT_SCRIPT, env=env)
    lines = [line for line in result.stdout.splitlines() if "=" in line]
    return {key: int(value) for key, value in (line.split("=", 1) for line in lines)}


def _opener() -> urllib.request.OpenerDirector:
    """A urllib opener that keeps cookies, as a browser would for the admin session."""
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _open(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    form: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> http.client.HTTPResponse:
    """Open a URL on the local test server only (GET, or POST when a form is given)."""
    assert url.startswith("http://127.0.0.1:"), url
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers={"Referer": url})  # noqa: S310 - http to 127.0.0.1 only
    response: http.client.HTTPResponse = opener.open(request, timeout=timeout)
    return response


def _wait_until_answering(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    max_attempts = int(SERVER_START_TIMEOUT / POLL_INTERVAL) + 1
    for _ in range(max_attempts):
        if server.poll() is not None:
            pytest.fail(f"runserver exited with {server.returncode}:\n{log.read_text()}")
        try:
            with _open(_opener(), url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"runserver did not answer {url} with 200 within {SERVER_START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Embedded:
    """A migrated SQLite database in a temporary directory, with `demo_data` run once."""
    directory = tmp_path_factory.mktemp("embedded")
    env = {key: value for key, value in os.environ.items() if key not in SELECTING_VARS}
    env["SQLITE_PATH"] = str(directory / "db.sqlite3")
    env["EMAIL_FILE_PATH"] = str(directory / "mail")
    _manage("migrate", "--noinput", env=env)
    first = _manage("demo_data", env=env)
    return Embedded(env=env, first_demo_data_output=first.stdout)


@pytest.fixture(scope="module")
def server(embedded: Embedded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`manage.py runserver` on a free port, serving the embedded database; stopped afterwards."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("runserver") / "runserver.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=embedded.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_answering(f"{base_url}/admin/login/", process, log)
            yield Server(base_url=base_url)
        finally:
            process.terminate()
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SERVER_STOP_TIMEOUT)


def test_demo_data_creates_the_admin_superuser_products_and_an_order(embedded: Embedded) -> None:
    """The first `demo_data` on the embedded default creates admin/admin, the products and Ada's order."""
    output = embedded.first_demo_data_output

    assert "Created superuser admin / admin." in output, output
    assert "Created product KB-001" in output, output
    assert "Created a placed order for Ada Lovelace." in output, output


def test_demo_data_run_again_changes_nothing(embedded: Embedded) -> None:
    """A second `demo_data` reports the data already present and creates no records or events."""
    before = _counts(embedded.env)

    output = _manage("demo_data", env=embedded.env).stdout

    assert "Demo data already present." in output, output
    assert "Created" not in output, output
    assert _counts(embedded.env) == before


def test_demo_data_writes_outbox_events_including_order_placed(embedded: Embedded) -> None:
    """The demo records are written through the outbox: there are events, among them an `order.placed`."""
    counts = _counts(embedded.env)

    assert counts["EVENTS"] > 0
    assert counts["ORDER_PLACED_EVENTS"] >= 1
    assert counts["ORDERS"] == 1


def test_admin_login_as_demo_superuser_shows_ada_lovelaces_order(server: Server) -> None:
    """Logging in through the real admin form as admin/admin lists the demo order for Ada Lovelace."""
    opener = _opener()
    login_url = f"{server.base_url}/admin/login/"
    with _open(opener, login_url) as response:
        login_page = response.read().decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page)
    assert match, "no CSRF token on the login page"
    form = {"username": "admin", "password": "admin", "csrfmiddlewaretoken": match.group(1), "next": "/admin/"}

    with _open(opener, login_url, form=form) as response:
        assert urllib.parse.urlparse(response.geturl()).path == "/admin/", "login did not redirect to the admin"
    with _open(opener, f"{server.base_url}/admin/core/order/") as response:
        status, final_url, page = response.status, response.geturl(), response.read().decode()

    assert status == 200
    # Not logged in, the admin redirects to the login page, which also answers 200.
    assert urllib.parse.urlparse(final_url).path == "/admin/core/order/", final_url
    assert "Ada Lovelace" in page


def test_healthz_reports_ok_on_the_embedded_default(server: Server) -> None:
    """/healthz answers 200 with status ok when SQLite and the stub broker are in use."""
    with _open(_opener(), f"{server.base_url}/healthz") as response:
        status, body = response.status, json.loads(response.read())

    assert status == 200
    assert body == {"status": "ok", "database": "ok", "broker": "ok"}


DELIVERY_SCRIPT = """
from core.models import Product
from outbox.models import Delivery, Event, Pending
from outbox.relay.routing import consumers_for
print("PENDING=" + str(Pending.objects.count()))
print("DONE=" + str(Delivery.objects.filter(status="done").count()))
print("NOT_DONE=" + str(Delivery.objects.exclude(status="done").count()))
print("ROUTED=" + str(sum(len(consumers_for(t)) for t in Event.objects.values_list("event_type", flat=True))))
print("EVENTS=" + str(Event.objects.count()))
print("STOCK=" + ",".join(f"{p.sku}:{p.stock}" for p in Product.objects.order_by("sku")))
"""


def test_relay_runs_the_consumers_in_process_on_the_embedded_default(embedded: Embedded) -> None:
    """With the in-process broker, `outbox_relay --once` publishes every event and its own worker
    runs every consumer: an audit line per event, stock moved, the confirmation written to a file."""
    relayed = _manage("outbox_relay", "--once", env=embedded.env)
    assert "Relayed" in relayed.stdout
    report = _manage("shell", "-c", DELIVERY_SCRIPT, env=embedded.env).stdout
    counts = dict(line.split("=") for line in report.splitlines() if "=" in line)
    assert counts["PENDING"] == "0"
    assert counts["NOT_DONE"] == "0"
    assert counts["DONE"] == counts["ROUTED"] != "0"
    audit_lines = [line for line in relayed.stderr.splitlines() if " INFO audit {" in line]
    assert len(audit_lines) == int(counts["EVENTS"])
    # The demo order takes 1 keyboard and 2 mice out of the opening stock (40 and 120).
    assert counts["STOCK"] == "CB-004:300,HS-005:25,KB-001:39,MN-003:15,MS-002:118"
    mails = list(Path(embedded.env["EMAIL_FILE_PATH"]).glob("*.log"))
    assert len(mails) == 1, "one order confirmation, written by the file backend"
    text = mails[0].read_text()
    assert "To: ada@example.com" in text
    assert "1 x KB-001 Mechanical keyboard at 89.00 = 89.00" in text
    assert "2 x MS-002 Wireless mouse at 29.50 = 59.00" in text


KILL_ONE_SCRIPT = """
from outbox.models import Delivery
d = Delivery.objects.filter(consumer="audit_log", status="done").order_by("id").first()
Delivery.objects.filter(pk=d.pk).update(status="dead", last_error="test: marked dead")
print("EVENT=" + str(d.event_id))
"""


def test_a_replay_on_the_embedded_default_is_delivered_by_the_relay(embedded: Embedded) -> None:
    """The in-process broker lives in the relay, so a replay hands the delivery to the relay's sweeper."""
    _manage("outbox_relay", "--once", env=embedded.env)
    event = _manage("shell", "-c", KILL_ONE_SCRIPT, env=embedded.env).stdout.split("EVENT=")[1].strip()
    replayed = _manage("outbox_replay", "--event-id", event, "--reason", "embedded test", env=embedded.env)
    assert "Sent 1 delivery again (audit_log: 1)" in replayed.stdout
    relayed = _manage("outbox_relay", "--once", env=embedded.env)
    assert f'"id": {event},' in relayed.stderr
    status = _manage(
        "shell",
        "-c",
        f"from outbox.models import Delivery; print(Delivery.objects.get(event_id={event}, "
        "consumer='audit_log').status)",
        env=embedded.env,
    )
    assert status.stdout.strip().splitlines()[-1] == "done"


def test_the_long_running_relay_takes_checkpoints_on_the_embedded_default(embedded: Embedded, tmp_path: Path) -> None:
    """`make run` starts `outbox_relay` without --once: once seals exist it signs checkpoints of the
    sealed log, on SQLite as on PostgreSQL, and keeps running; the log verifies against them."""
    _manage("outbox_relay", "--once", env=embedded.env)  # seals to take a checkpoint of
    log = tmp_path / "relay.log"
    env = {**embedded.env, "OUTBOX_CHECKPOINT_SECONDS": "0.2", "OUTBOX_RELAY_POLL_SECONDS": "0.1"}
    with log.open("wb") as out:
        relay = subprocess.Popen(
            [sys.executable, "manage.py", "outbox_relay", "--name", "embedded-relay"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while "Checkpoint of the event log" not in log.read_text(errors="replace"):
            assert relay.poll() is None, f"the relay exited with {relay.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint within {TIMEOUT} s:\n{log.read_text()}"
            time.sleep(0.1)
        time.sleep(1.0)  # a few more rounds of the loop
        assert relay.poll() is None, f"the relay exited with {relay.returncode}:\n{log.read_text()}"
    finally:
        relay.terminate()
        relay.wait(timeout=SERVER_STOP_TIMEOUT)
    assert "Traceback" not in log.read_text(), log.read_text()
    report = json.loads(_manage("outbox_verify", "--json", env=embedded.env).stdout)
    assert report["ok"], report["problems"]
    assert report["checkpoint"]
