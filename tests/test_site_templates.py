"""The site's own templates (top-level templates/): the base layout every page
extends, the error pages a user meets with DEBUG off, the login page, and the
admin's branding. The API keeps answering its errors in JSON.

.ci/wheel-smoke checks the 404 page and the admin from an installed wheel."""

from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.template.loader import get_template
from django.test import Client, RequestFactory
from django.views import defaults

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "name",
    [
        "base.html",
        "404.html",
        "500.html",
        "registration/login.html",
        "admin/base_site.html",
    ],
)
def test_the_sites_templates_are_found_in_the_top_level_folder(name):
    origin = Path(get_template(name).origin.name)
    assert origin.is_relative_to(ROOT / "templates"), origin


def test_a_missing_page_is_the_sites_404_in_its_look(admin_client, db):
    for path in ["/no-such-page/", "/d/no-such-domain/"]:
        response = admin_client.get(path)
        assert response.status_code == 404
        page = response.content.decode()
        assert "Not found (404)" in page and path in page
        assert "/static/botlnek/botlnek.css" in page  # the site's layout
        assert 'class="brand"' in page


def test_the_api_keeps_answering_json_errors(api):
    for path in ["/api/domains/nope", "/api/no-such-endpoint"]:
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found", response.text


def test_a_form_sent_without_its_token_is_the_sites_403(db):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "x", "password": "y"})
    assert response.status_code == 403
    page = response.content.decode()
    assert "the form expired" in page and "/static/botlnek/botlnek.css" in page


def test_a_refused_page_is_the_sites_403_with_a_way_to_log_in():
    request = RequestFactory().get("/d/somewhere/")
    request.user = AnonymousUser()
    response = defaults.permission_denied(request, PermissionDenied())
    assert response.status_code == 403
    page = response.content.decode()
    assert "Forbidden (403)" in page and "/static/botlnek/botlnek.css" in page
    assert "/accounts/login/?next=/d/somewhere/" in page


def test_a_request_for_another_host_is_the_sites_400(db):
    response = Client().get("/", HTTP_HOST="elsewhere.example")
    assert response.status_code == 400
    assert "Bad request (400)" in response.content.decode()


def test_the_500_page_renders_with_nothing_but_static_files():
    """Django renders it with an empty context: no request, no user, no database."""
    response = defaults.server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Server error (500)" in page and "/static/botlnek/botlnek.css" in page


def test_the_admin_wears_the_sites_branding(admin_client):
    login = Client().get("/admin/login/").content.decode()
    assert '<a href="/admin/">Botlnek administration</a>' in login
    assert "botlnek/favicon.svg" in login
    assert "<title>Log in | Botlnek admin</title>" in login
    index = admin_client.get("/admin/").content.decode()
    assert '<a href="/">Dashboard</a>' in index
