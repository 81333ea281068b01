"""Dramatiq middleware for the consumers' workers."""

import logging
import threading
from datetime import datetime, timezone
from typing import Any

import dramatiq
import redis
from dramatiq.common import current_millis

from outbox.consume.broker import WakingRedisBroker
from outbox.consume.deliveries import attempt_started

logger = logging.getLogger(__name__)


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


class WorkerHeartbeat(dramatiq.Middleware):
    """On Redis, beat the worker process's heartbeat in Dramatiq's own heartbeat set from a thread
    of its own, every OUTBOX_WORKER_HEARTBEAT_SECONDS.

    Dramatiq beats it only when a consumer fetches, which a busy one does not do; with the beat
    steady, a heartbeat older than OUTBOX_WORKER_STALE_SECONDS means the process is gone, and a
    relay gives its unacknowledged messages to the other workers then (WakingRedisBroker.requeue_dead)
    rather than after the sweeper's redelivery deadline. RabbitMQ needs none of it: it gives a
    dropped connection's messages back at once.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, WakingRedisBroker):
            return
        from outbox import conf

        every = conf.worker_heartbeat_seconds()
        key = f"{broker.namespace}:__heartbeats__"

        def beat() -> None:
            try:
                broker.client.zadd(key, {broker.broker_id: current_millis()})
            except redis.RedisError as e:  # the consumers report the outage; beat again next time
                logger.debug("Worker heartbeat not recorded: %s", e)

        def beating() -> None:
            while not self.stopping.wait(every):
                beat()

        beat()  # at boot, before any consumer fetches
        threading.Thread(target=beating, name="outbox-worker-heartbeat", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.stopping.set()
