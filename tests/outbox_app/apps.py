from django.apps import AppConfig


class OutboxAppConfig(AppConfig):
    """The outbox tests' own app: records that emit events, and consumers that take them.

    tests/outbox runs the outbox against it and nothing else, so that the outbox is shown to
    work for an app it knows nothing about. It imports neither core nor the consumers
    (pyproject.toml's import contracts say so).
    """

    name = "tests.outbox_app"
    label = "outbox_app"
    verbose_name = "Outbox tests' app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tests.outbox_app import events

        events.register_all()
        # tests/outbox_app/consumers.py declares the consumers: the outbox finds it by its name.
