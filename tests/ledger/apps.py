from django.apps import AppConfig


class LedgerConfig(AppConfig):
    """A small app that hangs its own events and consumers on the outbox, touching nothing outside
    itself: the worked example of docs/extending.md, run by tests/ledger/test_ledger.py."""

    name = "tests.ledger"
    label = "ledger"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from outbox import by_kind, register
        from tests.ledger.models import Invoice

        register(
            Invoice,
            aggregate_type="invoice",
            event_type=by_kind(created="invoice.issued", updated="invoice.changed", deleted="invoice.voided"),
        )
        # tests/ledger/consumers.py declares the consumers: the outbox finds it by its name.
