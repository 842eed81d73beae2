"""The dashboard in a real browser (Debian's Chromium driven by Playwright)."""

import os
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.utils import timezone

from aggregates import store
from aggregates.models import Aggregate
from aggregates.store import NewSource, register_sources
from tests.toolkit import IN_CI, ROOT, wait_for
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


def logged_in_page(browser, server, path="/d/c-inputs/2026-11-26/", **options):
    page = browser.new_page(**options)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}{path}")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", "a long passphrase")
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{server.url}{path}")
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


# The demo's story, as `manage.py demo` writes it: every version of a day committed
# within the same second, and C's receipts beside them.

DEMO = "demo-c-inputs"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def demo_site(start_server, token, django_user_model):
    call_command("demo", "--days", "3")
    # The oldest day: C failed once there, then ran. Four more sources in one
    # batch share their commit's very moment.
    day = (timezone.now().date() - timedelta(days=3)).isoformat()
    register_sources(
        [NewSource(DEMO, day, "A", {"run": f"backfill-{i}"}) for i in range(4)]
    )
    # A failing webhook, whose health a phone must show.
    from aggregates.models import Domain, Webhook

    Webhook.objects.create(
        domain=Domain.objects.get(key=DEMO),
        url="https://hooks.example.com/botlnek/receivers/pipeline-c?team=data",
        events=["version"],
        secret="whsec_x",
        failing_since=timezone.now(),
        next_attempt_at=timezone.now() + timedelta(minutes=5),
        last_status=503,
        last_attempt_at=timezone.now(),
    )
    django_user_model.objects.create_user("ann", password="a long passphrase")
    server = start_server()
    # The new server's rules engine evaluates the sources above in its first
    # seconds, and its events re-render the pages live: begin once it has.
    from aggregates.models import Rule

    latest = Domain.objects.get(key=DEMO).latest_position
    wait_for(
        lambda: all(rule.position >= latest for rule in Rule.objects.all()),
        30,
        "the rules to catch up",
    )
    server.token = token
    server.day = day
    return server


def marks_of(page) -> list[dict]:
    """Every mark of the picture as drawn: what it is and the box it covers."""
    return page.eval_on_selector_all(
        "svg.picture .mark",
        """marks => marks.map(mark => {
            const box = mark.getBoundingClientRect();
            const title = mark.querySelector("title");
            return {
                kind: mark.classList.contains("version") ? "version" : "receipt",
                outcome: [...mark.classList].find(c => c !== "mark" && c !== "receipt"),
                version: Number(mark.dataset.version),
                title: title ? title.textContent : "",
                box: [box.left, box.top, box.right, box.bottom],
            };
        })""",
    )


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_the_picture_has_a_time_axis_and_spreads_marks_of_the_same_second(
    browser, demo_site
):
    aggregate = Aggregate.objects.get(key=demo_site.day)
    ats = set(aggregate.versions.values_list("at", flat=True))
    assert len(ats) < aggregate.version  # versions do share their moment
    page, errors = logged_in_page(browser, demo_site, f"/d/{DEMO}/{demo_site.day}/")
    wait_live(page)

    svg = page.locator("svg.picture")
    assert svg.get_attribute("role") == "img"
    # SVG elements have no innerText: their text content, then.
    assert "Versions 1 to 7" in page.text_content("svg.picture desc")
    ticks = page.locator("svg.picture .axis text.tick").all_text_contents()
    assert len(ticks) >= 3
    assert all(
        re.fullmatch(
            r"\d\d:\d\d(:\d\d)?|[A-Z][a-z]{2} \d{1,2}( · UTC)?|\d{4}( · UTC)?", t
        )
        for t in ticks
    )
    assert page.locator("svg.picture .axis text.date").count() >= 1  # the day

    marks = marks_of(page)
    versions = [mark for mark in marks if mark["kind"] == "version"]
    assert sorted(mark["version"] for mark in versions) == list(range(1, 8))
    for mark in versions:
        assert mark["title"].startswith(f"v{mark['version']} · ")
        assert " UTC" in mark["title"]
    receipts = [mark for mark in marks if mark["kind"] == "receipt"]
    assert {(m["outcome"], m["version"]) for m in receipts} == {
        ("failure", 2),
        ("success", 2),
    }
    assert all(m["title"].startswith("run-c ran on v2: ") for m in receipts)
    assert page.locator("svg.picture .links path").count() == len(receipts)
    for i, a in enumerate(marks):  # no mark hides another
        for b in marks[i + 1 :]:
            assert not overlap(a["box"], b["box"]), (a, b)

    # Live: a new version gets its mark, and the picture stays whole.
    response = httpx.post(
        f"{demo_site.url}/api/sources",
        json={
            "domain": DEMO,
            "aggregate": demo_site.day,
            "collection": "B",
            "keys": {"run": "late"},
        },
        headers={"Authorization": f"Bearer {demo_site.token}"},
    )
    assert response.status_code == 201, response.text
    page.wait_for_selector("svg.picture #mark-v8", timeout=5000)
    marks = marks_of(page)
    assert len([m for m in marks if m["kind"] == "version"]) == 8
    for i, a in enumerate(marks):
        for b in marks[i + 1 :]:
            assert not overlap(a["box"], b["box"]), (a, b)
    assert errors == []


def test_pages_read_at_desktop_and_phone_width(browser, demo_site):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    today = timezone.now().date()
    pages = {
        "home": "/",
        "domain": f"/d/{DEMO}/",  # with the webhook's health and the intake
        "aggregate": f"/d/{DEMO}/{demo_site.day}/",  # with receipts, one failed
        "aggregate-on-time": f"/d/{DEMO}/{today - timedelta(days=1)}/",
        "aggregate-today": f"/d/{DEMO}/{today}/",  # waiting, B's lane empty
        "rule": f"/d/{DEMO}/rules/run-c/",
        "intake": f"/d/{DEMO}/intakes/pipeline-a/",
    }
    page, errors = logged_in_page(browser, demo_site, "/", viewport=DESKTOP)
    still = {"intake"}  # a page with no live parts: no socket to wait for
    for name, path in pages.items():
        page.set_viewport_size(DESKTOP)
        page.goto(f"{demo_site.url}{path}")
        if name not in still:
            wait_live(page)
        page.screenshot(path=SCREENSHOTS / f"{name}-desktop.png", full_page=True)
        page.set_viewport_size(PHONE)
        page.goto(f"{demo_site.url}{path}")
        if name not in still:
            wait_live(page)
        page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width} px wide on a phone"
        font = page.evaluate(
            "parseFloat(getComputedStyle(document.querySelector('main')).fontSize)"
        )
        assert font >= 14, name
        for cell in page.query_selector_all(
            "td.rule-column, #webhooks td[data-label=Health], #intakes td"
        ):
            box = cell.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (
                name,
                cell.inner_text(),
                box,
            )
        for time in page.query_selector_all("main time:not(.countdown)"):
            assert time.inner_text().endswith("UTC"), (name, time.inner_text())
    assert errors == []


def test_a_missing_expected_day_turns_fired_live(browser, site):
    from aggregates.rules import engine, write
    from aggregates.rules.definition import RuleIn

    write.create_rule(
        "c-inputs",
        RuleIn(name="daily", when="A >= 1", expect={"every": "1d", "key": "%Y-%m-%d"}),
    )
    engine.catch_up("c-inputs")
    today = timezone.now().strftime("%Y-%m-%d")
    page, errors = logged_in_page(browser, site)
    page.goto(f"{site.url}/d/c-inputs/")
    wait_live(page)
    row = f"#aggregate-{today}"
    assert page.inner_text(f"{row} td:nth-child(2)") == "missing"
    assert page.inner_text(f"{row} td.rule-column") == "waiting"
    post(site, today, "A")
    page.wait_for_selector(f"{row} td.rule-column >> text=fired v1", timeout=10000)
    assert page.inner_text(f"{row} td:nth-child(2)") == "v1"
    page.click(f"{row} td.rule-column a")
    page.wait_for_selector("#why-daily")
    assert "✓" in page.inner_text("#why-daily")
    assert errors == []


def test_an_intake_is_tried_by_pasting_an_event(browser, site):
    from aggregates.intakes.definition import IntakeIn
    from aggregates.intakes.write import create_intake

    create_intake(
        "c-inputs",
        IntakeIn(
            name="pipeline-a",
            aggregate="{{ event.time | date }}",
            collection="A",
            attrs={"path": "{{ data.path }}"},
        ),
    )
    page, errors = logged_in_page(browser, site, "/d/c-inputs/intakes/pipeline-a/")
    page.fill("textarea[name=body]", '{"path": "s3://lake/a/part-0"}')
    page.fill(
        "textarea[name=headers]",
        "ce-id: run-41\nce-source: //airflow/a\nce-type: finished\n"
        "ce-specversion: 1.0\nce-time: 2026-12-01T23:30:00-02:00",
    )
    page.click("button:has-text('Preview')")
    results = page.locator("#preview-results")
    results.get_by_text("2026-12-02").wait_for(timeout=5000)
    assert "s3://lake/a/part-0" in results.inner_text()
    assert "ce_id" in results.inner_text() and "run-41" in results.inner_text()
    page.fill("textarea[name=headers]", "")
    page.click("button:has-text('Preview')")
    results.get_by_text("no field 'time' here").wait_for(timeout=5000)
    assert errors == []


def test_the_quick_starts_server_shows_a_live_demo_in_another_process(
    browser, start_server, tmp_path
):
    """`manage.py serve` on the embedded default and no setting, `demo --live
    --interval 1` in another process: the open domain page shows each version
    the demo prints within 3 s of its commit."""
    import subprocess
    import sys
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'quick-start.sqlite3'}"
    env = {**os.environ, "BOTLNEK_DATABASE_URL": url, "BOTLNEK_DATA_DIR": str(tmp_path)}
    env.pop("BOTLNEK_REDIS_URL", None)

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )

    manage("migrate", "--no-input")
    manage("demo", "--days", "1")  # the domain, a day, and today's first A
    user = "from django.contrib.auth.models import User; "
    user += "User.objects.create_user('ann', password='a long passphrase')"
    manage("shell", "-c", user)
    server = start_server(BOTLNEK_DATABASE_URL=url)
    page, errors = logged_in_page(browser, server, f"/d/{DEMO}/")
    wait_live(page)

    live = ["demo", "--days", "1", "--live", "--interval", "1"]
    demo = subprocess.Popen(
        [sys.executable, "manage.py", *live],
        cwd=ROOT,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        encoding="utf-8",
    )
    committed: list[tuple[int, float]] = []  # (position, when the demo printed it)

    def read() -> None:
        for line in demo.stdout:
            found = re.search(r"→ v\d+, position (\d+)$", line.strip())
            if found:
                committed.append((int(found.group(1)), time.monotonic()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        seen = 0
        while seen < 4:
            if len(committed) <= seen:
                time.sleep(0.05)
                continue
            position, at = committed[seen]
            page.wait_for_selector(
                f"#domain-summary >> text=latest position {position}", timeout=3000
            )
            assert time.monotonic() - at < 3
            seen += 1
    finally:
        demo.terminate()
        demo.wait(timeout=10)
        reader.join(timeout=10)
    assert errors == []


def test_times_read_in_utc_or_in_the_viewers_zone_on_request(browser, site):
    page, errors = logged_in_page(browser, site, timezone_id="Europe/Paris")
    wait_live(page)
    first = page.locator("main time:not(.countdown)").first
    utc = first.inner_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", utc), utc
    page.click("#clock")
    local = first.inner_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\+01:00", local), local
    assert page.inner_text("#clock") == "times in your zone"
    page.reload()  # the choice is kept
    wait_live(page)
    assert page.locator("main time:not(.countdown)").first.inner_text() == local
    page.click("#clock")
    assert page.locator("main time:not(.countdown)").first.inner_text() == utc
    assert errors == []


def test_the_pictures_marks_are_tap_targets_with_details_on_a_phone(browser, demo_site):
    path = f"/d/{DEMO}/{demo_site.day}/"
    page, errors = logged_in_page(browser, demo_site, path, viewport=PHONE)
    wait_live(page)
    # Measured in one go in the page: a live re-render may replace the picture
    # at any moment, and a handle to a replaced element has no box.
    hits, marks = page.evaluate(
        """() => [
            [...document.querySelectorAll("svg.picture .hit")].map((hit) => {
                const box = hit.getBoundingClientRect();
                return {width: box.width, height: box.height};
            }),
            document.querySelectorAll("svg.picture .mark").length,
        ]"""
    )
    assert hits and len(hits) == marks
    for box in hits:
        assert box["width"] >= 24 and box["height"] >= 24, box
    popover = page.locator("figure.picture .popover")
    assert popover.is_hidden()
    mark = page.locator("svg.picture .mark.version").first
    mark.scroll_into_view_if_needed()
    box = mark.bounding_box()
    # A tap beside the mark, inside its target: the finger need not hit the dot.
    page.mouse.click(box["x"] + box["width"] / 2 + 6, box["y"] + box["height"] / 2)
    assert popover.is_visible()
    assert popover.inner_text().startswith("v") and " UTC" in popover.inner_text()
    page.click("main h1")  # elsewhere: it goes
    assert popover.is_hidden()
    assert errors == []


def test_a_late_day_reads_at_desktop_and_phone_width(
    browser, start_server, django_user_model
):
    """The week's demo: the day B never came two days running is late; its page,
    with B's empty lane and the deadline, fits a phone."""
    call_command("demo")
    django_user_model.objects.create_user("ann", password="a long passphrase")
    server = start_server()
    late = (timezone.now().date() - timedelta(days=4)).isoformat()
    path = f"/d/{DEMO}/{late}/"
    page, errors = logged_in_page(browser, server, path, viewport=DESKTOP)
    wait_live(page)
    assert page.inner_text("#why-run-c .status") == "late"
    page.screenshot(path=SCREENSHOTS / "aggregate-late-desktop.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.goto(f"{server.url}{path}")
    wait_live(page)
    page.screenshot(path=SCREENSHOTS / "aggregate-late-phone.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # An SVG text's content includes its <title>: "B — none yetcollection B".
    lanes = page.locator("svg.picture .lane-name").all_text_contents()
    assert any(lane.startswith("B — none yet") for lane in lanes), lanes
    assert page.locator("svg.picture .deadline").count() == 1
    assert errors == []


def test_a_home_page_opened_before_any_domain_shows_the_first_one(
    browser, start_server, django_user_model
):
    from aggregates.tokens import create_token

    django_user_model.objects.create_user("ann", password="a long passphrase")
    token = create_token(name="writer", scope="write")[1]
    server = start_server()
    page, errors = logged_in_page(browser, server, "/")
    wait_live(page)  # its first push re-renders the hint, with no request
    page.wait_for_timeout(500)
    hint = page.inner_text("#domains pre")
    assert hint.startswith(f"curl -X POST {server.url}/api/domains"), hint
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{server.url}/api/domains", json={"key": "c-inputs"}, headers=auth
    )
    assert created.status_code == 201
    post_via_http(server, token, "2026-12-01", "A", run="am")
    page.wait_for_selector("#domains a >> text=c-inputs", timeout=10000)
    page.wait_for_selector("#feed >> text=2026-12-01", timeout=10000)
    assert errors == []
