"""Outbox settings, each read lazily so that tests and deployments can override them."""

from typing import Any

from django.conf import settings


def prepared_statements() -> bool:
    """Whether the event insert uses a server-side prepared statement on PostgreSQL.

    Turn off (`OUTBOX_PREPARED_STATEMENTS = False`) behind a transaction-pooling PgBouncer, which
    cannot keep prepared statements across transactions.
    """
    return bool(getattr(settings, "OUTBOX_PREPARED_STATEMENTS", True))


def batch_size() -> int:
    """How many events a relay claims at a time."""
    return int(getattr(settings, "OUTBOX_RELAY_BATCH_SIZE", 1000))


def lease_seconds() -> float:
    """How long a claim lasts before another relay may take the events over."""
    return float(getattr(settings, "OUTBOX_RELAY_LEASE_SECONDS", 30.0))


def poll_seconds() -> float:
    """How long an idle relay waits for a notification before it looks anyway."""
    return float(getattr(settings, "OUTBOX_RELAY_POLL_SECONDS", 1.0))


def redelivery_seconds() -> float:
    """How long a published delivery may stay unfinished before the sweeper publishes it again."""
    return float(getattr(settings, "OUTBOX_REDELIVERY_SECONDS", 60.0))


def actor_modules() -> list[str]:
    """The module names (per app) in which the worker finds its Dramatiq actors."""
    return list(getattr(settings, "DRAMATIQ_AUTODISCOVER_MODULES", ["tasks"]))


def heartbeat_seconds() -> float:
    """How often a relay records that it is alive (its RelayHeartbeat row)."""
    return float(getattr(settings, "OUTBOX_HEARTBEAT_SECONDS", 5.0))


def heartbeat_stale_seconds() -> float:
    """How old a relay's last beat may be before status reports call the relay stale."""
    return float(getattr(settings, "OUTBOX_HEARTBEAT_STALE_SECONDS", 30.0))


def worker_heartbeat_seconds() -> float:
    """How often a worker process beats its heartbeat in Redis (outbox.consume.worker.WorkerHeartbeat)."""
    return float(getattr(settings, "OUTBOX_WORKER_HEARTBEAT_SECONDS", 1.0))


def periodic_jobs() -> dict[str, dict[str, Any]]:
    """Job name → {"callable": dotted path, "daily_at": "HH:MM" (UTC), "kwargs": {...}}."""
    return dict(getattr(settings, "OUTBOX_PERIODIC_JOBS", {}))


def metrics_token() -> str:
    """The bearer token that lets a scraper read /metrics without a staff login ("" = none)."""
    return str(getattr(settings, "METRICS_TOKEN", ""))


def checkpoint_seconds() -> float:
    """How often a relay records a signed checkpoint of the sealed event log."""
    return float(getattr(settings, "OUTBOX_CHECKPOINT_SECONDS", 60.0))


def message_max_ids() -> int:
    """The most event ids one message may name; a bigger message is dropped unapplied."""
    return int(getattr(settings, "OUTBOX_MESSAGE_MAX_IDS", 10_000))


def message_max_bytes() -> int:
    """The largest encoded message (bytes) a worker decodes; a bigger one is dropped unread."""
    return int(getattr(settings, "OUTBOX_MESSAGE_MAX_BYTES", 256 * 1024))
