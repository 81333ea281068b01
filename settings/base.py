"""Settings shared by every deployment.

Everything that differs between deployments is read from the environment here, and only here.
With no environment at all the project runs on the *embedded default*: SQLite and Dramatiq's
in-process broker, so that a laptop with nothing but Python can run it.
"""

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

# Lets classes such as admin.ModelAdmin[Order] be subscripted at run time, as the type stubs expect.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def secret(name: str, default: str = "") -> str:
    """A secret from the environment, verbatim: a generated key may start with `$`.

    django-environ would read such a value as the name of another variable. So that a setting
    written for that (SECRET_KEY=$VAULT_SECRET) does not silently become its own text, a value
    that is `$` and the name of a variable that exists is refused.
    """
    value = os.environ.get(name, default)
    if value.startswith("$") and value[1:] in os.environ:
        raise ImproperlyConfigured(
            f"{name} is {value!r}, the name of another environment variable: secrets are read verbatim, "
            f"not looked up. Set {name} to the value itself."
        )
    return value


# The embedded default's key is public (it is right here): acceptable for a laptop's SQLite file
# only. settings.production refuses it, and settings.local refuses it on any other database.
EMBEDDED_SECRET_KEY = "django-insecure-embedded-default-key-do-not-use-in-production"
SECRET_KEY = secret("SECRET_KEY", default=EMBEDDED_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dramatiq",
    "axes",
    "outbox",
    "core",
    "consumers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A NUL in a query string is a 400, before any view passes it to the database.
    "outbox.middleware.RejectNulCharacters",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # After authentication: the outbox records which user made each change.
    "outbox.middleware.EventContextMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"
ASGI_APPLICATION = "settings.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Admin login throttling (django-axes) ---------------------------------------------------------
# AXES_FAILURE_LIMIT failed logins for one username from one address lock that pair out for
# AXES_COOLOFF_MINUTES after the last failure; another user, or the same user from elsewhere, is
# not locked. Unlock early with `python manage.py axes_reset_username <name>` (docs/operations.md).
AUTHENTICATION_BACKENDS = [
    # First, so that a locked-out login is refused before its password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "settings.lockout.lockout_response"
# --- End of admin login throttling ---------------------------------------------------------------

# --- Database -----------------------------------------------------------------------------------
# DATABASE_URL selects the real database (postgres://user:pass@host:5432/name). Without it the
# embedded default is a SQLite file in write-ahead-log mode, with a busy timeout so that the web
# server, the relay and the worker can share it.
SQLITE_PATH = Path(env.str("SQLITE_PATH", default=str(BASE_DIR / "db.sqlite3")))
if "DATABASE_URL" in env:
    DATABASES = {"default": env.db_url("DATABASE_URL")}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, plus outbox events written in the round trip of each COMMIT.
        DATABASES["default"]["ENGINE"] = "outbox.backends.postgresql"
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
EMBEDDED = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Broker -------------------------------------------------------------------------------------
# BROKER_URL selects Dramatiq's broker: redis:// or rediss:// (Redis), amqp:// or amqps://
# (RabbitMQ). REDIS_URL, the older name, still selects Redis when BROKER_URL is not set. With
# neither, Dramatiq's in-process stub broker is used, and the relay runs the consumers in its own
# process (see docs/operations.md#choosing-a-broker).
REDIS_URL = env.str("REDIS_URL", default="")
BROKER_URL = env.str("BROKER_URL", default="") or REDIS_URL
BROKER_SCHEMES = {"redis": "redis", "rediss": "redis", "amqp": "rabbitmq", "amqps": "rabbitmq"}
_scheme = BROKER_URL.partition("://")[0].lower() if "://" in BROKER_URL else BROKER_URL
if BROKER_URL and _scheme not in BROKER_SCHEMES:
    raise ImproperlyConfigured(
        f"BROKER_URL starts with {_scheme[:20]!r}, which names no broker this project runs: use redis://<host>:6379/0 "
        "or rediss:// (Redis), amqp://<user>:<password>@<host>:5672/<vhost> or amqps:// (RabbitMQ), or leave it "
        "unset for the embedded in-process broker."
    )
# "redis", "rabbitmq", or "" for the in-process stub broker.
BROKER = BROKER_SCHEMES.get(_scheme, "")
# RabbitMQ: the queues' type, classic or quorum (replicated across a cluster; docs/operations.md).
OUTBOX_RABBITMQ_QUEUE_TYPE = env.str("OUTBOX_RABBITMQ_QUEUE_TYPE", default="classic")
if OUTBOX_RABBITMQ_QUEUE_TYPE not in ("classic", "quorum"):
    raise ImproperlyConfigured(
        f"OUTBOX_RABBITMQ_QUEUE_TYPE={OUTBOX_RABBITMQ_QUEUE_TYPE[:20]!r} is not a queue type this project declares: "
        "use classic (one node) or quorum (replicated across a RabbitMQ cluster; docs/operations.md)."
    )
# Redis: each worker process beats its heartbeat this often, and a relay gives a worker's
# unacknowledged messages to the others once its heartbeat is older than the second figure (a
# worker that died). RabbitMQ does the same by itself when a worker's connection drops.
OUTBOX_WORKER_HEARTBEAT_SECONDS = env.float("OUTBOX_WORKER_HEARTBEAT_SECONDS", default=1.0)
OUTBOX_WORKER_STALE_SECONDS = env.float("OUTBOX_WORKER_STALE_SECONDS", default=5.0)
# Dramatiq's Prometheus middleware: each `rundramatiq` serves the workers' metrics on its own port
# (dramatiq_prom_host/dramatiq_prom_port, default 0.0.0.0:9191; multiprocess files under
# dramatiq_prom_db). Set it for worker processes only: the embedded default's relay runs the
# consumers without the worker boot that sets the middleware up (docs/operations.md).
DRAMATIQ_PROMETHEUS = env.bool("DRAMATIQ_PROMETHEUS", default=False)
# Middleware is listed explicitly: django-dramatiq's default list names a Prometheus middleware
# path that Dramatiq 2 no longer has, and its AdminMiddleware writes a row per message.
DRAMATIQ_BROKER = {
    # Dramatiq's Redis broker plus idle workers woken on enqueue (outbox/consume/broker.py), or its
    # RabbitMQ broker with confirmed batches (outbox/consume/rabbitmq.py).
    "BROKER": {
        "redis": "outbox.consume.broker.WakingRedisBroker",
        "rabbitmq": "outbox.consume.rabbitmq.OutboxRabbitmqBroker",
        "": "dramatiq.brokers.stub.StubBroker",
    }[BROKER],
    "OPTIONS": {
        "redis": {"url": BROKER_URL, "heartbeat_timeout": int(OUTBOX_WORKER_STALE_SECONDS * 1000)},
        "rabbitmq": {"url": BROKER_URL, "queue_type": OUTBOX_RABBITMQ_QUEUE_TYPE},
        "": {},
    }[BROKER],
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Retries",
        # Lets a consumer know which attempt it is making, to mark a delivery dead on the last.
        "dramatiq.middleware.CurrentMessage",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
        "outbox.consume.worker.AttemptClock",
        "outbox.consume.worker.WorkerHeartbeat",
        *(["dramatiq.middleware.prometheus.Prometheus"] if DRAMATIQ_PROMETHEUS else []),
    ],
}
DRAMATIQ_TASKS_DATABASE = "default"
# The module an app declares its consumers in (@outbox.consumer); the outbox and the worker import it.
DRAMATIQ_AUTODISCOVER_MODULES = ["consumers"]

# --- Outbox ------------------------------------------------------------------------------------

# The relay's batch size, claim lease and idle poll; the sweeper's deadline for a published
# delivery that no consumer finished (see docs/operations.md).
OUTBOX_RELAY_BATCH_SIZE = env.int("OUTBOX_RELAY_BATCH_SIZE", default=1000)
OUTBOX_RELAY_LEASE_SECONDS = env.float("OUTBOX_RELAY_LEASE_SECONDS", default=30.0)
OUTBOX_RELAY_POLL_SECONDS = env.float("OUTBOX_RELAY_POLL_SECONDS", default=1.0)
OUTBOX_REDELIVERY_SECONDS = env.float("OUTBOX_REDELIVERY_SECONDS", default=60.0)
# Each relay records that it is alive this often; status reports call a relay stale when its last
# beat is older than the second figure.
OUTBOX_HEARTBEAT_SECONDS = env.float("OUTBOX_HEARTBEAT_SECONDS", default=5.0)
OUTBOX_HEARTBEAT_STALE_SECONDS = env.float("OUTBOX_HEARTBEAT_STALE_SECONDS", default=30.0)
# The event log's seal key (outbox/eventlog/sealing.py): text, or hex:<hex digits>. Empty: derived from
# SECRET_KEY, which then can never be rotated without breaking the chains. Set it, the same on
# every machine, in production (`python manage.py outbox_seal_key` prints the one in use).
OUTBOX_SEAL_KEY = secret("OUTBOX_SEAL_KEY")
# How often a relay records a signed checkpoint of the sealed log (outbox/eventlog/checkpoints.py), so that
# outbox_verify names a log emptied or cut short.
OUTBOX_CHECKPOINT_SECONDS = env.float("OUTBOX_CHECKPOINT_SECONDS", default=60.0)
# --- Message size cap: a worker drops (and counts) a message naming more event ids, or larger
# once encoded, than these, before reading it. Keep them well above OUTBOX_RELAY_BATCH_SIZE (a
# relay message names at most that many ids; bigint ids take up to 20 bytes each).
OUTBOX_MESSAGE_MAX_IDS = env.int("OUTBOX_MESSAGE_MAX_IDS", default=10_000)
OUTBOX_MESSAGE_MAX_BYTES = env.int("OUTBOX_MESSAGE_MAX_BYTES", default=256 * 1024)

# The consumers' retries, where a declaration names none (@outbox.consumer(retries=...)): attempts
# after the first, and the backoff between them, which doubles from the minimum up to the maximum,
# with jitter.
CONSUMER_MAX_RETRIES = env.int("CONSUMER_MAX_RETRIES", default=5)
CONSUMER_MIN_BACKOFF_MS = env.int("CONSUMER_MIN_BACKOFF_MS", default=1_000)
CONSUMER_MAX_BACKOFF_MS = env.int("CONSUMER_MAX_BACKOFF_MS", default=30_000)


def _consumer_overrides() -> dict[str, Any]:
    """OUTBOX_CONSUMERS, per consumer its overrides of what its declaration says (queue, enabled,
    ordered, on_dead; docs/extending.md), from the environment as JSON. The system check outbox.E006
    checks the names and values; here only the JSON's shape."""
    raw = os.environ.get("OUTBOX_CONSUMERS", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ImproperlyConfigured(
            f"OUTBOX_CONSUMERS is not valid JSON ({e}): give an object of consumer names to their "
            'overrides, for example OUTBOX_CONSUMERS=\'{"email": {"queue": "mail"}, "audit_log": {"enabled": false}}\'.'
        ) from e
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ImproperlyConfigured(
            f"OUTBOX_CONSUMERS must be a JSON object of consumer names to objects of overrides, not {raw!r}: "
            'for example OUTBOX_CONSUMERS=\'{"email": {"ordered": false}}\'.'
        )
    return value


OUTBOX_CONSUMERS = _consumer_overrides()

# --- E-mail (Django's own setting names) ----------------------------------------------------------
# SMTP, except on the embedded default without an EMAIL_HOST: there the e-mail consumer writes
# each message to a file under var/mail/, so that trying the project needs no mail server.
EMAIL_BACKEND = env.str(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.filebased.EmailBackend"
    if EMBEDDED and "EMAIL_HOST" not in env
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_FILE_PATH = Path(env.str("EMAIL_FILE_PATH", default=str(BASE_DIR / "var" / "mail")))
EMAIL_HOST = env.str("EMAIL_HOST", default="127.0.0.1")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
# How long a worker may hold an order notice while it talks to the SMTP server; after that another
# worker may send it again (the duplicate window, docs/operations.md).
EMAIL_NOTICE_LEASE_SECONDS = env.float("EMAIL_NOTICE_LEASE_SECONDS", default=3.0 * EMAIL_TIMEOUT)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="shop@localhost")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)

# --- Orders -----------------------------------------------------------------------------------
# An order that takes more of a product than is in stock: a warning in the admin (off, the
# default: stock goes below zero as a backorder), or a form error (on). Read by core/conf.py.
ORDERS_REFUSE_BEYOND_STOCK = env.bool("ORDERS_REFUSE_BEYOND_STOCK", default=False)

# --- Periodic jobs ----------------------------------------------------------------------------
# Run by the relays, each once per day (outbox/ops/jobs.py): "daily_at" is a UTC time of day from which
# the day's run is due. An empty SALES_SUMMARY_AT turns the sales summary off.
SALES_SUMMARY_AT = env.str("SALES_SUMMARY_AT", default="06:00")
# Settled events older than this many days are purged (and their deliveries); unset, nothing is.
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=None)
OUTBOX_RETENTION_PURGE_AT = env.str("OUTBOX_RETENTION_PURGE_AT", default="03:00")
OUTBOX_PURGE_BATCH_SIZE = env.int("OUTBOX_PURGE_BATCH_SIZE", default=5000)
OUTBOX_PERIODIC_JOBS: dict[str, dict[str, Any]] = {}
if SALES_SUMMARY_AT:
    # Yesterday's orders, e-mailed to the active staff users (core/reports.py).
    OUTBOX_PERIODIC_JOBS["sales_summary"] = {
        "callable": "core.reports.sales_summary_send",
        "daily_at": SALES_SUMMARY_AT,
    }
if OUTBOX_RETENTION_DAYS is not None:
    OUTBOX_PERIODIC_JOBS["retention_purge"] = {
        # By dotted path, imported when the job runs.
        "callable": "outbox.eventlog.purge.purge_settled",
        "daily_at": OUTBOX_RETENTION_PURGE_AT,
        "kwargs": {"older_than": timedelta(days=OUTBOX_RETENTION_DAYS), "batch_size": OUTBOX_PURGE_BATCH_SIZE},
    }

# --- Observability ------------------------------------------------------------------------------
# /metrics answers a logged-in staff user, or a scraper sending "Authorization: Bearer <token>".
METRICS_TOKEN = secret("METRICS_TOKEN")
# Error reports to Sentry when a DSN is set; nothing is sent otherwise.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        integrations=[DjangoIntegration()],
        environment=env.str("SENTRY_ENVIRONMENT", default="") or None,
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
        send_default_pii=False,
    )

# --- Logging ------------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# "plain" (a line of text) or "json" (one JSON object per line, for log collectors).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json' (got {LOG_FORMAT!r}).")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "outbox.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # pika logs every connection step at INFO; its warnings (a connection lost) are what matters.
    "loggers": {"pika": {"level": "WARNING"}},
}
