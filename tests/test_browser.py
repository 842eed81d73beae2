"""The dashboard in a real browser (Debian's Chromium driven by Playwright)."""

import os
from pathlib import Path

import pytest

from aggregates import store
from aggregates.store import NewSource, register_sources
from tests.toolkit import IN_CI, ROOT
from tests.toolkit import post as post_via_http

CHROMIUM = os.environ.get("BOTLNEK_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture
def browser(monkeypatch):
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"Chromium missing at {CHROMIUM} in CI")
        pytest.skip(f"needs Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM
    # calls are still plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def site(start_server, token, django_user_model):
    register_sources([NewSource("c-inputs", "2026-11-26", "A", {"run": "am"})])
    register_sources([NewSource("c-inputs", "2026-11-26", "B", {}, {"path": "s3://b"})])
    django_user_model.objects.create_user("ann", password="a long passphrase")
    server = start_server()
    server.token = token
    return server


def post(server, aggregate, collection, **keys):
    post_via_http(server, server.token, aggregate, collection, **keys)


def logged_in_page(browser, server):
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/d/c-inputs/2026-11-26/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "a long passphrase")
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{server.url}/d/c-inputs/2026-11-26/")
    return page, errors


def wait_live(page):
    """Until the page's socket is open: what is posted from then on must appear
    (and what was posted before, the socket's first push brings)."""
    page.wait_for_selector("body[data-live=open]", state="attached", timeout=5000)


def test_pages_update_live_and_show_older_versions(browser, site):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page, errors = logged_in_page(browser, site)
    wait_live(page)
    post(site, "2026-11-26", "A", run="pm")
    page.wait_for_selector("#version-3", timeout=2000)  # without reload
    assert "version 3" in page.inner_text("h1")
    page.screenshot(path=SCREENSHOTS / "aggregate.png", full_page=True)

    page.goto(f"{site.url}/d/c-inputs/")
    wait_live(page)
    post(site, "2026-11-27", "A")
    page.wait_for_selector("text=2026-11-27", timeout=2000)
    page.screenshot(path=SCREENSHOTS / "domain.png", full_page=True)

    page.goto(f"{site.url}/")
    wait_live(page)
    post(site, "2026-11-28", "B")
    page.wait_for_selector("#newest >> text=2026-11-28", timeout=2000)
    page.screenshot(path=SCREENSHOTS / "home.png", full_page=True)

    page.goto(f"{site.url}/d/c-inputs/2026-11-26/?version=1")
    assert page.query_selector("#version-2") is None
    assert "version 1 of 3" in page.inner_text("h1")
    assert errors == []


def test_page_reconnects_and_catches_up_after_a_server_restart(
    browser, site, start_server
):
    page, _ = logged_in_page(browser, site)
    wait_live(page)
    site.stop()
    page.wait_for_selector("#connection.down", timeout=5000)  # says it is away
    # Committed while the server is down: only catching up can show it.
    register_sources([NewSource("c-inputs", "2026-11-26", "C")])
    restarted = start_server(site.port)
    assert restarted.port == site.port
    page.wait_for_selector("#version-3", timeout=15000)
    page.wait_for_selector("#connection.down", state="hidden", timeout=5000)


def test_the_readiness_matrix_changes_live(browser, site):
    from aggregates.models import Rule
    from aggregates.rules import engine

    Rule.objects.create(
        domain=store.get_domain("c-inputs"), name="run-c", when="A >= 2 and B >= 1"
    )
    register_sources([NewSource("c-inputs", "2026-11-27", "A", {"run": "am"})])
    engine.catch_up("c-inputs")
    page, errors = logged_in_page(browser, site)
    page.goto(f"{site.url}/d/c-inputs/")
    wait_live(page)
    cell = "#aggregate-2026-11-27 td.rule-column"
    assert page.inner_text(cell) == "waiting"
    post(site, "2026-11-27", "B")
    post(site, "2026-11-27", "A", run="pm")  # ready: the server fires run-c
    page.wait_for_selector(f"{cell} >> text=fired v3", timeout=10000)
    page.screenshot(path=SCREENSHOTS / "domain-rules.png", full_page=True)
    page.goto(f"{site.url}/d/c-inputs/rules/run-c/")
    page.wait_for_selector("#event-1")
    page.screenshot(path=SCREENSHOTS / "rule.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=SCREENSHOTS / "rule-phone.png", full_page=True)
    assert errors == []
