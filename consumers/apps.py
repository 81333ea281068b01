from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    name = "consumers"
    verbose_name = "Consumers"

    def ready(self) -> None:
        # Each module declares its consumer (@outbox.consumer): importing them is all it takes,
        # in the web, relay and worker processes alike.
        from consumers import audit, email, inventory  # noqa: F401
