"""Dramatiq middleware for the consumers' workers."""

from datetime import datetime, timezone
from typing import Any

import dramatiq

from outbox.consume.deliveries import attempt_started


class AttemptClock(dramatiq.Middleware):
    """Note when a worker starts each message, so that deliveries record when their attempt began.

    The gap between an event's `created_at` and its delivery's `started_at` is the pipeline's
    latency from commit to consumer start.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        attempt_started(datetime.now(timezone.utc))

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        attempt_started(None)

    after_skip_message = after_process_message
