from typing import Any

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from core import events

        events.register_all()
        post_migrate.connect(_roles_after_migrate, sender=self)


def _roles_after_migrate(**kwargs: Any) -> None:
    """Keep the Auditors and Operators groups in step with the permissions, after every migrate."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

    from core.roles import roles_sync

    # Permissions are created app by app after migrate; the roles need those of later apps too.
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=kwargs.get("using", "default"))
    roles_sync()
