"""Settings for production: real secrets, a real database and broker required, HTTPS everywhere.

Each requirement that is not met stops the process at start with a message saying what to set:
nothing here falls back to the embedded default (SQLite, the in-process broker, e-mail written
to files, the key published in settings/base.py).

`python manage.py check --deploy --settings=settings.production` passes with no warnings when
SECRET_KEY and OUTBOX_SEAL_KEY are real secrets and the database role owns nothing
(docs/operations.md#database-roles).
"""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import BROKER, DATABASES, EMBEDDED_SECRET_KEY, env, secret

SECRET_KEY = secret("SECRET_KEY")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. Production settings refuse to start without one: generate it with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'` and set it in the "
        "environment."
    )
if SECRET_KEY == EMBEDDED_SECRET_KEY or SECRET_KEY.startswith("django-insecure"):
    # The embedded default is published with the code, and Django marks "django-insecure" keys as
    # made for development: with either, anyone can sign sessions and, while OUTBOX_SEAL_KEY is
    # unset, seal edited events so that they verify.
    raise ImproperlyConfigured(
        "SECRET_KEY is the embedded development key (or another 'django-insecure' key), which is "
        "public. Production settings refuse it: generate a key with "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'` and set SECRET_KEY to it."
    )
if "DATABASE_URL" not in env:
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Production settings refuse to run on the embedded SQLite file: set "
        "DATABASE_URL=postgres://<app role>:<password>@<host>:5432/<database>, a role that owns nothing "
        "(docs/operations.md#database-roles)."
    )
if DATABASES["default"]["ENGINE"] != "outbox.backends.postgresql":
    # The event log's guarantees (append-only triggers, LISTEN, SKIP LOCKED claims) are PostgreSQL's.
    raise ImproperlyConfigured(
        f"DATABASE_URL selects {DATABASES['default']['ENGINE']}; production settings need PostgreSQL: "
        "set DATABASE_URL=postgres://<app role>:<password>@<host>:5432/<database>."
    )
if not BROKER:
    raise ImproperlyConfigured(
        "BROKER_URL is not set. Production settings refuse the in-process stub broker, whose messages "
        "no worker process would ever see: set BROKER_URL=redis://:<password>@<host>:6379/0 (rediss:// for TLS) "
        "or BROKER_URL=amqp://<user>:<password>@<host>:5672/<vhost> (amqps:// for TLS)."
    )
DEBUG = env.bool("DEBUG", default=False)

# SMTP unless EMAIL_BACKEND says otherwise: never the embedded default's files, whatever the database.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
