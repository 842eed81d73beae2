from django.contrib import admin
from django.urls import path

from aggregates.api import api
from aggregates.health import healthz, livez

urlpatterns = [
    path("api/", api.urls),
    path("livez", livez, name="livez"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
