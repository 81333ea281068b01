"""A JSON log formatter: one object per line, for log collectors (`LOG_FORMAT=json`).

Each line has `time` (UTC, ISO 8601), `level`, `logger` and `message`, then every field passed
with `extra=` (such as `event_id`, `consumer`, `job`), then `exception` when there is one.
"""

import json
import logging
from datetime import datetime, timezone
from typing import Any

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # default=str: extras such as Django's `request` are objects; their text is what helps.
        return json.dumps(data, default=str, ensure_ascii=False)
