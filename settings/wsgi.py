"""WSGI entry point: `gunicorn settings.wsgi:application`.

A WSGI server is a deployment, so production settings are the default here; they refuse to start
without real secrets, PostgreSQL and Redis. A developer's server is `manage.py runserver`.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.production")

application = get_wsgi_application()
