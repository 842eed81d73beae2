"""The admin: domains and tokens editable; history read-only; lists flat in size."""

import ipaddress

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from aggregates import store
from tests.toolkit import fill

PAGES = [
    "/admin/aggregates/domain/",
    "/admin/aggregates/aggregate/",
    "/admin/aggregates/version/",
    "/admin/aggregates/source/",
    "/admin/aggregates/apitoken/",
    "/admin/aggregates/receipt/",
    "/admin/aggregates/rule/",
    "/admin/aggregates/ruleevent/",
    "/admin/aggregates/intake/",
]


def spread(count: int, prefix: str) -> None:
    """`count` new sources over five aggregates."""
    for n in range(5):
        fill(f"{prefix}-{n}", count // 5)


@pytest.fixture
def history(db):
    store.create_domain("c-inputs", {})
    spread(10, "small")


@pytest.mark.parametrize("page", PAGES)
def test_list_pages_run_the_same_queries_whatever_the_size(admin_client, history, page):
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(page).status_code == 200
    spread(90, "large")
    with CaptureQueriesContext(connection) as large:
        response = admin_client.get(page)
    assert response.status_code == 200
    assert len(large.captured_queries) == len(small.captured_queries)


@pytest.mark.parametrize("model", ["aggregate", "version", "source"])
def test_history_is_read_only(admin_client, history, model):
    assert admin_client.get(f"/admin/aggregates/{model}/add/").status_code == 403
    from django.apps import apps

    obj = apps.get_model("aggregates", model).objects.first()
    page = admin_client.get(f"/admin/aggregates/{model}/{obj.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert (
        admin_client.post(f"/admin/aggregates/{model}/{obj.pk}/delete/").status_code
        == 403
    )


def test_domains_can_be_added_but_not_deleted(admin_client, history):
    response = admin_client.post(
        "/admin/aggregates/domain/add/", {"key": "new-domain", "attrs": "{}"}
    )
    assert response.status_code == 302
    from aggregates.models import Domain

    domain = Domain.objects.get(key="new-domain")
    assert (
        admin_client.post(f"/admin/aggregates/domain/{domain.pk}/delete/").status_code
        == 403
    )


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_rejects_a_bad_domain_key(admin_client, history):
    response = admin_client.post(
        "/admin/aggregates/domain/add/", {"key": "bad key", "attrs": "{}"}
    )
    assert response.status_code == 200
    assert b"no / and no spaces" in response.content


def test_saving_a_domain_in_the_admin_keeps_the_write_path_counters(history, rf):
    from django.contrib.admin.sites import site

    from aggregates.models import Domain

    loaded = Domain.objects.get(key="c-inputs")  # as the change form loads it
    fill("meanwhile", 3)  # posts land before the save
    loaded.attrs = {"owner": "data"}
    site._registry[Domain].save_model(rf.post("/"), loaded, None, change=True)
    domain = Domain.objects.get(key="c-inputs")
    assert (domain.latest_position, domain.attrs) == (13, {"owner": "data"})
    fill("after", 1)  # and writing goes on


def rule_form(domain, **fields) -> dict:
    return {
        "domain": domain.pk,
        "name": "run-c",
        "when": "A >= 1",
        "trigger": "once",
        "aggregate_prefix": "",
        "deadline_seconds": "",
        "deadline_from": "",
        "on_deadline": "late",
        "start": "now",
        **fields,
    }


def test_rules_are_defined_in_the_admin_as_in_the_api(admin_client, history):
    from aggregates.models import Domain, Rule

    domain = Domain.objects.get(key="c-inputs")
    form = rule_form(domain, when="A >= and B")
    refused = admin_client.post("/admin/aggregates/rule/add/", form)
    assert refused.status_code == 200
    assert b"at column 6" in refused.content
    assert not Rule.objects.exists()
    added = admin_client.post(
        "/admin/aggregates/rule/add/", {**form, "when": "A >= 1 and B >= 1"}
    )
    assert added.status_code == 302
    rule = Rule.objects.get()
    assert (rule.when, rule.position) == ("A >= 1 and B >= 1", 10)  # from now on


def test_intakes_are_defined_in_the_admin_as_in_the_api(admin_client, history):
    from aggregates.models import Domain, Intake

    domain = Domain.objects.get(key="c-inputs")
    form = {
        "domain": domain.pk,
        "name": "pipeline-a",
        "aggregate": "{{ ''.__class__ }}",
        "collection": "A",
        "keys": "null",
        "attrs": '{"path": "{{ data.path | nope }}"}',
        "each": "",
        "match": "{}",
    }
    refused = admin_client.post("/admin/aggregates/intake/add/", form)
    assert refused.status_code == 200
    assert b"names starting with _ are not available" in refused.content
    assert b"has no filter &#x27;nope&#x27;" in refused.content
    assert not Intake.objects.exists()
    form |= {
        "aggregate": "{{ data.partition }}",
        "attrs": '{"path": "{{ data.path }}"}',
    }
    assert admin_client.post("/admin/aggregates/intake/add/", form).status_code == 302
    intake = Intake.objects.get()
    assert (intake.keys, intake.attrs) == (None, {"path": "{{ data.path }}"})
    page = f"/admin/aggregates/intake/{intake.pk}/change/"
    assert admin_client.get(page).status_code == 200
    changed = admin_client.post(page, {**form, "collection": "A2"})
    assert changed.status_code == 302, changed.content
    intake.refresh_from_db()
    assert intake.collection == "A2"


def test_a_rules_expected_keys_are_set_and_kept_in_the_admin(admin_client, history):
    from aggregates.models import Domain, Rule

    domain = Domain.objects.get(key="c-inputs")
    form = rule_form(domain, expect_key="%Y%m%d", expect_every_seconds="86400")
    refused = admin_client.post("/admin/aggregates/rule/add/", form)
    assert refused.status_code == 200
    assert "must hold %Y-%m-%d" in refused.content.decode()
    form["expect_key"] = "%Y-%m-%d"
    assert admin_client.post("/admin/aggregates/rule/add/", form).status_code == 302
    rule = Rule.objects.get()
    assert (rule.expect_key, rule.expect_every_seconds) == ("%Y-%m-%d", 86400)
    assert rule.expect_next is not None
    page = f"/admin/aggregates/rule/{rule.pk}/change/"
    changed = admin_client.post(page, {**form, "when": "A >= 2"})
    assert changed.status_code == 302, changed.content
    rule.refresh_from_db()
    assert (rule.when, rule.expect_key) == ("A >= 2", "%Y-%m-%d")


def test_webhooks_are_changed_in_the_admin_as_in_the_api(
    admin_client, history, public_host
):
    from aggregates.models import Domain, Rule, Webhook

    domain = Domain.objects.get(key="c-inputs")
    rule = Rule.objects.create(domain=domain, name="run-c", when="A >= 1", latest_seq=3)
    form = webhook_form(domain)
    added = admin_client.post("/admin/aggregates/webhook/add/", form)
    assert added.status_code == 302
    webhook = Webhook.objects.get()
    assert webhook.secret.startswith("whsec_")
    assert webhook.cursor == 10  # the events from now on

    def change(**fields) -> Webhook:
        page = f"/admin/aggregates/webhook/{webhook.pk}/change/"
        response = admin_client.post(page, {**form, **fields})
        assert response.status_code == 302, response.content
        return Webhook.objects.get()

    # Another stream: its cursor counts that stream's events, from now on.
    switched = change(events=["rule.fired"], rule=rule.pk)
    assert (switched.rule, switched.cursor) == (rule, 3)
    paused = change(events=["rule.fired"], rule=rule.pk, paused="on")
    assert (paused.paused, paused.paused_reason) == (True, "paused in the admin")
    Webhook.objects.update(attempts=7, paused_reason="HTTP 410 Gone")
    resumed = change(events=["rule.fired"], rule=rule.pk)
    assert (resumed.paused, resumed.paused_reason, resumed.attempts) == (False, "", 0)
    assert resumed.cursor == 3  # where it stopped


# The admin writes through the API's own actions: it refuses what the API refuses,
# and what it writes is announced as the API's writes are.


def test_the_admin_refuses_a_rule_the_api_refuses(admin_client, api, history):
    from aggregates.models import Domain, Rule

    domain = Domain.objects.get(key="c-inputs")
    for fields, api_says in [
        ({"name": "preview"}, "reserved"),
        ({"when": "age(A) < 3000000d"}, "3650"),
    ]:
        form = rule_form(domain, **fields)
        payload = {"name": form["name"], "when": form["when"]}
        through_api = api.post("/api/domains/c-inputs/rules", payload)
        assert through_api.status_code == 400, through_api.text
        assert api_says in through_api.text
        response = admin_client.post("/admin/aggregates/rule/add/", form)
        assert response.status_code == 200  # the form again, with the error
        assert api_says in response.content.decode()
    assert not Rule.objects.exists()


def test_rules_written_in_the_admin_are_announced(
    admin_client, history, django_capture_on_commit_callbacks
):
    from aggregates import announcements
    from aggregates.models import Domain, Rule

    domain = Domain.objects.get(key="c-inputs")
    told: list[str] = []
    with (
        announcements.rules_changed.listening(told.extend),
        django_capture_on_commit_callbacks(execute=True),
    ):
        added = admin_client.post("/admin/aggregates/rule/add/", rule_form(domain))
        assert added.status_code == 302
        rule = Rule.objects.get()
        page = f"/admin/aggregates/rule/{rule.pk}/change/"
        changed = admin_client.post(page, rule_form(domain, when="A >= 2"))
        assert changed.status_code == 302, changed.content
        deleted = admin_client.post(
            f"/admin/aggregates/rule/{rule.pk}/delete/", {"post": "yes"}
        )
        assert deleted.status_code == 302
    assert told == ["c-inputs"] * 3  # the engine steps the domain each time
    assert not Rule.objects.exists()


def webhook_form(domain) -> dict:
    return {
        "domain": domain.pk,
        "url": "https://hooks.example.com/botlnek",
        "events": ["version"],
        "rule": "",
        "description": "",
        "format": "standard",
    }


@pytest.fixture
def public_host(monkeypatch):
    """Every host resolves to a public address (the admin checks URLs' hosts as
    the API does)."""
    from aggregates.webhooks import targets

    monkeypatch.setattr(
        targets, "resolve", lambda host, port: [ipaddress.ip_address("93.184.215.14")]
    )


def test_the_admin_refuses_a_webhook_the_api_refuses(
    admin_client, api, history, public_host
):
    from aggregates.models import Domain, Rule, Webhook

    domain = Domain.objects.get(key="c-inputs")
    rule = Rule.objects.create(domain=domain, name="run-c", when="A >= 1")
    other = store.create_domain("elsewhere", {})[0]
    elsewhere = Rule.objects.create(domain=other, name="run-d", when="A >= 1")
    url = "https://hooks.example.com/botlnek"
    through_api = api.post(
        "/api/domains/c-inputs/webhooks",
        {"url": url, "events": ["version"], "rule": "run-c"},
    )
    assert through_api.status_code == 400, through_api.text
    assert "takes no rule" in through_api.text
    form = {"domain": domain.pk, "url": url, "description": ""}
    for fields, says in [
        ({"events": ["version"], "rule": rule.pk}, "takes no rule"),
        ({"events": ["rule.fired"], "rule": ""}, "the rule they are of"),
        ({"events": ["rule.fired"], "rule": elsewhere.pk}, "another domain"),
        ({"events": ["everything"], "rule": ""}, "events"),
    ]:
        response = admin_client.post(
            "/admin/aggregates/webhook/add/", {**form, **fields}
        )
        assert response.status_code == 200, fields
        assert says in response.content.decode(), fields
    assert not Webhook.objects.exists()


def test_a_webhook_saved_in_the_admin_keeps_the_cursor_the_deliverer_moved(
    admin_client, history, public_host, django_capture_on_commit_callbacks
):
    from aggregates import announcements
    from aggregates.models import Domain, Webhook

    domain = Domain.objects.get(key="c-inputs")
    form = webhook_form(domain)
    told: list[str] = []
    with (
        announcements.webhooks_changed.listening(told.extend),
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert (
            admin_client.post("/admin/aggregates/webhook/add/", form).status_code == 302
        )
        webhook = Webhook.objects.get()
        page = f"/admin/aggregates/webhook/{webhook.pk}/change/"
        admin_client.get(page)  # the form is loaded with cursor 10 ...
        Webhook.objects.update(cursor=12)  # ... then the deliverer moves on
        changed = admin_client.post(page, {**form, "description": "C's trigger"})
        assert changed.status_code == 302, changed.content
    saved = Webhook.objects.get()
    assert (saved.description, saved.cursor) == ("C's trigger", 12)
    assert told == ["c-inputs", "c-inputs"]  # the delivery worker looks, each time


def test_the_admin_speaks_botlnek(admin_client, history):
    index = admin_client.get("/admin/").content.decode()
    assert '<div id="site-name"><a href="/admin/">Botlnek administration</a>' in index
    assert "API tokens" in index and "Webhook deliveries" in index
    assert "Api tokens" not in index and "deliverys" not in index
    add = admin_client.get("/admin/aggregates/webhook/add/").content.decode()
    assert add.count('type="checkbox" name="events"') == 3
