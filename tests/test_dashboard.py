"""Dashboard pages: login, content, as-of and diff, receipts, flat query counts."""

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aggregates import store
from aggregates.models import Aggregate, Intake, Receipt, Rule, Source, Version
from aggregates.picture import picture
from aggregates.rules import engine
from aggregates.store import NewSource, register_sources
from tests.toolkit import fill


@pytest.fixture
def seed(db):
    domain = store.create_domain("c-inputs", {})[0]
    Rule.objects.create(domain=domain, name="run-c", when="A >= 2 and B >= 1")
    register_sources([NewSource("c-inputs", "2026-11-26", "A", {"run": "am"})])
    register_sources([NewSource("c-inputs", "2026-11-26", "B", {}, {"path": "s3://b"})])
    register_sources([NewSource("c-inputs", "2026-11-26", "A", {"run": "pm"})])
    engine.catch_up("c-inputs")


PAGES = ["/", "/d/c-inputs/", "/d/c-inputs/2026-11-26/", "/d/c-inputs/rules/run-c/"]


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_visitors_are_sent_to_log_in(client, seed, page):
    response = client.get(page)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={page}")


@pytest.mark.parametrize("page", PAGES)
def test_public_mode_reads_without_login(client, seed, page, settings):
    settings.BOTLNEK_PUBLIC_DASHBOARD = True
    assert client.get(page).status_code == 200


def test_login_page_logs_in(client, django_user_model, seed):
    django_user_model.objects.create_user("ann", password="a long passphrase")
    page = client.get("/accounts/login/?next=/d/c-inputs/")
    assert b"csrfmiddlewaretoken" in page.content
    response = client.post(
        "/accounts/login/",
        {"username": "ann", "password": "a long passphrase", "next": "/d/c-inputs/"},
    )
    assert response["Location"] == "/d/c-inputs/"


def test_home_lists_domains_and_the_newest_versions(admin_client, seed):
    html = admin_client.get("/").content.decode()
    assert 'href="/d/c-inputs/"' in html
    assert html.index(">v3<") < html.index(">v2<") < html.index(">v1<")


def test_home_without_domains_tells_what_to_do(admin_client, db):
    html = admin_client.get("/").content.decode()
    assert "No domains yet" in html and "/api/domains" in html


def test_domain_page_searches_by_key_prefix(admin_client, seed):
    fill("2026-10-01", 1)
    html = admin_client.get("/d/c-inputs/", {"prefix": "2026-11"}).content.decode()
    assert "2026-11-26" in html and "2026-10-01" not in html
    partial = admin_client.get(
        "/d/c-inputs/",
        {"prefix": "2026-10"},
        headers={"HX-Request": "true", "HX-Target": "aggregate-rows"},
    ).content.decode()
    assert "2026-10-01" in partial and "<html" not in partial


def test_aggregate_page_shows_state_timeline_picture_and_receipts(admin_client, seed):
    Receipt.objects.create(
        aggregate=Aggregate.objects.get(key="2026-11-26"),
        watcher="run-c",
        version=2,
        outcome="success",
        exit_code=0,
        duration_s=41,
    )
    html = admin_client.get("/d/c-inputs/2026-11-26/").content.decode()
    assert "version 3" in html
    assert "run=pm" in html  # keys readable
    assert "s3://b" in html  # attrs pretty-printed
    assert html.count('<circle class="mark version"') == 3  # one mark per source
    assert "run-c ran on version 2 — success, exit 0, 41.0 s" in html
    picture = html[html.index('<svg class="picture"') : html.index("</svg>")]
    assert '<text class="tick"' in picture  # a time axis
    assert '<path class="mark receipt success" data-version="2"' in picture
    assert "<title>run-c ran on v2: success, exit 0, 41.0 s · " in picture


def test_as_of_version_shows_nothing_newer(admin_client, seed):
    html = admin_client.get("/d/c-inputs/2026-11-26/", {"version": 2}).content.decode()
    assert "version 2 of 3" in html
    assert "run=pm" not in html  # the third source: not in state, timeline, picture
    assert html.count('<circle class="mark version"') == 2


def test_difference_between_two_versions(admin_client, seed):
    html = admin_client.get(
        "/d/c-inputs/2026-11-26/", {"version": 3, "diff": 1}
    ).content.decode()
    added = html[html.index("Added after version 1") : html.index("Sources by")]
    assert "v2" in added and "v3" in added and "v1 " not in added
    assert "more" not in added


def test_a_long_difference_says_how_many_it_leaves_out(admin_client, domain):
    register_sources(
        [NewSource("c-inputs", "big", "A", {"n": str(n)}) for n in range(60)]
    )
    html = admin_client.get("/d/c-inputs/big/", {"version": 60, "diff": 2}).content
    added = html.decode().split("Added after version 2")[1].split("Sources by")[0]
    assert added.count("<li>") == 50
    assert "and 8 more" in added


def test_unknown_domain_or_aggregate_is_404(admin_client, seed):
    assert admin_client.get("/d/nope/").status_code == 404
    assert admin_client.get("/d/c-inputs/nope/").status_code == 404


@pytest.mark.parametrize("page", PAGES)
def test_pages_run_the_same_queries_whatever_the_size(admin_client, seed, page):
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(page).status_code == 200
    fill("2026-11-26", 400, start=10)
    for i in range(30):
        fill(f"other-{i}", 3)
    with CaptureQueriesContext(connection) as large:
        assert admin_client.get(page).status_code == 200
    assert len(large.captured_queries) == len(small.captured_queries)


@pytest.mark.parametrize("page", PAGES)
def test_public_mode_can_read_but_never_write(client, seed, page, settings):
    settings.BOTLNEK_PUBLIC_DASHBOARD = True
    assert client.post(page).status_code == 405
    assert client.get("/admin/").status_code == 302  # the admin still needs a login
    assert b"Log out" not in client.get(page).content


def test_demo_command_tells_the_story(admin_client, db):
    from django.core.management import call_command

    call_command("demo", "--days", "2")
    html = admin_client.get("/d/demo-c-inputs/").content.decode()
    assert html.count('href="/d/demo-c-inputs/') >= 3
    yesterday = Aggregate.objects.order_by("-key")[1]
    page = admin_client.get(f"/d/demo-c-inputs/{yesterday.key}/").content.decode()
    assert "run-c ran on version 2 — success" in page
    # A's five runs (two days of two, and this morning's) came through the intake.
    intake = Intake.objects.get(domain__key="demo-c-inputs", name="pipeline-a")
    assert (intake.accepted, intake.refused) == (5, 0)
    assert Source.objects.filter(collection="A").count() == 5
    call_command("demo", "--days", "2")  # again: nothing doubles
    assert Aggregate.objects.get(key=yesterday.key).version == 3


def cells(html: str, row: str) -> list[str]:
    """The text of a table row's cells, tags stripped."""
    import re

    found = re.search(rf'<tr id="{row}">(.*?)</tr>', html, re.S)
    assert found, row
    return [
        " ".join(re.sub(r"<[^>]+>", " ", cell.replace("<wbr>", "")).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", found.group(1), re.S)
    ]


def test_domain_page_shows_the_readiness_matrix(admin_client, seed):
    domain = store.get_domain("c-inputs")
    Rule.objects.create(
        domain=domain,
        name="b-by-noon",
        when="B >= 1",
        deadline_seconds=12 * 3600,
        deadline_from=Rule.DeadlineFrom.KEY_DATE,
        start=Rule.Start.HISTORY,
    )
    Rule.objects.create(
        domain=domain, name="only-x", when="A >= 1", aggregate_prefix="x"
    )
    fill("2026-11-27", 1)  # an A: waiting for run-c, late for b-by-noon
    engine.catch_up("c-inputs")
    html = admin_client.get("/d/c-inputs/").content.decode()
    header = html[html.index("<thead>") : html.index("</thead>")]
    assert header.index("b-by-noon") < header.index("only-x") < header.index("run-c")
    assert cells(html, "aggregate-2026-11-26")[3:6] == ["fired v2", "·", "fired v3"]
    assert cells(html, "aggregate-2026-11-27")[3:6] == ["late", "·", "waiting"]
    summary = html[html.index('id="rules-summary"') : html.index('class="search"')]
    assert "1 late" in summary and "1 waiting" in summary


def test_aggregate_page_says_why_for_each_rule(admin_client, seed):
    fill("2026-11-27", 1)
    engine.catch_up("c-inputs")
    html = admin_client.get("/d/c-inputs/2026-11-27/").content.decode()
    why = html[html.index('class="whys"') : html.index("Sources by collection")]
    assert "waiting" in why
    assert '✗</span> <code>A &gt;= 2</code> <span class="muted">A = 1</span>' in why
    assert '✗</span> <code>B &gt;= 1</code> <span class="muted">B = 0</span>' in why


def test_the_why_links_the_inputs_a_rule_used(admin_client, seed):
    from aggregates.rules import write
    from aggregates.rules.definition import RuleIn

    write.create_rule(
        "c-inputs", RuleIn(name="uses-yesterday", when="A and A@-1d", start="history")
    )
    fill("2026-11-25", 1)
    fill("2026-11-26", 1)
    engine.catch_up("c-inputs")
    html = admin_client.get("/d/c-inputs/2026-11-26/").content.decode()
    why = html[html.index('class="whys"') : html.index("Sources by collection")]
    inputs = why[why.index('class="inputs"') :]
    assert "<code>A@-1d</code>" in inputs
    assert 'href="/d/c-inputs/2026-11-25/?version=' in inputs


def test_rule_page_counts_late_first_and_logs_events(admin_client, seed):
    html = admin_client.get("/d/c-inputs/rules/run-c/").content.decode()
    tiles = html[html.index('class="tiles"') : html.index("Events")]
    assert tiles.index("late") < tiles.index("waiting") < tiles.index("fired")
    assert "ready" not in tiles  # a once rule fires; it is never left ready
    assert cells(html, "event-1") == [
        "1",
        "fired",
        "2026-11-26",
        "v3",
        cells(html, "event-1")[4],
    ]
    assert admin_client.get("/d/c-inputs/rules/nope/").status_code == 404


def test_domain_page_shows_webhooks_health(admin_client, seed):
    from aggregates.models import Webhook, WebhookDelivery

    domain = store.get_domain("c-inputs")
    common = {"domain": domain, "events": ["version"], "secret": "whsec_x"}
    healthy = Webhook.objects.create(url="http://ok.example/hook", cursor=3, **common)
    gone = Webhook.objects.create(
        url="http://gone.example/hook",
        paused=True,
        paused_reason="the receiver answered 410 Gone",
        last_status=410,
        last_attempt_at=domain.created_at,
        **common,
    )
    WebhookDelivery.objects.create(
        webhook=gone,
        event_id="msg_v1_1",
        attempt=1,
        at=domain.created_at,
        status_code=410,
        ms=3,
    )
    html = admin_client.get("/d/c-inputs/").content.decode()
    assert cells(html, f"webhook-{gone.pk}")[2].startswith(
        "paused the receiver answered 410 Gone"
    )
    assert "msg_v1_1 #1: HTTP 410" in html
    assert cells(html, f"webhook-{healthy.pk}")[2] == "healthy"


def test_picture_stacks_versions_of_the_same_moment(admin_client, domain):
    register_sources(  # one batch: one commit, one moment
        [NewSource("c-inputs", "batch", "AB"[i % 2], {"i": str(i)}) for i in range(7)]
    )
    html = admin_client.get("/d/c-inputs/batch/").content.decode()
    marks = re.findall(
        r'<circle class="mark version" id="mark-v(\d+)" data-version="\d+" '
        r'data-details="[^"]*" cx="([\d.]+)" cy="([\d.]+)" r="5">'
        r"<title>([^<]*)</title>",
        html,
    )
    assert sorted(int(number) for number, *_ in marks) == list(range(1, 8))
    assert len({x for _, x, _, _ in marks}) == 1  # the same moment
    rows = sorted(float(y) for _, _, y, _ in marks)
    assert all(b - a >= 10 for a, b in pairwise(rows))  # apart
    assert all(title.endswith(" UTC") for *_, title in marks)


def drawn(moments: list[datetime], collection: str = "A") -> dict:
    """The picture of versions at `moments`, none of them stored."""
    versions = []
    for number, at in enumerate(moments, start=1):
        version = Version(number=number, position=number, at=at)
        version.source = Source(collection=collection, keys={"n": str(number)})
        version.receipt_list = []
        versions.append(version)
    return picture(versions[::-1], [collection])


def test_picture_axis_says_the_time_and_the_day_where_it_changes():
    evening = datetime(2026, 11, 26, 18, 0, tzinfo=UTC)
    within_hours = drawn([evening, evening + timedelta(hours=3)])
    labels = [tick["label"] for tick in within_hours["ticks"]]
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in labels), labels
    assert [t["under"] for t in within_hours["ticks"] if t["under"]] == ["Nov 26 · UTC"]

    across_days = drawn([evening, evening + timedelta(hours=40)])
    assert [t["under"] for t in across_days["ticks"] if t["under"]] == [
        "Nov 27 · UTC",
        "Nov 28",
    ]
    weeks = drawn([evening, evening + timedelta(days=20)])
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d+", t["label"]) for t in weeks["ticks"])

    one_second = drawn([evening, evening, evening + timedelta(milliseconds=3)])
    seconds = [tick["label"] for tick in one_second["ticks"]]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in seconds)
    spots = {(mark["x"], mark["y"]) for mark in one_second["marks"]}
    assert len(spots) == 3
    assert "all at 2026-11-26 18:00:00 UTC" in one_second["description"]


def test_an_expected_key_nobody_posted_to_shows_as_missing(admin_client, seed):
    from aggregates.rules import write
    from aggregates.rules.definition import RuleIn

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    write.create_rule(
        "c-inputs",
        RuleIn(
            name="daily",
            when="A >= 1",
            expect={"every": "1d", "key": "%Y-%m-%d"},
        ),
    )
    engine.catch_up("c-inputs")
    html = admin_client.get("/d/c-inputs/").content.decode()
    row = cells(html, f"aggregate-{today}")
    assert row[1:4] == ["missing", "no sources", "waiting"]
    assert f'href="/d/c-inputs/{today}/#why-daily"' in html
    page = admin_client.get(f"/d/c-inputs/{today}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "nobody has posted a source to it yet" in text
    assert 'id="why-daily"' in text
    assert '<span class="muted">A = 0</span>' in text


def test_domain_page_lists_intakes_with_counts_and_the_last_refusal(admin_client, seed):
    from aggregates.intakes.definition import IntakeIn
    from aggregates.intakes.write import create_intake
    from aggregates.models import Intake

    create_intake(
        "c-inputs",
        IntakeIn(name="pipeline-a", aggregate="{{ data.day }}", collection="A"),
    )
    Intake.objects.update(
        accepted=12,
        refused=1,
        last_refusal="aggregate: no field 'day' here",
        last_refusal_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
    )
    html = admin_client.get("/d/c-inputs/").content.decode()
    row = cells(html, "intake-pipeline-a")
    assert row[0].startswith("pipeline-a POST /api/domains/c-inputs/intakes/pipeline-a")
    assert row[1:3] == ["12", "1"]
    assert row[3] == (
        "aggregate: no field &#x27;day&#x27; here 2026-12-01 10:00:00 UTC"
    )


def test_the_intake_page_previews_a_pasted_event_and_saves_nothing(admin_client, seed):
    from aggregates.intakes.definition import IntakeIn
    from aggregates.intakes.write import create_intake

    create_intake(
        "c-inputs",
        IntakeIn(
            name="s3",
            each="Records",
            aggregate="{{ item.key | match('dt=([0-9-]{10})') }}",
            collection="A",
            keys={"object": "{{ item.key }}"},
        ),
    )
    page = "/d/c-inputs/intakes/s3/"
    assert "Try an event" in admin_client.get(page).content.decode()
    body = '{"Records": [{"key": "a/dt=2026-12-01/x"}, {"key": "a/_SUCCESS"}]}'
    before = Version.objects.count()
    html = admin_client.get(page, {"body": body}).content.decode()
    assert "aggregate <code>2026-12-01</code>, collection <code>A</code>" in html
    assert "a/_SUCCESS" in html and "refused" in html
    assert Version.objects.count() == before
    broken = admin_client.get(page, {"body": "{nope"}).content.decode()
    assert "The body is not JSON" in broken
    assert admin_client.get("/d/c-inputs/intakes/nope/").status_code == 404


@pytest.mark.parametrize("page", PAGES)
def test_every_time_on_a_page_is_in_one_format_with_its_zone(admin_client, seed, page):
    html = admin_client.get(page).content.decode()
    times = re.findall(r"<time([^>]*)>([^<]*)</time>", html)
    shown = [text for attributes, text in times if "countdown" not in attributes]
    assert shown, page
    for text in shown:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text), text


def test_the_picture_draws_what_the_rules_wait_for(admin_client, db):
    """A day whose B never came: B's lane is there, empty; the rule's deadline is
    on the axis; a receipt's join runs along the rule between the lanes."""
    domain = store.create_domain("c-inputs", {})[0]
    Rule.objects.create(
        domain=domain,
        name="run-c",
        when="A >= 1 and B >= 1",
        deadline_seconds=3600,
        deadline_from="first_source",
    )
    register_sources([NewSource("c-inputs", "2026-11-26", "A", {"run": "am"})])
    register_sources([NewSource("c-inputs", "2026-11-26", "A", {"run": "pm"})])
    engine.catch_up("c-inputs")
    Receipt.objects.create(
        aggregate=Aggregate.objects.get(key="2026-11-26"),
        watcher="c-runner",
        version=1,
        outcome="success",
    )
    html = admin_client.get("/d/c-inputs/2026-11-26/").content.decode()
    picture = html[html.index('<svg class="picture"') : html.index("</svg>")]
    assert ">B — none yet<" in picture
    assert 'class="deadline-label"' in picture and "run-c deadline" in picture
    (link,) = re.findall(r'<path class="link" d="([^"]+)"', picture)
    assert re.fullmatch(r"M[\d.]+,[\d.]+V[\d.]+H[\d.]+V[\d.]+", link), link
    assert picture.count('class="hit"') == 3  # two versions and a receipt


def test_the_demo_shows_day_by_day_what_the_docs_say(admin_client, db):
    """docs/dashboard.md's table of the demo's days against the domain page."""
    from django.core.management import call_command
    from django.utils import timezone

    from tests.toolkit import ROOT

    docs = (ROOT / "docs" / "dashboard.md").read_text()
    rows = re.findall(
        r"^\| (\d) days? ago \| [^|]+ \| `([^`]+)`(, late)?", docs, re.MULTILINE
    )
    assert len(rows) == 7
    call_command("demo")
    html = admin_client.get("/d/demo-c-inputs/").content.decode()
    today = timezone.now().date()
    for ago, status, late in rows:
        day = (today - timedelta(days=int(ago))).isoformat()
        cell = re.search(
            rf'<tr id="aggregate-{day}">.*?<td class="rule-column">(.*?)</td>',
            html,
            re.S,
        ).group(1)
        assert f">{status}</span>" in cell, (ago, cell)
        assert ("was-late" in cell) == bool(late), (ago, cell)
    today_row = "today | A (after 06:00 UTC) | `waiting`; from 20:00 UTC `fired v1`"
    assert today_row in docs
    today_cell = re.search(
        rf'<tr id="aggregate-{today}">.*?<td class="rule-column">(.*?)</td>', html, re.S
    ).group(1)
    # The rule's deadline is 20:00 UTC of the key's day: then its fallback settles
    # for yesterday's B (the demo ran just now, at whatever hour the test runs).
    expected = ">fired v1</span>" if timezone.now().hour >= 20 else ">waiting</span>"
    assert expected in today_cell, today_cell
