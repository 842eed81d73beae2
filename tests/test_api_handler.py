"""The Django seam (aggregates.api_handler): the API's own ASGI handler stays a
faithful copy of the installed Django's, and serves every API request."""

import hashlib
import inspect

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started

from aggregates.api_handler import APIHandler

# sha256 of Django 5.2's ASGIHandler.handle, which APIHandler.handle copies. A new
# Django release that changes it fails here: compare the two, carry the change
# over to APIHandler.handle, then update this digest.
DJANGO_HANDLE_SHA256 = (
    "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323"
)


def test_the_copied_handle_matches_the_installed_django():
    source = inspect.getsource(ASGIHandler.handle)
    assert hashlib.sha256(source.encode()).hexdigest() == DJANGO_HANDLE_SHA256


def test_the_handler_refuses_a_django_without_what_it_needs(monkeypatch):
    monkeypatch.delattr(ASGIHandler, "listen_for_disconnect")
    with pytest.raises(RuntimeError, match="lacks listen_for_disconnect"):
        APIHandler()


def test_in_process_api_requests_go_through_the_api_handler(api, domain):
    """Django's handler would send request_started; the API's does not. So the
    requests the test client makes are served as daphne serves them."""
    started = []

    def count(**kwargs):
        started.append(kwargs)

    request_started.connect(count)
    try:
        assert api.get("/api/domains/c-inputs").status_code == 200
        assert api.request("GET", "/accounts/login/").status_code == 200
    finally:
        request_started.disconnect(count)
    assert len(started) == 1  # the login page's, served by Django's own handler
