"""URL configuration: the admin and the health check."""

from django.contrib import admin
from django.urls import path

from settings.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
]
