"""The outbox dashboard in the admin (`/admin/outbox/dashboard/`, staff only): the status at a glance."""

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from outbox.models import Delivery
from outbox.ops.status import consumer_latency, outbox_status, throughput_last_hour


def dashboard(request: HttpRequest) -> TemplateResponse:
    """Render the backlog, failures per consumer, relays, jobs, latency and the last hour's events.

    Wrapped in `admin.site.admin_view` by the URLconf, which admits active staff users only.
    """
    status = outbox_status()
    throughput = throughput_last_hour(now=status.at)
    peak = max(n for _, n in throughput)
    failures = [
        (consumer, counts[Delivery.Status.FAILED], counts[Delivery.Status.DEAD])
        for consumer, counts in status.deliveries.items()
        if counts[Delivery.Status.FAILED] or counts[Delivery.Status.DEAD]
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Outbox dashboard",
        "status": status,
        "failures": failures,
        "published": status.total(Delivery.Status.PUBLISHED),
        "latency": consumer_latency(),
        "bars": [(minute, n, round(100 * n / peak) if peak else 0) for minute, n in throughput],
        "events_last_hour": sum(n for _, n in throughput),
        "peak_per_minute": peak,
    }
    return TemplateResponse(request, "outbox/dashboard.html", context)
