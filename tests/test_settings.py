"""The settings modules, as `manage.py` loads them in a fresh process with a controlled environment."""

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg import sql

from settings.base import EMBEDDED_SECRET_KEY
from tests.processes import REPO, database_url, manage_run
from tooling.processes import free_port

TIMEOUT = 120  # seconds for any one manage.py run
# Variables that select a deployment: removed from every child's environment, then set per test.
SELECTING_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "BROKER_URL",
    "SECRET_KEY",
    "OUTBOX_SEAL_KEY",
    "DJANGO_SETTINGS_MODULE",
    "DEBUG",
    "SQLITE_PATH",
)
REAL_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
REAL_REDIS_URL = settings.REDIS_URL

# Prints one KEY=value line per fact; other shell output (auto-import notices) is ignored.
REPORT_SCRIPT = """
import dramatiq
from django.conf import settings
from django.db import connection

with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode" if connection.vendor == "sqlite" else "SELECT 'n/a'")
    journal_mode = cursor.fetchone()[0]
print("ENGINE=" + settings.DATABASES["default"]["ENGINE"])
print("JOURNAL_MODE=" + str(journal_mode).lower())
print("BROKER=" + type(dramatiq.get_broker()).__name__)
"""


def _env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SELECTING_VARS}
    env.update(values)
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return manage_run(*args, env=env, timeout=TIMEOUT)


def _report(env: dict[str, str]) -> dict[str, str]:
    result = _manage("shell", "-c", REPORT_SCRIPT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "=" in line]
    return dict(line.split("=", 1) for line in lines)


def _production_env(**values: str) -> dict[str, str]:
    """What settings.production needs: real secrets, PostgreSQL and Redis; `values` override."""
    return _env(
        **{
            "SECRET_KEY": secrets.token_urlsafe(50),
            "OUTBOX_SEAL_KEY": "hex:" + secrets.token_hex(32),
            "DATABASE_URL": REAL_DATABASE_URL,
            "REDIS_URL": REAL_REDIS_URL,
            **values,
        }
    )


def _role_url(role: str) -> str:
    """The test database's URL, connecting as `role` (the local server trusts loopback)."""
    s = connection.settings_dict
    return f"postgres://{role}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def app_role(db: None) -> Iterator[str]:
    """A throwaway LOGIN role on the migrated test database: no superuser, owns nothing. Dropped after."""
    role = "check_app_" + secrets.token_hex(4)
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(sql.Identifier(role)))
        try:
            yield role
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _deploy_check(env: dict[str, str]) -> tuple[int, str]:
    result = _manage("check", "--deploy", "--fail-level", "WARNING", "--settings=settings.production", env=env)
    return result.returncode, result.stdout + result.stderr


def test_production_settings_pass_deploy_checks_with_a_real_secret_key(app_role: str) -> None:
    """`check --deploy` on settings.production reports no issues, warnings included, given a real
    secret, a seal key of its own, and a database role that is no superuser and owns nothing."""
    returncode, output = _deploy_check(_production_env(DATABASE_URL=_role_url(app_role)))

    assert returncode == 0, output
    assert "System check identified no issues" in output, output


def test_deploy_checks_warn_when_the_app_connects_as_a_superuser(db: None) -> None:
    """As the superuser (who is also the tables' owner) `check --deploy` warns twice, saying what to do."""
    returncode, output = _deploy_check(_production_env(DATABASE_URL=database_url()))

    assert returncode != 0, output
    assert "(outbox.W002) The app connects to PostgreSQL as 'postgres', a superuser" in output, output
    assert "(outbox.W003)" in output, output
    assert re.search(r"outbox_event\b[^(]*\(owner postgres\)", output), output
    assert "Connect the app as a role that owns nothing: see docs/operations.md#database-roles." in output


def test_deploy_checks_warn_when_the_app_role_is_a_member_of_the_tables_owner(app_role: str) -> None:
    """A role that is no superuser but may act as the owner of the event log's tables (membership)
    gets outbox.W003 alone."""
    with psycopg.connect(database_url(), autocommit=True) as admin:
        owner = admin.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'outbox_event'::regclass")
        (owner_name,) = owner.fetchone() or ("",)
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner_name), sql.Identifier(app_role)))

    returncode, output = _deploy_check(_production_env(DATABASE_URL=_role_url(app_role)))

    assert returncode != 0, output
    assert "outbox.W002" not in output, output
    assert f"(outbox.W003) The app's database role {app_role!r} owns the event log's tables" in output, output
    assert re.search(rf"outbox_event\b[^(]*\(owner {owner_name}\)", output), output
    assert "outbox_grants --role <app role> --apply" in output, output


def test_deploy_checks_say_when_the_database_role_could_not_be_checked() -> None:
    """An unreachable database makes the role check a warning that it could not run, not a crash."""
    returncode, output = _deploy_check(_production_env(DATABASE_URL=f"postgres://app@127.0.0.1:{free_port()}/shop"))

    assert returncode != 0, output
    assert "(outbox.W004) Could not check the database role the app connects as" in output, output
    assert "Traceback" not in output, output


def test_production_settings_refuse_to_start_without_secret_key() -> None:
    """settings.production exits non-zero without SECRET_KEY, naming it and saying how to make one."""
    env = _env(DATABASE_URL=REAL_DATABASE_URL, REDIS_URL=REAL_REDIS_URL)

    result = _manage("check", "--settings=settings.production", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "SECRET_KEY is not set" in output, output
    assert "secrets.token_urlsafe(50)" in output, output
    assert "set it in the environment" in output, output


@pytest.mark.parametrize(
    "key", [EMBEDDED_SECRET_KEY, "django-insecure-" + secrets.token_urlsafe(40)], ids=["embedded", "django-insecure"]
)
def test_production_settings_refuse_the_public_development_key(key: str) -> None:
    """The key published in settings/base.py (and any "django-insecure" key) stops production at start."""
    result = _manage("check", "--settings=settings.production", env=_production_env(SECRET_KEY=key))

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "SECRET_KEY is the embedded development key (or another 'django-insecure' key)" in output, output
    assert "secrets.token_urlsafe(50)" in output, output


def test_production_settings_refuse_to_start_without_database_url() -> None:
    """Without DATABASE_URL production stops, instead of running on SQLite with files for e-mail."""
    env = _production_env()
    del env["DATABASE_URL"]

    result = _manage("check", "--settings=settings.production", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "DATABASE_URL is not set" in output, output
    assert "set DATABASE_URL=postgres://" in output, output


def test_production_settings_refuse_a_database_other_than_postgresql(tmp_path: Path) -> None:
    """A DATABASE_URL naming SQLite is refused too: the event log's guarantees are PostgreSQL's."""
    env = _production_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    result = _manage("check", "--settings=settings.production", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "production settings need PostgreSQL" in output, output


def test_production_settings_refuse_to_start_without_a_broker_url() -> None:
    """Without BROKER_URL (or REDIS_URL) production stops, instead of publishing to the in-process
    stub broker, and says how to name either broker."""
    env = _production_env()
    del env["REDIS_URL"]

    result = _manage("check", "--settings=settings.production", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "BROKER_URL is not set" in output, output
    assert "stub broker" in output, output
    assert "redis://" in output, output
    assert "amqp://" in output, output


BROKER_REPORT_SCRIPT = """
import dramatiq
from django.conf import settings

broker = dramatiq.get_broker()
print("BROKER=" + type(broker).__name__)
print("KIND=" + settings.BROKER)
params = getattr(broker, "parameters", None)
print("HOST=" + str(getattr(params, "host", None)))
print("VHOST=" + str(getattr(params, "virtual_host", None)))
print("TLS=" + str(getattr(params, "ssl_options", None) is not None))
print("CONFIRMS=" + str(getattr(broker, "confirm_delivery", None)))
print("QUEUE_TYPE=" + str(getattr(broker, "queue_type", None)))
"""


@pytest.mark.parametrize(
    ("url", "host", "vhost", "tls"),
    [
        ("amqp://shop:s3cret@rabbit.example.com:5672/%2F", "rabbit.example.com", "/", "False"),
        ("amqps://shop:s3cret@rabbit.example.com:5671/shop", "rabbit.example.com", "shop", "True"),
    ],
)
def test_broker_url_amqp_selects_rabbitmq_with_confirms_over_redis_url(
    url: str, host: str, vhost: str, tls: str
) -> None:
    """BROKER_URL=amqp(s):// selects RabbitMQ, publisher confirms on, even with REDIS_URL also set
    (BROKER_URL wins); the queue type comes from OUTBOX_RABBITMQ_QUEUE_TYPE."""
    env = _production_env(BROKER_URL=url, OUTBOX_RABBITMQ_QUEUE_TYPE="quorum")

    result = _manage("shell", "--settings=settings.production", "-c", BROKER_REPORT_SCRIPT, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    report = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert report == {
        "BROKER": "OutboxRabbitmqBroker",
        "KIND": "rabbitmq",
        "HOST": host,
        "VHOST": vhost,
        "TLS": tls,
        "CONFIRMS": "True",
        "QUEUE_TYPE": "quorum",
    }


def test_broker_url_redis_selects_redis() -> None:
    env = _production_env(BROKER_URL=REAL_REDIS_URL)
    del env["REDIS_URL"]

    result = _manage("shell", "--settings=settings.production", "-c", BROKER_REPORT_SCRIPT, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKER=WakingRedisBroker" in result.stdout
    assert "KIND=redis" in result.stdout


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"BROKER_URL": "kafka://broker:9092"}, "BROKER_URL starts with 'kafka', which names no broker"),
        ({"BROKER_URL": "127.0.0.1:6379"}, "which names no broker this project runs: use redis://"),
        ({"OUTBOX_RABBITMQ_QUEUE_TYPE": "stream"}, "OUTBOX_RABBITMQ_QUEUE_TYPE='stream' is not a queue type this"),
    ],
)
def test_a_broker_setting_that_names_nothing_usable_stops_with_what_to_set(
    values: dict[str, str], expected: str
) -> None:
    env = _production_env(BROKER_URL=values.pop("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"), **values)

    result = _manage("check", "--settings=settings.production", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert "ImproperlyConfigured" in output, output


PRODUCTION_REPORT_SCRIPT = """
import dramatiq
from django.conf import settings

pool = dramatiq.get_broker().client.connection_pool
print("BROKER=" + type(dramatiq.get_broker()).__name__)
print("CONNECTION=" + pool.connection_class.__name__)
print("REDIS_HOST=" + str(pool.connection_kwargs.get("host")))
print("REDIS_PASSWORD=" + str(pool.connection_kwargs.get("password")))
print("EMAIL_BACKEND=" + settings.EMAIL_BACKEND)
print("TOOLING=" + str("tooling" in settings.INSTALLED_APPS))
"""


def test_production_settings_take_a_tls_redis_url_with_a_password() -> None:
    """`rediss://:<password>@host` gives the broker (and so the relay and /healthz, which use its
    client) TLS connections that authenticate; e-mail goes over SMTP; the development tools are
    not installed."""
    env = _production_env(REDIS_URL="rediss://:s3cret@redis.example.com:6380/0")

    result = _manage("shell", "--settings=settings.production", "-c", PRODUCTION_REPORT_SCRIPT, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    report = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert report["BROKER"] == "WakingRedisBroker"
    assert report["CONNECTION"] == "SSLConnection"
    assert report["REDIS_HOST"] == "redis.example.com"
    assert report["REDIS_PASSWORD"] == "s3cret"
    assert report["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert report["TOOLING"] == "False", "production installs the development tools"


WHICH_SETTINGS_SCRIPT = """
import importlib, sys
importlib.import_module(sys.argv[1])
from django.conf import settings
print("SETTINGS=" + settings.SETTINGS_MODULE)
"""


@pytest.mark.parametrize("entry_point", ["settings.wsgi", "settings.asgi"])
def test_wsgi_and_asgi_default_to_production_settings(entry_point: str) -> None:
    """A server started on the WSGI or ASGI application with no DJANGO_SETTINGS_MODULE runs
    settings.production: with no SECRET_KEY it refuses to start, never falling back to the public key."""

    def load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WHICH_SETTINGS_SCRIPT, entry_point],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    loaded = load(_production_env())
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert "SETTINGS=settings.production" in loaded.stdout

    refused = load(_env(DATABASE_URL=REAL_DATABASE_URL, REDIS_URL=REAL_REDIS_URL))
    assert refused.returncode != 0, refused.stdout
    assert "SECRET_KEY is not set" in refused.stderr, refused.stderr


def test_local_settings_refuse_the_public_key_on_postgresql() -> None:
    """settings.local (manage.py's default) on PostgreSQL with the embedded key stops, saying which
    keys to set; with a key of its own it starts."""
    env = _env(DJANGO_SETTINGS_MODULE="settings.local", DATABASE_URL=REAL_DATABASE_URL, REDIS_URL=REAL_REDIS_URL)

    result = _manage("check", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "SECRET_KEY is the embedded development key, which is public" in output, output
    assert "export SECRET_KEY=" in output, output
    assert "OUTBOX_SEAL_KEY=hex:" in output, output

    explicit = _manage("check", env={**env, "SECRET_KEY": EMBEDDED_SECRET_KEY})
    assert explicit.returncode != 0, "the public key is refused when set explicitly too"

    own = _manage("check", env={**env, "SECRET_KEY": secrets.token_urlsafe(50)})
    assert own.returncode == 0, own.stdout + own.stderr


def test_embedded_default_uses_sqlite_in_wal_mode_and_the_stub_broker(tmp_path: Path) -> None:
    """With no DATABASE_URL or REDIS_URL, settings.local runs on SQLite in WAL mode with Dramatiq's stub broker."""
    sqlite_path = tmp_path / "embedded.sqlite3"
    env = _env(DJANGO_SETTINGS_MODULE="settings.local", SQLITE_PATH=str(sqlite_path))

    report = _report(env)

    assert report["ENGINE"] == "django.db.backends.sqlite3"
    # A new SQLite file starts in "delete" mode; only the connection's init_command makes it WAL.
    assert report["JOURNAL_MODE"] == "wal"
    assert report["BROKER"] == "StubBroker"
    assert sqlite_path.exists(), "the database was not created at SQLITE_PATH"


def test_database_url_and_redis_url_select_postgresql_and_redis() -> None:
    """With DATABASE_URL and REDIS_URL set, settings.local runs on PostgreSQL with Dramatiq's Redis broker."""
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local",
        DATABASE_URL=REAL_DATABASE_URL,
        REDIS_URL=REAL_REDIS_URL,
        SECRET_KEY=secrets.token_urlsafe(50),
    )

    report = _report(env)

    assert report["ENGINE"] == "outbox.backends.postgresql"  # Django's backend, events written with COMMIT
    assert report["BROKER"] == "WakingRedisBroker"  # Dramatiq's RedisBroker, waking idle workers on enqueue


ADMIN_LOGIN_SCRIPT = """
import re
from django.test import Client

client = Client(HTTP_HOST="127.0.0.1")
page = client.get("/admin/login/")
print("LOGIN=" + str(page.status_code))
for url in re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.content.decode()):
    css = client.get(url)
    body = b"".join(css.streaming_content) if css.streaming else css.content
    print("CSS=%s|%s|%s|%d" % (url, css.status_code, css["Content-Type"], len(body)))
"""


def test_local_settings_with_debug_off_serve_the_admin_and_its_css_without_collectstatic(tmp_path: Path) -> None:
    """settings.local with DEBUG=0 and nothing collected: the admin login page answers 200, and the
    stylesheets it links to are served from the apps' folders."""
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local",
        DEBUG="0",
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        STATIC_ROOT=str(tmp_path / "static-never-collected"),
    )

    result = _manage("shell", "-c", ADMIN_LOGIN_SCRIPT, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOGIN=200" in result.stdout, result.stdout
    stylesheets = [line.split("=", 1)[1].split("|") for line in result.stdout.splitlines() if line.startswith("CSS=")]
    assert stylesheets, f"the login page links no stylesheet: {result.stdout}"
    for url, status, content_type, size in stylesheets:
        assert status == "200", f"{url}: {status}"
        assert content_type.startswith("text/css"), f"{url}: {content_type}"
        assert int(size) > 0, url
    assert "/static/admin/css/base.css" in {url for url, *_ in stylesheets}


SEAL_KEY_SCRIPT = """
from outbox.eventlog.sealing import seal_key
print("KEY=" + seal_key().hex())
"""


def _seal_key(**values: str) -> str:
    result = _manage("shell", "-c", SEAL_KEY_SCRIPT, env=_env(DJANGO_SETTINGS_MODULE="settings.local", **values))
    assert result.returncode == 0, result.stdout + result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("KEY="))


def test_seal_key_comes_from_the_environment_and_survives_a_secret_key_rotation(tmp_path: Path) -> None:
    """OUTBOX_SEAL_KEY from the environment seals the event log whatever SECRET_KEY is; without it the
    key follows SECRET_KEY, so rotating SECRET_KEY would change it."""
    sqlite = str(tmp_path / "db.sqlite3")
    old = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY="old-" + secrets.token_urlsafe(20), OUTBOX_SEAL_KEY="seal-1")
    new = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY="new-" + secrets.token_urlsafe(20), OUTBOX_SEAL_KEY="seal-1")
    assert old == new == "KEY=" + b"seal-1".hex()

    derived_old = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY="old-secret", OUTBOX_SEAL_KEY="")
    derived_new = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY="new-secret", OUTBOX_SEAL_KEY="")
    assert derived_old != derived_new


def test_deploy_checks_warn_when_the_seal_key_hangs_on_secret_key() -> None:
    """Without OUTBOX_SEAL_KEY, `check --deploy` warns (outbox.W001) and says how to keep the key."""
    returncode, output = _deploy_check(_production_env(OUTBOX_SEAL_KEY=""))

    assert returncode != 0, output
    assert "outbox.W001" in output, output
    assert "python manage.py outbox_seal_key" in output, output


def test_the_printed_seal_key_keeps_a_derived_key_across_a_secret_key_rotation(tmp_path: Path) -> None:
    """A log sealed with the key derived from SECRET_KEY keeps it: `outbox_seal_key` prints it as an
    OUTBOX_SEAL_KEY value, which gives the same key under a new SECRET_KEY."""
    sqlite = str(tmp_path / "db.sqlite3")
    base = {"DJANGO_SETTINGS_MODULE": "settings.local", "SQLITE_PATH": sqlite}
    old_secret = {**base, "SECRET_KEY": "old-" + secrets.token_urlsafe(20)}
    printed = _manage("outbox_seal_key", env=_env(**old_secret))
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert "from SECRET_KEY" in printed.stderr
    name, _, value = printed.stdout.strip().partition("=")
    assert name == "OUTBOX_SEAL_KEY"
    assert value.startswith("hex:")

    derived = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY=old_secret["SECRET_KEY"])
    kept = _seal_key(SQLITE_PATH=sqlite, SECRET_KEY="new-" + secrets.token_urlsafe(20), OUTBOX_SEAL_KEY=value)
    assert kept == derived == "KEY=" + value.removeprefix("hex:")


def test_a_seal_key_is_read_verbatim_even_when_it_starts_with_a_dollar(tmp_path: Path) -> None:
    """A generated key may start with `$`: it is the key, not the name of another variable."""
    key = _seal_key(SQLITE_PATH=str(tmp_path / "db.sqlite3"), OUTBOX_SEAL_KEY="$HOME-is-not-read")
    assert key == "KEY=" + b"$HOME-is-not-read".hex()


def test_a_malformed_hex_seal_key_stops_every_command_with_what_to_set(tmp_path: Path) -> None:
    """`hex:` with anything but 64 hex digits is a configuration error (outbox.E003), not a key."""
    sqlite = str(tmp_path / "db.sqlite3")
    env = _env(DJANGO_SETTINGS_MODULE="settings.local", SQLITE_PATH=sqlite, OUTBOX_SEAL_KEY="hex:abc")

    result = _manage("check", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "outbox.E003" in output, output
    assert "even number of hex digits" in output, output
    assert "outbox_seal_key --new" in output, output
    # The command that remedy names runs while the key is malformed.
    fresh = _manage("outbox_seal_key", "--new", env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert fresh.stdout.startswith("OUTBOX_SEAL_KEY=hex:")


def test_a_text_seal_key_printed_as_hex_is_the_same_key(tmp_path: Path) -> None:
    """What `outbox_seal_key` prints for a text key of any length is accepted, and is that key."""
    sqlite = str(tmp_path / "db.sqlite3")
    printed = _manage(
        "outbox_seal_key",
        env=_env(DJANGO_SETTINGS_MODULE="settings.local", SQLITE_PATH=sqlite, OUTBOX_SEAL_KEY="my-passphrase"),
    )
    assert printed.returncode == 0, printed.stdout + printed.stderr
    value = printed.stdout.strip().partition("=")[2]
    assert _seal_key(SQLITE_PATH=sqlite, OUTBOX_SEAL_KEY=value) == "KEY=" + b"my-passphrase".hex()


def test_a_secret_naming_another_variable_is_refused_not_taken_as_its_text(tmp_path: Path) -> None:
    """SECRET_KEY=$VAULT_SECRET was a lookup for django-environ; read verbatim it would silently
    become the text "$VAULT_SECRET", so it is refused, saying what to set instead."""
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local",
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        VAULT_SECRET=secrets.token_urlsafe(20),
        SECRET_KEY="$VAULT_SECRET",
    )

    result = _manage("check", env=env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "SECRET_KEY is '$VAULT_SECRET', the name of another environment variable" in output, output
    assert "Set SECRET_KEY to the value itself." in output, output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"email": {"ordered": false, "queue": "mail"}}', "OVERRIDES={'email': {'ordered': False, 'queue': 'mail'}}"),
        ("", "OVERRIDES={}"),
    ],
)
def test_consumer_overrides_come_from_the_environment_as_json(tmp_path: Path, value: str, expected: str) -> None:
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local", SQLITE_PATH=str(tmp_path / "db.sqlite3"), OUTBOX_CONSUMERS=value
    )
    result = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print('OVERRIDES=' + repr(settings.OUTBOX_CONSUMERS))",
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('{"email": {"ordered": fals}}', "OUTBOX_CONSUMERS is not valid JSON"),
        ('["email"]', "OUTBOX_CONSUMERS must be a JSON object of consumer names to objects of overrides"),
        ('{"email": "mail"}', "OUTBOX_CONSUMERS must be a JSON object of consumer names to objects of overrides"),
    ],
)
def test_malformed_consumer_overrides_stop_every_command_saying_what_to_give(
    tmp_path: Path, value: str, says: str
) -> None:
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local", SQLITE_PATH=str(tmp_path / "db.sqlite3"), OUTBOX_CONSUMERS=value
    )
    result = _manage("check", env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert says in output, output
    assert "for example OUTBOX_CONSUMERS=" in output, output


def test_a_wrong_override_from_the_environment_stops_every_command_naming_it(tmp_path: Path) -> None:
    """Checked where the worker declares its actors, before any command runs."""
    env = _env(
        DJANGO_SETTINGS_MODULE="settings.local",
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        OUTBOX_CONSUMERS='{"email": {"on_dead": "drop"}}',
    )
    result = _manage("check", env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "OUTBOX_CONSUMERS['email']: on_dead must be 'block'" in output, output
    assert "not 'drop'" in output, output
