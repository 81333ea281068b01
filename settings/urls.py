"""URL configuration: the admin, the health check and the metrics."""

from django.contrib import admin
from django.urls import path

from outbox.metrics import metrics
from settings.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
]
