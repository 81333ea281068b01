"""The outbox's pages: the dashboard, inside the admin, and the Prometheus metrics.

    urlpatterns = [path("", include("outbox.urls")), path("admin/", admin.site.urls), ...]

Include them before the admin's own URLs, which would otherwise take admin/outbox/… as a model's
path. The names are `outbox_dashboard` and `metrics`.
"""

from django.contrib import admin
from django.urls import path

from outbox.admin.dashboard import dashboard
from outbox.ops.metrics import metrics

urlpatterns = [
    path("admin/outbox/dashboard/", admin.site.admin_view(dashboard), name="outbox_dashboard"),
    path("metrics", metrics, name="metrics"),
]
