"""URL configuration: the admin (with the outbox dashboard), the health check and the metrics."""

from django.contrib import admin
from django.urls import include, path

from settings.health import healthz

# The admin's index links to the dashboard.
admin.site.index_template = "outbox/admin_index.html"

urlpatterns = [
    # The outbox's dashboard (admin/outbox/dashboard/) before the admin's own URLs, which would
    # otherwise take admin/outbox/… as a model's path; and /metrics.
    path("", include("outbox.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
]
