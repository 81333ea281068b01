from django.apps import AppConfig


class ToolingConfig(AppConfig):
    """The development tools' management commands: outbox_bench, outbox_chaos, simulate."""

    name = "tooling"
    verbose_name = "Development tools"
