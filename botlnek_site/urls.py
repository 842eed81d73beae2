from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from aggregates import metrics, views
from aggregates.api import api
from aggregates.health import healthz, livez

urlpatterns = [
    path("api/", api.urls),
    path("livez", livez, name="livez"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics.scrape, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.home, name="home"),
    path("d/<str:domain>/", views.domain_page, name="domain"),
    path("d/<str:domain>/rules/<str:rule>/", views.rule_page, name="rule"),
    path("d/<str:domain>/intakes/<str:intake>/", views.intake_page, name="intake"),
    path("d/<str:domain>/<str:aggregate>/", views.aggregate_page, name="aggregate"),
]
