"""Sentry: initialised with the Django integration when SENTRY_DSN is set, absent otherwise.

The DSN points at a closed loopback port, and nothing is captured: no event is sent.
"""

import json
import os

from tests.processes import manage_run

REPORT = """
import json, sentry_sdk
client = sentry_sdk.get_client()
print(json.dumps({
    "active": client.is_active(),
    "dsn": client.dsn,
    "django": "django" in getattr(client, "integrations", {}),
    "pii": client.options.get("send_default_pii") if client.is_active() else None,
}))
"""


def sentry_report(**env: str) -> dict:
    base = {key: value for key, value in os.environ.items() if not key.startswith("SENTRY_")}
    result = manage_run("shell", "-c", REPORT, env={**base, "DJANGO_SETTINGS_MODULE": "settings.test", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_settings_load_without_sentry_and_initialise_nothing() -> None:
    assert sentry_report() == {"active": False, "dsn": None, "django": False, "pii": None}


def test_sentry_dsn_initialises_sentry_with_the_django_integration() -> None:
    dsn = "http://public@127.0.0.1:9/1"
    assert sentry_report(SENTRY_DSN=dsn) == {"active": True, "dsn": dsn, "django": True, "pii": False}
