"""`manage.py simulate`: traffic and its consistency report, on the embedded default and the real stack."""

import json
import os
from pathlib import Path

import pytest
import redis
from django.conf import settings

from tests.processes import manage_run, processes
from tests.smtp import smtp_server

SELECTING = ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "EMAIL_HOST", "EMAIL_BACKEND", "SQLITE_PATH")


def test_simulate_on_the_embedded_default_reports_a_consistent_pipeline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SELECTING}
    env |= {"SQLITE_PATH": str(tmp_path / "db.sqlite3"), "EMAIL_FILE_PATH": str(tmp_path / "mail")}
    migrated = manage_run("migrate", "-v0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    done = manage_run("simulate", "--orders", "25", "--rate", "0", "--json", env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["consistent"] is True
    assert result["traffic"]["placed"] == 25
    assert result["events_by_type"]["order.placed"] == 25
    assert result["stock_mismatches"] == []
    assert result["ledger_mismatches"] == []
    assert result["emails_sent"] == result["emails_expected"] == 25 + result["traffic"]["cancelled"]
    written = "".join(path.read_text() for path in (tmp_path / "mail").glob("*.log"))
    assert written.count("\nSubject: Your order #") == result["emails_sent"]


@pytest.mark.django_db(transaction=True)
def test_simulate_on_the_real_stack_with_relay_and_worker_processes(tmp_path: Path) -> None:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with smtp_server() as mail:
        env = {
            "REDIS_URL": settings.REDIS_URL,
            "OUTBOX_RELAY_POLL_SECONDS": "0.2",
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": mail.host,
            "EMAIL_PORT": str(mail.port),
        }
        with processes(tmp_path, **env) as procs:
            procs.relay("r1")
            procs.worker()
            simulate = procs.manage("simulate", "--orders", "40", "--rate", "100", "--wait", "90", "--json", name="sim")
            assert simulate.popen.wait(timeout=240) == 0, simulate.output()[-3000:]
        result = json.loads(simulate.output()[simulate.output().index("{") :])
        assert result["consistent"] is True
        assert result["undelivered"] == 0
        assert result["emails_sent"] == mail.count() == result["emails_expected"]
