"""JSON logs (`LOG_FORMAT=json`): one object per line with the record's extra fields; plain by default."""

import json
import logging
import os
import subprocess

from outbox.logging import JsonFormatter
from tests.processes import manage_run

LOG_SCRIPT = """
import logging
log = logging.getLogger("outbox.example")
log.warning("Delivery of %s failed", "event 7", extra={"event_id": 7, "consumer": "stocktake"})
try:
    1 / 0
except ZeroDivisionError:
    log.exception("Broken")
"""


def run_logging(**env: str) -> subprocess.CompletedProcess[str]:
    return manage_run("shell", "-c", LOG_SCRIPT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", **env})


def test_log_format_json_writes_one_object_per_line_with_extra_fields() -> None:
    """Each record is a line of JSON: time, level, logger, message, the extras, and the traceback."""
    result = run_logging(LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if '"outbox.example"' in line]
    assert len(lines) == 2, result.stderr
    warning, error = lines
    assert warning["level"] == "WARNING"
    assert warning["logger"] == "outbox.example"
    assert warning["message"] == "Delivery of event 7 failed"
    assert (warning["event_id"], warning["consumer"]) == (7, "stocktake")
    assert warning["time"].endswith("+00:00")
    assert error["level"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in error["exception"]


def test_logs_stay_plain_text_by_default() -> None:
    """Without LOG_FORMAT a record is one line of text, as before."""
    result = run_logging(LOG_FORMAT="plain")
    assert result.returncode == 0, result.stderr
    assert " WARNING outbox.example Delivery of event 7 failed" in result.stderr
    assert '"level"' not in result.stderr


def test_unknown_log_format_is_refused_with_the_choices() -> None:
    """A typo in LOG_FORMAT stops the process at start, naming the setting and its values."""
    result = manage_run("check", env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings.test", "LOG_FORMAT": "xml"})
    assert result.returncode != 0
    assert "LOG_FORMAT must be 'plain' or 'json' (got 'xml')" in result.stderr


def test_json_formatter_keeps_objects_it_cannot_encode_as_text() -> None:
    """Extras such as Django's `request` are objects: the line carries their text, not an error."""
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Bad: %s", ("x",), None)
    record.request = object()
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "Bad: x"
    assert data["request"].startswith("<object object at")
