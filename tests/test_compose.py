"""Structure of compose.yaml, its RabbitMQ override compose.rabbitmq.yaml and the Dockerfile (no
Docker engine needed: YAML and text checks), and the parts of it that run without one: docker-compose's
own validation and merge of the two files, the Redis command and healthcheck on a local redis-server,
the database init script and migrate on the local PostgreSQL."""

import importlib.util
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import yaml
from django.conf import settings
from psycopg import sql

from tests.processes import manage_run
from tooling.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
# The override that moves the stack to RabbitMQ: docker compose -f compose.yaml -f compose.rabbitmq.yaml.
RABBITMQ_COMPOSE = ROOT / "compose.rabbitmq.yaml"
DOCKERFILE = ROOT / "Dockerfile"
INIT_SCRIPT = ROOT / "scripts" / "postgres-init.sh"
INITDB_DIR = "/docker-entrypoint-initdb.d/"

# The database's roles (scripts/postgres-init.sh): the owner migrates, the app role runs everything else.
OWNER_ROLE, APP_ROLE, DATABASE = "shop", "shop_app", "shop"
PROCESS_SERVICES = ("web", "relay", "worker", "worker-inventory")
# Every secret compose takes, each of which must be required (${VAR:?message}), never defaulted.
REQUIRED_SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "SHOP_OWNER_PASSWORD", "SHOP_APP_PASSWORD", "REDIS_PASSWORD")
# The one more secret the RabbitMQ override takes, required the same way.
RABBITMQ_SECRET = "RABBITMQ_PASSWORD"
RABBITMQ_USER, RABBITMQ_DATA = "shop", "/var/lib/rabbitmq"

APP_SERVICES = ("migrate", "web", "relay", "worker", "worker-inventory")
LONG_RUNNING = ("postgres", "redis", "web", "relay", "worker", "worker-inventory")
SHARED_ENV_KEYS = {
    "DJANGO_SETTINGS_MODULE",
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "DEBUG",
    "SECURE_SSL_REDIRECT",
    "EMAIL_HOST",
    "EMAIL_PORT",
    "DEFAULT_FROM_EMAIL",
}
# Modules holding management commands that do not live in the repo's own apps.
COMMAND_PACKAGES = (
    "django.core.management.commands",
    "django.contrib.auth.management.commands",
    "django.contrib.staticfiles.management.commands",
    "django.contrib.sessions.management.commands",
    "django_dramatiq.management.commands",
)
REPO_APPS = ("outbox", "core", "consumers")


def _services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    assert "version" not in data, "compose.yaml: the Compose Specification has no top-level version"
    services: dict[str, Any] = data["services"]
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _steps(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs: its command, or each `&&` step of an `sh -c` script."""
    command = _command(service)
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(step) for step in command[2].split("&&")]
    return [command]


def _interpolate(text: str, values: dict[str, str]) -> str:
    """`text` as Compose interpolates it from `values`: ${VAR:?error}, ${VAR:-default}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if values.get(name):
            return values[name]
        assert operator != ":?", f"{name} is required: {rest}"
        return rest

    return re.sub(r"\$\$|\$\{(\w+)(?:(:[?-])([^}]*))?\}", replace, text)


def _required(value: str, name: str) -> bool:
    """Whether `value` is exactly the required variable `name`, with an error message."""
    return re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", value) is not None


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    depends_on = service.get("depends_on", {})
    assert isinstance(depends_on, dict), "depends_on must use the long form, with conditions"
    return {name: spec.get("condition", "") for name, spec in depends_on.items()}


def test_services_are_exactly_the_expected_ones() -> None:
    assert set(_services()) == {"postgres", "redis", "migrate", "web", "relay", "worker", "worker-inventory"}


def test_app_services_build_the_repo_with_the_shared_environment() -> None:
    services = _services()
    for name in APP_SERVICES:
        assert services[name].get("build") == ".", f"{name} must build from '.'"
        env = _environment(services[name])
        missing = SHARED_ENV_KEYS - set(env)
        assert not missing, f"{name} lacks environment variables {sorted(missing)}"
        assert env["DJANGO_SETTINGS_MODULE"] == "settings.production", name
        assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", env["SECRET_KEY"]), (
            f"{name}: SECRET_KEY must be mandatory (${{SECRET_KEY:?message}}), not defaulted"
        )


def test_commands() -> None:
    services = _services()
    web = _command(services["web"])
    assert web[:2] == ["gunicorn", "settings.wsgi:application"], f"web command: {web}"
    # The owner migrates, then grants the app role what it needs, every time (outbox_grants is idempotent).
    assert _steps(services["migrate"]) == [
        ["python", "manage.py", "migrate", "--noinput"],
        ["python", "manage.py", "outbox_grants", "--role", APP_ROLE, "--apply"],
    ]
    expected = {
        "relay": "outbox_relay",
        "worker": "rundramatiq",
        "worker-inventory": "rundramatiq",
    }
    for name, management_command in expected.items():
        command = _command(services[name])
        assert "manage.py" in command, f"{name} must run manage.py: {command}"
        following = command[command.index("manage.py") + 1]
        assert following == management_command, f"{name} runs manage.py {following}"


def test_workers_cover_every_consumer_queue() -> None:
    """`worker` serves every declared queue (no list to keep up to date); inventory has its own too."""
    services = _services()
    assert "--queues" not in _command(services["worker"])
    assert _command(services["worker-inventory"])[-2:] == ["--queues", "inventory"]


def test_startup_order() -> None:
    services = _services()
    assert _conditions(services["migrate"]) == {"postgres": "service_healthy"}
    for name in ("web", "relay", "worker", "worker-inventory"):
        assert _conditions(services[name]) == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "migrate": "service_completed_successfully",
        }, f"{name} depends_on"


def test_healthchecks_and_restart_policies() -> None:
    services = _services()
    for name in ("postgres", "redis", "web"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} needs a healthcheck test"
    web_check = services["web"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(web_check), "web healthcheck must call /healthz"
    compile(web_check[-1], "web healthcheck", "exec")  # the python -c snippet must parse
    for name in LONG_RUNNING:
        restart = services[name].get("restart")
        assert restart in {"always", "unless-stopped"}, f"{name}: restart policy is {restart!r}"
    assert services["migrate"].get("restart") == "no", "migrate is one-off: restart must be 'no'"


def test_volumes() -> None:
    data = yaml.safe_load(COMPOSE.read_text())
    assert {"pgdata", "redisdata"} <= set(data.get("volumes") or {}), "named volumes not declared"
    assert "pgdata:/var/lib/postgresql/data" in data["services"]["postgres"].get("volumes", [])
    assert "redisdata:/data" in data["services"]["redis"].get("volumes", [])


def test_dockerfile() -> None:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    text = DOCKERFILE.read_text()
    assert "DJANGO_SETTINGS_MODULE=settings.production" in text
    assert "settings.wsgi" in text, "Dockerfile CMD must serve settings.wsgi"
    assert re.search(r"^USER\s+(?!root\b)\S+", text, re.MULTILINE), "image must run as non-root"
    assert not re.search(r"^(ENV|ARG)\s.*SECRET_KEY", text, re.MULTILINE), "no baked-in SECRET_KEY"


def test_the_images_collectstatic_runs_under_production_settings(tmp_path: Path) -> None:
    """The Dockerfile's `collectstatic` step, with exactly the environment its RUN line gives it,
    passes settings.production's refusals (no database or broker is reached at build time)."""
    logical_lines = re.split(r"(?<!\\)\n", DOCKERFILE.read_text())  # a line ending in \ goes on
    run = next(line for line in logical_lines if line.startswith("RUN") and "collectstatic" in line)
    words = shlex.split(run.replace("\\\n", " ").removeprefix("RUN "))
    assigned = dict(word.split("=", 1) for word in words[: words.index("python")])
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= set(assigned), assigned
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "settings.production",
        "STATIC_ROOT": str(tmp_path / "static"),
        **assigned,
    }

    result = manage_run(*words[words.index("manage.py") + 1 :], "--dry-run", env=env, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "static files copied" in result.stdout + result.stderr, result.stdout


def _command_exists(command: str) -> bool:
    in_repo = (ROOT / app / "management" / "commands" / f"{command}.py" for app in REPO_APPS)
    if any(path.is_file() for path in in_repo):
        return True
    return any(importlib.util.find_spec(f"{package}.{command}") for package in COMMAND_PACKAGES)


def test_every_management_command_named_in_compose_exists() -> None:
    named = set(re.findall(r"manage\.py\W+(\w+)", COMPOSE.read_text()))
    assert {"migrate", "outbox_grants", "outbox_relay", "rundramatiq"} <= named, f"manage.py commands: {named}"
    missing = sorted(command for command in named if not _command_exists(command))
    assert not missing, f"compose.yaml names management commands that do not exist: {missing}"


def test_worker_polls_redis_every_100_ms() -> None:
    """The worker lowers Dramatiq's idle poll from 1000 ms to 100 ms, keeping the shared environment."""
    worker = _services()["worker"]
    assert worker["environment"]["dramatiq_worker_timeout"] == "100"
    assert worker["environment"]["DATABASE_URL"] == _services()["web"]["environment"]["DATABASE_URL"]


def test_every_secret_is_required_and_none_has_a_default() -> None:
    """Each password and key comes from the environment, `${VAR:?message}` wherever it is used."""
    text = COMPOSE.read_text()
    for name in REQUIRED_SECRETS:
        uses = re.findall(rf"\$\{{{name}\b[^}}]*\}}", text)
        assert uses, f"compose.yaml does not use {name}"
        for use in uses:
            assert _required(use, name), f"{name} must be required, not defaulted: {use}"


def test_postgres_superuser_is_postgres_and_an_init_script_creates_the_roles() -> None:
    postgres = _services()["postgres"]
    env = _environment(postgres)
    assert env["POSTGRES_USER"] == "postgres"
    assert "POSTGRES_DB" not in env, "the init script creates the app's database, owned by the owner role"
    for name in ("POSTGRES_PASSWORD", "SHOP_OWNER_PASSWORD", "SHOP_APP_PASSWORD"):
        assert _required(env[name], name), f"postgres: {name} is {env[name]!r}"
    mounts = [volume.split(":") for volume in postgres["volumes"]]
    init = [mount for mount in mounts if mount[1].startswith(INITDB_DIR)]
    assert init, f"no init script mounted into {INITDB_DIR}: {postgres['volumes']}"
    source, target, mode = init[0]
    assert (ROOT / source).resolve() == INIT_SCRIPT, source
    assert target.endswith(".sh"), init[0]
    assert mode == "ro", init[0]
    assert os.access(INIT_SCRIPT, os.X_OK), "the entrypoint runs an executable .sh (else it sources it)"
    assert "-h" in postgres["healthcheck"]["test"], "pg_isready over TCP: the socket answers during init"


# Stand-ins for the secrets, so that a URL can be parsed as Compose would pass it.
STAND_INS = {name: f"value-of-{name}" for name in REQUIRED_SECRETS}


def _database_url(service: dict[str, Any]) -> Any:
    return urlsplit(_interpolate(_environment(service)["DATABASE_URL"], STAND_INS))


def test_processes_connect_as_the_app_role_and_migrate_as_the_owner() -> None:
    """web, relay and workers connect as shop_app; only migrate connects as the owner; nothing as
    the superuser."""
    services = _services()
    for name in PROCESS_SERVICES:
        url = _database_url(services[name])
        assert url.username == APP_ROLE, f"{name} connects as {url.username}"
        assert url.password == STAND_INS["SHOP_APP_PASSWORD"], f"{name}: password {url.password!r}"
        assert (url.hostname, url.path) == ("postgres", f"/{DATABASE}"), name
    owner = _database_url(services["migrate"])
    assert owner.username == OWNER_ROLE
    assert owner.password == STAND_INS["SHOP_OWNER_PASSWORD"], owner.password
    assert (owner.hostname, owner.path) == ("postgres", f"/{DATABASE}")
    # Apart from the database URL, migrate has the processes' environment.
    migrate_env = _environment(services["migrate"])
    web_env = _environment(services["web"])
    assert {k: v for k, v in migrate_env.items() if k != "DATABASE_URL"} == {
        k: v for k, v in web_env.items() if k != "DATABASE_URL"
    }


def test_redis_url_carries_the_password() -> None:
    services = _services()
    for name in APP_SERVICES:
        url = urlsplit(_interpolate(_environment(services[name])["REDIS_URL"], STAND_INS))
        assert (url.scheme, url.hostname, url.port, url.path) == ("redis", "redis", 6379, "/0"), f"{name}: {url}"
        assert url.password == STAND_INS["REDIS_PASSWORD"], f"{name}: {url}"


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """compose's Redis command, run on a local redis-server on a free port; yields (port, password)."""
    password = secrets.token_hex(16)
    port = free_port()
    service = _services()["redis"]
    command = _command(service)
    assert command[:2] == ["sh", "-c"], command
    script = _interpolate(command[2], {}) + f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ''"
    env = {**os.environ, **{k: _interpolate(v, {"REDIS_PASSWORD": password}) for k, v in _environment(service).items()}}
    server = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            assert server.poll() is None, "compose's redis command exited"
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
            except redis.AuthenticationError:
                return True
            except redis.ConnectionError:
                return False
            return True

        wait_until(answers, timeout=15, what="compose's redis-server to start")
        yield port, password
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_compose_redis_refuses_clients_without_the_password(compose_redis: tuple[int, str]) -> None:
    """compose's Redis answers only clients that authenticate, as REDIS_URL does."""
    port, password = compose_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=5).ping()
    url = _interpolate(_environment(_services()["web"])["REDIS_URL"], {"REDIS_PASSWORD": password})
    assert redis.Redis.from_url(url.replace("@redis:6379", f"@127.0.0.1:{port}"), socket_timeout=5).ping()


def test_compose_redis_healthcheck_passes_only_when_it_authenticates(
    compose_redis: tuple[int, str], tmp_path: Path
) -> None:
    """The healthcheck's redis-cli authenticates: a wrong password is unhealthy (redis-cli alone exits
    0 on NOAUTH)."""
    port, password = compose_redis
    test = _services()["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    # The container's redis-cli talks to the default port: point it at this server's.
    real = shutil.which("redis-cli")
    assert real, "redis-cli is not on PATH (Debian: apt-get install redis-tools)"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "redis-cli").write_text(f'#!/bin/sh\nexec {real} -p {port} "$@"\n')
    (shim / "redis-cli").chmod(0o755)

    def check(secret: str) -> int:
        env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "REDIS_PASSWORD": secret}
        return subprocess.run(["sh", "-c", _interpolate(test[1], {})], env=env, timeout=30, check=False).returncode

    assert check(password) == 0
    assert check("wrong-" + password) != 0
    assert check("") != 0


def test_docker_compose_config_accepts_the_file_and_names_each_missing_secret() -> None:
    """`docker-compose config` (Compose's own validation) accepts compose.yaml with the secrets set,
    and refuses it without one, naming it."""
    values = {name: secrets.token_hex(8) for name in REQUIRED_SECRETS}
    base = {key: value for key, value in os.environ.items() if key not in REQUIRED_SECRETS}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return _docker_compose_config(COMPOSE, env=env)

    valid = config({**base, **values})
    assert valid.returncode == 0, valid.stdout + valid.stderr
    for name in REQUIRED_SECRETS:
        missing = config({**base, **{k: v for k, v in values.items() if k != name}})
        assert missing.returncode != 0, f"compose.yaml is accepted without {name}"
        assert name in missing.stderr, missing.stderr


def _docker_compose_config(*files: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f <file>... config`: the files merged and interpolated from `env`, as YAML."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make services` installs it (Debian: apt-get install docker-compose)"
    return subprocess.run(
        [binary, *(arg for file in files for arg in ("-f", str(file))), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def rabbitmq_secrets() -> tuple[dict[str, str], dict[str, str]]:
    """(this environment without compose's secrets, a value for each secret the two files take)."""
    names = (*REQUIRED_SECRETS, RABBITMQ_SECRET)
    base = {key: value for key, value in os.environ.items() if key not in names}
    return base, {name: secrets.token_hex(8) for name in names}


def _merged(env: dict[str, str], *files: Path) -> dict[str, Any]:
    result = _docker_compose_config(*files, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def test_the_rabbitmq_override_moves_every_app_service_to_rabbitmq(
    rabbitmq_secrets: tuple[dict[str, str], dict[str, str]],
) -> None:
    """compose.yaml merged with compose.rabbitmq.yaml (as docker-compose merges them): every app service
    gets BROKER_URL for the rabbitmq service, as the user shop with RABBITMQ_PASSWORD, and quorum queues;
    the long-running ones wait for RabbitMQ to be healthy. Nothing else of compose.yaml changes."""
    base, values = rabbitmq_secrets
    env = {**base, **values}
    alone = _merged(env, COMPOSE)["services"]
    merged = _merged(env, COMPOSE, RABBITMQ_COMPOSE)["services"]

    assert set(merged) == set(alone) | {"rabbitmq"}
    for name in APP_SERVICES:
        merged_env, alone_env = _environment(merged[name]), _environment(alone[name])
        assert {k: v for k, v in merged_env.items() if k not in alone_env} == {
            "BROKER_URL": merged_env["BROKER_URL"],
            "OUTBOX_RABBITMQ_QUEUE_TYPE": "quorum",
        }, f"{name}: the override adds exactly BROKER_URL and the queue type"
        assert {k: merged_env[k] for k in alone_env} == alone_env, f"{name}: compose.yaml's environment kept"
        broker = merged_env["BROKER_URL"]
        assert broker.startswith(f"amqp://{RABBITMQ_USER}:"), f"{name}: BROKER_URL is {broker!r}"
        url = urlsplit(broker)
        assert (url.hostname, url.port, url.path) == ("rabbitmq", 5672, "/%2F"), f"{name}: {url}"
        assert (url.username, url.password) == (RABBITMQ_USER, values[RABBITMQ_SECRET]), f"{name}: {url}"
    for name in PROCESS_SERVICES:
        assert _conditions(merged[name]) == {**_conditions(alone[name]), "rabbitmq": "service_healthy"}, name
    # migrate reaches no broker: it starts once PostgreSQL is healthy, as in compose.yaml.
    assert _conditions(merged["migrate"]) == _conditions(alone["migrate"])


def test_the_rabbitmq_service_is_healthchecked_restarted_and_keeps_its_data(
    rabbitmq_secrets: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The rabbitmq service: the user shop with RABBITMQ_PASSWORD, a healthcheck, a restart policy, and
    its data on a named volume under a fixed node name (rabbit@<hostname>: RabbitMQ's data directory
    is named after it, so a recreated container with another hostname would start empty)."""
    base, values = rabbitmq_secrets
    data = _merged({**base, **values}, COMPOSE, RABBITMQ_COMPOSE)
    rabbitmq = data["services"]["rabbitmq"]
    assert rabbitmq["image"] in {"rabbitmq:3.13", "rabbitmq:3.13-management"}, rabbitmq["image"]
    assert _environment(rabbitmq) == {
        "RABBITMQ_DEFAULT_USER": RABBITMQ_USER,
        "RABBITMQ_DEFAULT_PASS": values[RABBITMQ_SECRET],
    }
    test = rabbitmq.get("healthcheck", {}).get("test", [])
    assert test[:3] == ["CMD", "rabbitmq-diagnostics", "-q"], test
    assert test[3:] in (["ping"], ["check_port_connectivity"]), test
    assert rabbitmq.get("restart") in {"always", "unless-stopped"}, rabbitmq.get("restart")
    assert rabbitmq.get("hostname") == "rabbitmq", "a fixed hostname keeps the node name, and so the data"
    mounts = [volume.split(":")[:2] for volume in rabbitmq.get("volumes", [])]
    assert ["rabbitmqdata", RABBITMQ_DATA] in mounts, rabbitmq.get("volumes")
    assert "rabbitmqdata" in data.get("volumes", {}), "the rabbitmqdata volume is not declared"


def test_the_rabbitmq_override_names_rabbitmq_password_when_it_is_missing(
    rabbitmq_secrets: tuple[dict[str, str], dict[str, str]],
) -> None:
    base, values = rabbitmq_secrets
    missing = _docker_compose_config(
        COMPOSE, RABBITMQ_COMPOSE, env={**base, **{k: v for k, v in values.items() if k != RABBITMQ_SECRET}}
    )
    assert missing.returncode != 0, "compose.rabbitmq.yaml is accepted without RABBITMQ_PASSWORD"
    assert RABBITMQ_SECRET in missing.stderr, missing.stderr


def _strings(node: Any) -> Iterator[str]:
    """Every string value in parsed YAML, however deep."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def test_the_rabbitmq_password_is_required_wherever_it_is_used_and_never_written_down() -> None:
    """RABBITMQ_PASSWORD is `${RABBITMQ_PASSWORD:?message}` in every use, and every AMQP URL's password
    is that variable: no default, no literal password (guest's included)."""
    text = RABBITMQ_COMPOSE.read_text()
    for name in (RABBITMQ_SECRET, *REQUIRED_SECRETS):
        for use in re.findall(rf"\$\{{{name}\b[^}}]*\}}", text):
            assert _required(use, name), f"{name} must be required, not defaulted: {use}"
    assert RABBITMQ_SECRET not in COMPOSE.read_text(), "compose.yaml alone must not require RABBITMQ_PASSWORD"
    override = yaml.safe_load(text)
    password = _environment(override["services"]["rabbitmq"])["RABBITMQ_DEFAULT_PASS"]
    assert _required(password, RABBITMQ_SECRET), f"RABBITMQ_DEFAULT_PASS is {password!r}"
    urls = [value for value in _strings(override) if "amqp" in value]
    assert urls, "compose.rabbitmq.yaml sets no AMQP URL"
    for url in urls:
        match = re.fullmatch(rf"amqp://{RABBITMQ_USER}:(\$\{{[^}}]+\}})@rabbitmq:5672/%2F", url)
        assert match, f"an AMQP URL must be amqp://{RABBITMQ_USER}:${{{RABBITMQ_SECRET}:?...}}@rabbitmq: {url}"
        assert _required(match.group(1), RABBITMQ_SECRET), url
    assert "guest" not in text, "RabbitMQ's guest user is for localhost only: the app connects as shop"


def test_the_rabbitmq_overrides_environment_selects_rabbitmq_with_quorum_queues(
    rabbitmq_secrets: tuple[dict[str, str], dict[str, str]],
) -> None:
    """A worker's merged environment, under settings.production: BROKER_URL wins over the REDIS_URL that
    compose.yaml still sets, and the broker is the outbox's RabbitMQ broker with quorum queues."""
    base, values = rabbitmq_secrets
    worker = _merged({**base, **values}, COMPOSE, RABBITMQ_COMPOSE)["services"]["worker"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **_environment(worker)}
    assert env["REDIS_URL"].startswith("redis://"), "compose.yaml's REDIS_URL stays set"
    script = (
        "from django.conf import settings; b = settings.DRAMATIQ_BROKER; "
        "print(settings.BROKER, b['BROKER'], b['OPTIONS']['url'] == settings.BROKER_URL, b['OPTIONS']['queue_type'])"
    )

    result = manage_run("shell", "-c", script, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "rabbitmq outbox.consume.rabbitmq.OutboxRabbitmqBroker True quorum", (
        result.stdout + result.stderr
    )


def _server() -> tuple[str, str, str]:
    """The suite's PostgreSQL server: host, port, and a superuser to create roles with."""
    database = settings.DATABASES["default"]
    return database["HOST"] or "127.0.0.1", str(database["PORT"] or 5432), database["USER"] or "postgres"


@pytest.fixture
def initialised_database() -> Iterator[dict[str, str]]:
    """scripts/postgres-init.sh run on the suite's server with throwaway names; dropped afterwards."""
    host, port, superuser = _server()
    suffix = secrets.token_hex(4)
    names = {
        "SHOP_DATABASE": f"init_db_{suffix}",
        "SHOP_OWNER": f"init_owner_{suffix}",
        "SHOP_APP_ROLE": f"init_app_{suffix}",
        "SHOP_OWNER_PASSWORD": secrets.token_hex(12),
        "SHOP_APP_PASSWORD": secrets.token_hex(12),
    }
    admin_url = f"postgres://{superuser}@{host}:{port}/postgres"
    env = {**os.environ, "PGHOST": host, "PGPORT": port, "POSTGRES_USER": superuser, "POSTGRES_DB": "postgres", **names}
    try:
        result = subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        yield names
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names["SHOP_DATABASE"]))
            )
            for role in (names["SHOP_APP_ROLE"], names["SHOP_OWNER"]):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_init_script_makes_an_owner_who_migrates_and_an_app_role_that_owns_nothing(
    initialised_database: dict[str, str],
) -> None:
    """The roles compose uses: neither is a superuser, the owner owns the database and migrates it
    without superuser rights, and the app role then passes `check --deploy` (it owns nothing)."""
    names = initialised_database
    database, owner, app = names["SHOP_DATABASE"], names["SHOP_OWNER"], names["SHOP_APP_ROLE"]
    host, port, superuser = _server()
    with psycopg.connect(f"postgres://{superuser}@{host}:{port}/postgres", autocommit=True) as admin:
        roles = admin.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolpassword IS NOT NULL "
            "FROM pg_authid WHERE rolname = ANY(%s) ORDER BY rolname = %s",
            [[owner, app], owner],
        ).fetchall()
        assert roles == [(app, False, False, False, True, True), (owner, False, False, False, True, True)]
        (database_owner,) = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [database]
        ).fetchone() or (None,)
        assert database_owner == owner

    owner_url = f"postgres://{owner}:{names['SHOP_OWNER_PASSWORD']}@{host}:{port}/{database}"
    app_url = f"postgres://{app}:{names['SHOP_APP_PASSWORD']}@{host}:{port}/{database}"
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    migrated = manage_run(
        "migrate",
        "--noinput",
        "-v0",
        env={**base, "DJANGO_SETTINGS_MODULE": "settings.test", "DATABASE_URL": owner_url},
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    with psycopg.connect(owner_url) as as_owner:
        (event_owner,) = as_owner.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'outbox_event'::regclass"
        ).fetchone() or (None,)
        assert event_owner == owner
    # compose's migrate step goes on as the owner: the app role gets exactly its grants.
    granted = manage_run(
        "outbox_grants",
        "--role",
        app,
        "--apply",
        env={**base, "DJANGO_SETTINGS_MODULE": "settings.test", "DATABASE_URL": owner_url},
    )
    assert granted.returncode == 0, granted.stdout + granted.stderr
    with psycopg.connect(app_url, autocommit=True) as as_app:
        assert as_app.execute("SELECT count(*) FROM outbox_event").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_app.execute("TRUNCATE outbox_event")

    production = {
        **base,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "OUTBOX_SEAL_KEY": "hex:" + secrets.token_hex(32),
        "REDIS_URL": settings.REDIS_URL,
    }
    for url, expected in ((app_url, []), (owner_url, ["outbox.W003"])):
        result = manage_run(
            "check", "--deploy", "--settings=settings.production", env={**production, "DATABASE_URL": url}
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert sorted(set(re.findall(r"outbox\.W\d+", output))) == expected, output
