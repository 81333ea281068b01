"""Settings for a developer's machine: the embedded default unless the environment says otherwise."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import EMBEDDED, EMBEDDED_SECRET_KEY, INSTALLED_APPS, SECRET_KEY, env

DEBUG = env.bool("DEBUG", default=True)

# The development tools (outbox_bench, outbox_chaos, simulate): never installed in production.
INSTALLED_APPS = [*INSTALLED_APPS, "tooling"]

if not EMBEDDED and SECRET_KEY == EMBEDDED_SECRET_KEY:
    # The embedded key is public: on a real database it would sign sessions and, with no
    # OUTBOX_SEAL_KEY, seal the event log, so that anyone could forge either. A laptop's SQLite
    # file is the only place it may do that.
    raise ImproperlyConfigured(
        "SECRET_KEY is the embedded development key, which is public, and DATABASE_URL points at a real "
        "database. Generate keys of your own once, and export the same ones in every process: "
        "export SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))') "
        "OUTBOX_SEAL_KEY=hex:$(python3 -c 'import secrets; print(secrets.token_hex(32))') "
        "(README.md, On PostgreSQL and Redis). Without DATABASE_URL the embedded default (SQLite) needs neither."
    )

# Serve static files from the apps' folders, as runserver does, instead of a collected STATIC_ROOT,
# whatever DEBUG is: with DEBUG=0 a manifest storage would fail every page until `collectstatic` ran.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
