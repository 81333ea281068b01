"""System checks for the outbox's configuration."""

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks

from outbox.emit import registry
from outbox.emit.model import EmittingModel


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
                    hint="Declare them with outbox.register() in the app's events module.",
                    obj=model,
                    id="outbox.E001",
                )
            )
    return errors


@checks.register()
def check_consumers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Each consumer takes types that something emits, and is declared where the worker loads it."""
    from outbox.consume import declare

    emitted = registry.emitted_types()
    found: list[checks.CheckMessage] = []
    taken: set[str] = set()
    packages = [config.name for config in apps.get_app_configs()]
    for declared in declare.declared():
        module = declared.handler.__module__
        if not any(module == name or module.startswith(name + ".") for name in packages):
            found.append(
                checks.Error(
                    f"Consumer {declared.name!r} is declared in {module}, which is not part of an installed app: "
                    "the worker would not load it.",
                    hint="Declare it in an installed app's `consumers` module, or in a module its AppConfig.ready() "
                    "imports.",
                    id="outbox.E002",
                )
            )
        types = [t for t in declared.events if t != declare.ALL]
        taken.update(types)
        if emitted is not None:
            for event_type in types:
                if event_type not in emitted:
                    found.append(
                        checks.Error(
                            f"Consumer {declared.name!r} takes {event_type!r} events, but no emitting model emits "
                            "that type.",
                            hint="Fix the type in its @consumer declaration. Emitted types: "
                            + ", ".join(sorted(emitted)),
                            id="outbox.E004",
                        )
                    )
    found.extend(_check_overrides({c.name for c in declare.declared()}))
    wildcard = {c.name for c in declare.declared() if declare.ALL in c.events and c.name != "outbox_seal"}
    if emitted is not None and not wildcard:
        for event_type in sorted(emitted - taken):
            found.append(
                checks.Info(
                    f"No consumer takes {event_type!r} events (only the outbox's sealer does).",
                    hint="That may be intended; declare a consumer for the type if something should react to it.",
                    id="outbox.I001",
                )
            )
    return found


def _check_overrides(names: set[str]) -> list[checks.CheckMessage]:
    """OUTBOX_CONSUMERS names declared consumers only, and sets only what may be overridden."""
    from outbox.consume.declare import ON_DEAD, OVERRIDABLE

    overrides = getattr(settings, "OUTBOX_CONSUMERS", {})
    if not isinstance(overrides, dict):
        return [
            checks.Error(
                f"OUTBOX_CONSUMERS must be a dict of consumer name -> settings, not {type(overrides).__name__}.",
                hint='For example OUTBOX_CONSUMERS = {"email": {"queue": "mail"}, "audit_log": {"enabled": False}}.',
                id="outbox.E006",
            )
        ]
    found: list[checks.CheckMessage] = []
    for name, values in sorted(overrides.items()):
        if name not in names:
            found.append(
                checks.Error(
                    f"OUTBOX_CONSUMERS names {name!r}, but no consumer is declared with that name: its settings "
                    "would be ignored.",
                    hint="Fix the name. Declared consumers: " + ", ".join(sorted(names)),
                    id="outbox.E005",
                )
            )
        unknown = sorted(set(values) - set(OVERRIDABLE)) if isinstance(values, dict) else None
        if unknown is None or unknown:
            what = f"unknown keys {unknown}" if unknown else f"a {type(values).__name__}, not a dict"
            found.append(
                checks.Error(
                    f"OUTBOX_CONSUMERS[{name!r}] has {what}: only {', '.join(map(repr, OVERRIDABLE))} may be set.",
                    hint='For example OUTBOX_CONSUMERS = {"email": {"queue": "mail"}}.',
                    id="outbox.E006",
                )
            )
        elif not_bool := [key for key in ("enabled", "ordered") if key in values and not isinstance(values[key], bool)]:
            found.append(
                checks.Error(
                    f"OUTBOX_CONSUMERS[{name!r}][{not_bool[0]!r}] is {values[not_bool[0]]!r}: "
                    "it must be True or False.",
                    hint="A string such as 'false' would count as true.",
                    id="outbox.E006",
                )
            )
        elif values.get("on_dead", "block") not in ON_DEAD:
            found.append(
                checks.Error(
                    f"OUTBOX_CONSUMERS[{name!r}]['on_dead'] is {values['on_dead']!r}: it must be 'block' or 'skip'.",
                    hint="'block' holds back a dead event's aggregate until the event is replayed; 'skip' goes on "
                    "without it.",
                    id="outbox.E006",
                )
            )
    return found


@checks.register()
def check_seal_key_format(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A `hex:` OUTBOX_SEAL_KEY must be hex, or no event could be sealed."""
    from django.core.exceptions import ImproperlyConfigured

    from outbox.eventlog.sealing import seal_key

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


ROLES_HINT = "Connect the app as a role that owns nothing: see docs/operations.md#database-roles."


@checks.register(checks.Tags.security, deploy=True)
def check_database_role_owns_nothing(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The app's database role must be no superuser and must not own the event log's tables."""
    from django.db import DatabaseError

    from outbox.backends import ops

    roles = ops().roles
    if roles is None:
        return []
    tables = [model._meta.db_table for model in apps.get_app_config("outbox").get_models()]
    try:
        # The role the processes connect as, from the database's catalogue: whether it is a
        # superuser, and which of the event log's tables it owns, itself or through a role it may
        # SET ROLE to (an owner can drop the append-only triggers; a superuser can do anything).
        user, superuser, owned = roles.connected(tables)
    except DatabaseError as e:
        return [
            checks.Warning(
                f"Could not check the database role the app connects as: {e}".strip(),
                hint="Run `python manage.py check --deploy` where the database answers. " + ROLES_HINT,
                id="outbox.W004",
            )
        ]
    found: list[checks.CheckMessage] = []
    if superuser:
        found.append(
            checks.Warning(
                f"The app connects to PostgreSQL as {user!r}, a superuser: it can disable the event log's "
                "triggers and rewrite or delete any event.",
                hint=ROLES_HINT,
                id="outbox.W002",
            )
        )
    if owned:
        by_owner: dict[str, list[str]] = {}
        for table, owner in owned:
            by_owner.setdefault(owner, []).append(table)
        names = "; ".join(f"{', '.join(tables)} (owner {owner})" for owner, tables in by_owner.items())
        found.append(
            checks.Warning(
                f"The app's database role {user!r} owns the event log's tables, or is a member of their owner: "
                f"{names}. An owner can drop their append-only triggers and rewrite the record.",
                hint="Run migrations as the owner and the processes as another role, with the privileges "
                "`python manage.py outbox_grants --role <app role> --apply` gives it. " + ROLES_HINT,
                id="outbox.W003",
            )
        )
    return found


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


@checks.register()
def check_schema_versions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Each event type's current schema version is reached by upcasters from every version below it.

    Every version below the current one counts as present in the log: each was the current one
    once, and whether the log still holds an event of it is not known without reading the log,
    which the checks at every process start do not do. So a missing step is an error wherever
    the check runs.
    """
    from outbox.emit import schemas

    found: list[checks.CheckMessage] = []
    upcasters = schemas.upcasters()
    for event_type, current in sorted(schemas.declared_versions().items()):
        missing = [v for v in range(1, current) if (event_type, v) not in upcasters]
        if not missing:
            continue
        steps = " or ".join(f"{v} to {v + 1}" for v in missing)
        unreadable = ", ".join(str(v) for v in range(1, missing[-1] + 1))
        found.append(
            checks.Error(
                f"{event_type!r} is at schema version {current}, but no upcaster brings version {steps}: its "
                f"events written at version {unreadable} could not be read.",
                hint="Declare "
                + ", ".join(f"@outbox.upcaster({event_type!r}, {v})" for v in missing)
                + ", each bringing a payload to the next version (docs/extending.md#schema-versions).",
                id="outbox.E007",
            )
        )
    for event_type, version in sorted(upcasters):
        current = schemas.current_version(event_type)
        if version >= current:
            found.append(
                checks.Error(
                    f"An upcaster brings {event_type!r} from schema version {version} to {version + 1}, but the "
                    f"type's current version is {current}: the writer still writes version {current}.",
                    hint=f"If its payload changed, declare versions={{{event_type!r}: {version + 1}}} in the "
                    "register() of the model that emits it; if not, remove the upcaster.",
                    id="outbox.E007",
                )
            )
    return found


# Pairs of (type, schema version above 1) read from the log at most: far more than any log holds.
LOG_VERSIONS_READ = 1000


@checks.register(checks.Tags.database)
def check_schema_versions_in_log(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The log holds no event of a schema version above its type's current one: newer code wrote
    such an event (this is a rollback), and no reader here can bring it to this code's shape.

    It reads the database, so it runs only where the databases are named (`migrate`, `check
    --database default`). It reads the (type, schema_version) pairs above version 1 from their
    partial index (migration 0015), one index descent per pair: a log of ten million events
    costs it what a log of ten does. Versions below the current one need no reading:
    check_schema_versions() requires a path from each.
    """
    from django.db import DatabaseError, connections

    from outbox.backends import ops
    from outbox.emit import schemas

    found: list[checks.CheckMessage] = []
    for alias in sorted(databases or ()):
        connection = connections[alias]
        try:
            with connection.cursor() as cursor:
                if "outbox_event" not in connection.introspection.table_names(cursor):
                    continue
                columns = {c.name for c in connection.introspection.get_table_description(cursor, "outbox_event")}
                if "schema_version" not in columns:
                    continue  # migration 0015 not applied yet: every event is of version 1
                pairs = ops(connection).schema_versions(cursor, limit=LOG_VERSIONS_READ)
        except DatabaseError as e:
            found.append(
                checks.Warning(
                    f"Could not read the schema versions in the event log of database {alias!r}: {e}".strip(),
                    hint="Run `python manage.py check --database default` where the database answers.",
                    id="outbox.W005",
                )
            )
            continue
        above: dict[str, list[int]] = {}
        for event_type, version in pairs:
            if version > schemas.current_version(event_type):
                above.setdefault(event_type, []).append(version)
        for event_type, versions in sorted(above.items()):
            current = schemas.current_version(event_type)
            listed = ", ".join(map(str, versions))
            found.append(
                checks.Error(
                    f"The event log holds {event_type!r} events of schema version {listed}, above the type's current "
                    f"version {current} in this code: newer code wrote them, and no reader here can bring them to "
                    f"version {current} (their deliveries would go dead).",
                    hint=f"Deploy the code that declares {event_type!r} at version {versions[-1]} again, with its "
                    "upcasters: code from before a version went up cannot read what came after. Then replay the "
                    "dead deliveries, if any (outbox_replay).",
                    id="outbox.E008",
                )
            )
    return found
