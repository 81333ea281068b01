"""The page a locked-out admin login gets (django-axes' AXES_LOCKOUT_CALLABLE)."""

import logging
from typing import Any

from axes.helpers import get_client_ip_address, get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.contrib import admin
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

logger = logging.getLogger(__name__)


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """Return a 429 saying what happened, until when, and who can unlock the login earlier."""
    username = get_client_username(request, credentials) or ""
    address = get_client_ip_address(request) or ""
    cool_off = get_cool_off(request)
    last = AccessAttempt.objects.filter(username=username, ip_address=address).aggregate(last=Max("attempt_time"))
    until = (last["last"] or timezone.now()) + cool_off if cool_off else None
    logger.warning("Admin login locked out: username %r from %s", username[:150], address)
    context = {
        **admin.site.each_context(request),
        "title": "Login locked",
        "username": username,
        "failure_limit": get_failure_limit(request, credentials),
        "cool_off_minutes": round(cool_off.total_seconds() / 60) if cool_off else None,
        "until": until,
    }
    # Rendered here: django-axes returns it from its middleware, after the view's own rendering.
    return render(request, "admin/login_locked.html", context, status=429)
