"""System checks for the outbox's configuration."""

from typing import Any

from django.apps import apps
from django.core import checks

from outbox import registry
from outbox.emitting import EmittingModel


@checks.register()
def check_emitting_models_registered(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every EmittingModel must declare its events, or its saves would fail at run time."""
    registered = {spec.model for spec in registry.specs()}
    errors: list[checks.CheckMessage] = []
    for model in apps.get_models():
        if issubclass(model, EmittingModel) and model not in registered:
            errors.append(
                checks.Error(
                    f"{model._meta.label} inherits EmittingModel but declares no events.",
                    hint="Declare them with outbox.registry.register() in the app's events module.",
                    obj=model,
                    id="outbox.E001",
                )
            )
    return errors


@checks.register()
def check_routes_name_existing_actors(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every consumer named by OUTBOX_ROUTES must be a Dramatiq actor that the worker defines."""
    import dramatiq
    from dramatiq.errors import ActorNotFound

    from outbox import routing

    routing.load_actors()
    broker = dramatiq.get_broker()
    errors: list[checks.CheckMessage] = []
    for name in sorted(routing.route_names()):
        try:
            broker.get_actor(name)
        except ActorNotFound:
            known = ", ".join(sorted(broker.get_declared_actors())) or "none"
            errors.append(
                checks.Error(
                    f"OUTBOX_ROUTES sends events to {name!r}, but no Dramatiq actor has that name.",
                    hint=f"Fix the name in settings/routes.py or define the actor. Known actors: {known}.",
                    id="outbox.E002",
                )
            )
    return errors
