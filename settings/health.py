"""`/healthz`: answers 200 when the database and the broker answer, 503 otherwise.

Unauthenticated, so the body says only "ok" or "error" per check: a database's or broker's error
text names hosts, users and versions. The detail goes to the log.
"""

import logging

import dramatiq
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Return the state of the database and the broker as JSON."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as e:  # any failure means "not healthy"; the reason is logged, never answered
        logger.warning("Health check: database unavailable: %s", e)
        checks["database"] = "error"
    # Redis and RabbitMQ answer a ping (outbox/consume/); the in-process stub broker is always up.
    ping = getattr(dramatiq.get_broker(), "ping", None)
    try:
        if ping is not None:
            ping()
        checks["broker"] = "ok"
    except Exception as e:  # any failure means "not healthy"; the reason is logged, never answered
        logger.warning("Health check: broker unavailable: %s", e)
        checks["broker"] = "error"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)
