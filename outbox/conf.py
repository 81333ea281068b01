"""Outbox settings, each read lazily so that tests and deployments can override them."""

from django.conf import settings


def prepared_statements() -> bool:
    """Whether the event insert uses a server-side prepared statement on PostgreSQL.

    Turn off (`OUTBOX_PREPARED_STATEMENTS = False`) behind a transaction-pooling PgBouncer, which
    cannot keep prepared statements across transactions.
    """
    return bool(getattr(settings, "OUTBOX_PREPARED_STATEMENTS", True))


def notify_channel() -> str:
    """The PostgreSQL LISTEN/NOTIFY channel that an event insert notifies on commit."""
    return "outbox_event"
