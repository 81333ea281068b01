from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "outbox"
    verbose_name = "Outbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from outbox.eventlog import sealer  # noqa: F401  (declares the outbox's own consumer)

        # Each app's `consumers` module, if it has one, declares its consumers (@outbox.consumer).
        autodiscover_modules("consumers")
        from outbox.ops import checks  # noqa: F401  (registers the system checks)
