"""ASGI entry point.

An ASGI server is a deployment, so production settings are the default here; they refuse to start
without real secrets, PostgreSQL and Redis.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.production")

application = get_asgi_application()
