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


@checks.register()
def check_seal_key_format(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A `hex:` OUTBOX_SEAL_KEY must be hex, or no event could be sealed."""
    from django.core.exceptions import ImproperlyConfigured

    from outbox.sealing import seal_key

    try:
        seal_key()
    except ImproperlyConfigured as e:
        return [checks.Error(str(e), id="outbox.E003")]
    return []


@checks.register(checks.Tags.security, deploy=True)
def check_seal_key_set(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """In production the seal key should not hang on SECRET_KEY."""
    from django.conf import settings

    if getattr(settings, "OUTBOX_SEAL_KEY", ""):
        return []
    return [
        checks.Warning(
            "OUTBOX_SEAL_KEY is not set, so the event log's seals are made with a key derived from "
            "SECRET_KEY: rotating SECRET_KEY would make every earlier seal report CHANGED.",
            hint="Run `python manage.py outbox_seal_key` with the current settings and set the value it "
            "prints as OUTBOX_SEAL_KEY on every machine (docs/auditing.md, The key).",
            id="outbox.W001",
        )
    ]


@checks.register()
def check_message_cap_above_batch(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A relay's message must fit under the workers' cap, or every batch would be dropped."""
    from outbox import conf

    if conf.batch_size() <= conf.message_max_ids():
        return []
    return [
        checks.Error(
            f"OUTBOX_RELAY_BATCH_SIZE ({conf.batch_size()}) is above OUTBOX_MESSAGE_MAX_IDS "
            f"({conf.message_max_ids()}): workers would drop every full batch the relays send.",
            hint="Raise OUTBOX_MESSAGE_MAX_IDS (and OUTBOX_MESSAGE_MAX_BYTES, about 20 bytes an id), "
            "or lower the batch size.",
            id="outbox.E010",
        )
    ]
