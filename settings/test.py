"""Settings for the test suite: real PostgreSQL and Redis (process tests also run on RabbitMQ,
tests/brokers.py), fast password hashing."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
# No daily sales summary from the relays that tests start, unless a test asks for it: it would
# e-mail the tests' staff users through the tests' SMTP servers.
os.environ.setdefault("SALES_SUMMARY_AT", "")

from .base import *  # noqa: F403
from .base import INSTALLED_APPS

DEBUG = False
# The development tools, whose commands the suite runs; an app that hangs its own events and
# consumers on the outbox (tests/ledger, docs/extending.md); and the outbox tests' own app, whose
# records and consumers tests/outbox runs the outbox against (tests/outbox_app).
INSTALLED_APPS = [*INSTALLED_APPS, "tooling", "tests.ledger", "tests.outbox_app"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Serve static files from the apps' folders, as runserver does, instead of a collected STATIC_ROOT.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
