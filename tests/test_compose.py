"""Structure of compose.yaml and the Dockerfile (no Docker engine needed: YAML and text checks)."""

import importlib.util
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.processes import manage_run

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

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
    expected = {
        "migrate": "migrate",
        "relay": "outbox_relay",
        "worker": "rundramatiq",
        "worker-inventory": "rundramatiq",
    }
    for name, management_command in expected.items():
        command = _command(services[name])
        assert "manage.py" in command, f"{name} must run manage.py: {command}"
        following = command[command.index("manage.py") + 1]
        assert following == management_command, f"{name} runs manage.py {following}"


def test_workers_cover_every_consumer_queue_once() -> None:
    """Each consumer's queue is served by exactly one worker service; inventory has its own."""
    import dramatiq

    from outbox import routing

    routing.load_actors()
    broker = dramatiq.get_broker()
    queues = {broker.get_actor(name).queue_name for name in routing.route_names()}
    served: list[str] = []
    services = _services()
    for name in ("worker", "worker-inventory"):
        command = _command(services[name])
        served += command[command.index("--queues") + 1 :]
    assert sorted(served) == sorted(queues)
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
    assert {"migrate", "outbox_relay", "rundramatiq"} <= named, f"manage.py commands: {named}"
    missing = sorted(command for command in named if not _command_exists(command))
    assert not missing, f"compose.yaml names management commands that do not exist: {missing}"


def test_worker_polls_redis_every_100_ms() -> None:
    """The worker lowers Dramatiq's idle poll from 1000 ms to 100 ms, keeping the shared environment."""
    worker = _services()["worker"]
    assert worker["environment"]["dramatiq_worker_timeout"] == "100"
    assert worker["environment"]["DATABASE_URL"] == _services()["web"]["environment"]["DATABASE_URL"]
