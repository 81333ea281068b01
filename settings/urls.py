"""URL configuration: the admin (with the outbox dashboard), the health check and the metrics."""

from django.contrib import admin
from django.urls import path

from outbox.admin.dashboard import dashboard
from outbox.ops.metrics import metrics
from settings.health import healthz

# The admin's index links to the dashboard.
admin.site.index_template = "outbox/admin_index.html"

urlpatterns = [
    # Before the admin's own URLs, which would otherwise take admin/outbox/… as a model's path.
    path("admin/outbox/dashboard/", admin.site.admin_view(dashboard), name="outbox_dashboard"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
]
