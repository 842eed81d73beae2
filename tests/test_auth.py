"""Tokens: 401 missing or unknown, 403 scope or domain; checked before routing."""

import json

import pytest
from django.core.management import call_command

from aggregates.models import ApiToken, Version
from aggregates.tokens import create_token, digest, revoke_token
from tests.toolkit import ApiClient

SOURCE = {"domain": "c-inputs", "aggregate": "a", "collection": "A"}


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer ", "Bearer bk_bogus", "Basic dXNlcjpwdw==", "bk_x"],
)
def test_missing_or_unknown_token_is_401(domain, header):
    client = ApiClient(None)
    headers = {"Authorization": header} if header else {}
    for method, path, body in (
        ("GET", "/api/domains", None),
        ("POST", "/api/sources", json.dumps(SOURCE)),
        # Authentication comes before the route and the method.
        ("GET", "/api/no-such-path", None),
        ("DELETE", "/api/sources", None),
    ):
        response = client.request(
            method, path, body=body, content_type="application/json", headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert Version.objects.count() == 0


def test_revoked_token_is_401(domain):
    token, raw = create_token(name="gone", scope="write")
    revoke_token(token)
    assert ApiClient(raw).get("/api/domains").status_code == 401


def test_read_token_cannot_write(domain, read_token):
    client = ApiClient(read_token)
    assert client.get("/api/domains/c-inputs").status_code == 200
    response = client.post("/api/sources", SOURCE)
    assert response.status_code == 403
    assert "read scope" in response.json()["detail"]
    assert client.post("/api/domains", {"key": "new"}).status_code == 403
    assert Version.objects.count() == 0


def test_domain_limited_token(domain):
    _, raw = create_token(name="limited", scope="write", domains=["other"])
    client = ApiClient(raw)
    # 403 whether or not the domain exists.
    assert client.get("/api/domains/c-inputs").status_code == 403
    assert client.get("/api/domains/does-not-exist").status_code == 403
    assert client.get("/api/domains/c-inputs/versions").status_code == 403
    assert client.post("/api/sources", SOURCE).status_code == 403
    assert (
        client.post("/api/sources", [{**SOURCE, "domain": "other"}, SOURCE]).status_code
        == 403
    )
    # Creating domains needs a token for every domain.
    assert client.post("/api/domains", {"key": "other"}).status_code == 403
    assert client.get("/api/domains").json() == {"domains": []}
    assert Version.objects.count() == 0


def test_domain_limited_token_works_in_its_domain(domain):
    _, raw = create_token(name="limited", scope="write", domains=["c-inputs"])
    client = ApiClient(raw)
    assert client.post("/api/sources", SOURCE).status_code == 201
    assert [d["key"] for d in client.get("/api/domains").json()["domains"]] == [
        "c-inputs"
    ]


def test_openapi_docs_and_probes_need_no_token(transactional_db):
    client = ApiClient(None)
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    assert "/api/sources" in schema.json()["paths"]
    assert client.get("/api/docs").status_code == 200
    assert client.get("/livez").json() == {"status": "ok"}
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_token_is_stored_hashed(transactional_db):
    token, raw = create_token(name="t", scope="read")
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.digest == digest(raw)
    assert raw not in str(ApiToken.objects.values().get(pk=token.pk))


def test_token_command_create_list_revoke(transactional_db, capsys):
    call_command(
        "token", "create", "--scope", "write", "--domain", "c-inputs", "--name", "ci"
    )
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert raw.startswith("bk_")
    token = ApiToken.objects.get(digest=digest(raw))
    assert (token.name, token.scope, token.domains) == ("ci", "write", ["c-inputs"])

    call_command("token", "list")
    listing = capsys.readouterr().out
    assert token.prefix in listing and raw not in listing

    assert ApiClient(raw).get("/api/domains").status_code == 200  # now cached
    call_command("token", "revoke", str(token.pk))
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert ApiClient(raw).get("/api/domains").status_code == 401


def test_token_command_rejects_bad_domain(transactional_db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="characters from"):
        call_command("token", "create", "--scope", "read", "--domain", "a b")
    assert ApiToken.objects.count() == 0


def test_token_revoked_in_the_admin_stops_working_at_once(
    transactional_db, admin_client
):
    token, raw = create_token(name="t", scope="read")
    assert ApiClient(raw).get("/api/domains").status_code == 200
    response = admin_client.post(
        f"/admin/aggregates/apitoken/{token.pk}/change/",
        {
            "name": "t",
            "scope": "read",
            "domains": "",
            "revoked_at_0": "2026-01-01",
            "revoked_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content
    assert ApiClient(raw).get("/api/domains").status_code == 401


def test_token_created_in_the_admin_is_shown_once(transactional_db, admin_client):
    response = admin_client.post(
        "/admin/aggregates/apitoken/add/",
        {"name": "loader", "scope": "write", "domains": "c-inputs, other"},
        follow=True,
    )
    shown = [m.message for m in response.context["messages"]]
    raw = shown[0].rsplit(" ", 1)[-1]
    token = ApiToken.objects.get()
    assert token.digest == digest(raw)
    assert token.domains == ["c-inputs", "other"]
    assert raw not in admin_client.get("/admin/aggregates/apitoken/").content.decode()


def test_a_publish_token_posts_sources_and_reads_nothing_else(domain):
    _, raw = create_token(name="pipeline-a", scope="publish", domains=["c-inputs"])
    client = ApiClient(raw)
    assert client.post("/api/sources", SOURCE).status_code == 201
    assert (
        client.post("/api/sources", [{**SOURCE, "collection": "B"}]).status_code == 200
    )
    assert client.get("/api/domains/c-inputs/aggregates/a").status_code == 200
    refused = client.post("/api/domains/c-inputs/rules", {"name": "r", "when": "A"})
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "this token has publish scope (it may post sources, nothing else); this "
        "needs write"
    )
    other = client.post("/api/sources", {**SOURCE, "domain": "other"})
    assert other.status_code == 403  # its domains only
    assert Version.objects.count() == 2


def test_token_command_creates_publish_tokens(transactional_db, capsys):
    call_command("token", "create", "--scope", "publish", "--domain", "c-inputs")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiToken.objects.get(digest=digest(raw)).scope == "publish"


# Every operation of the OpenAPI document says which scope it needs; each token
# scope is refused (403) exactly where the document says it falls short.

INTAKE = {
    "name": "pipeline-a",
    "aggregate": "{{ data.day }}",
    "collection": "A",
    "keys": {"day": "{{ data.day }}"},
}
SAMPLES = {
    ("post", "/api/domains"): {"key": "another"},
    ("post", "/api/sources"): SOURCE,
    ("post", "/api/receipts"): {
        "watcher": "w",
        "domain": "c-inputs",
        "aggregate": "a",
        "version": 1,
        "outcome": "success",
    },
    ("post", "/api/domains/{domain}/rules"): {"name": "new", "when": "A"},
    ("post", "/api/domains/{domain}/rules/preview"): {"name": "p", "when": "A"},
    ("put", "/api/domains/{domain}/rules/{rule}"): {"name": "run-c", "when": "B"},
    ("post", "/api/domains/{domain}/rules/{rule}/leases"): {
        "watcher": "w",
        "holder": "h",
    },
    ("post", "/api/domains/{domain}/webhooks"): {
        "url": "http://127.0.0.1:9/",
        "events": ["version"],
    },
    ("put", "/api/domains/{domain}/webhooks/{webhook}"): {"description": "d"},
    ("post", "/api/domains/{domain}/webhooks/{webhook}/replay"): {"after_position": 0},
    ("post", "/api/domains/{domain}/intakes"): {**INTAKE, "name": "new"},
    ("put", "/api/domains/{domain}/intakes/{intake}"): INTAKE,
    ("post", "/api/domains/{domain}/intakes/preview"): {"intake": INTAKE, "body": {}},
    ("post", "/api/domains/{domain}/intakes/{intake}/events"): {"day": "d"},
}
RANKS = {"read": 0, "publish": 1, "write": 2}


def test_every_operation_needs_the_scope_the_document_says(domain, api, settings):
    from aggregates.webhooks.targets import AllowList

    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse("loopback")
    assert api.post("/api/sources", SOURCE).status_code == 201
    assert api.post("/api/domains/c-inputs/rules", {"name": "run-c", "when": "A"})
    hook = api.post(
        "/api/domains/c-inputs/webhooks",
        SAMPLES[("post", "/api/domains/{domain}/webhooks")],
    ).json()["id"]
    assert api.post("/api/domains/c-inputs/intakes", INTAKE).status_code == 201
    tokens = {scope: create_token(name=scope, scope=scope)[1] for scope in RANKS}
    document = api.get("/api/openapi.json").json()
    values = {
        "domain": "c-inputs",
        "aggregate": "a",
        "rule": "run-c",
        "webhook": str(hook),
        "intake": "pipeline-a",
        "watcher": "w",
    }
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            (requirement,) = operation["security"]
            (role,) = requirement["BearerToken"]
            assert operation["description"].startswith("Needs "), (method, path)
            if path == "/api/stream":
                continue  # it streams: tests/test_sse.py checks its token
            body = SAMPLES.get((method, path))
            assert body is not None or method in ("get", "delete"), (method, path)
            url = path.format(**values)
            if "leases/" in path:
                url += "?holder=h"
            for scope in sorted(RANKS, key=RANKS.get):  # write last: it changes things
                response = ApiClient(tokens[scope]).request(
                    method.upper(),
                    url,
                    body=None if body is None else json.dumps(body),
                    content_type="application/json",
                )
                refused = response.status_code == 403
                assert refused == (RANKS[scope] < RANKS[role]), (
                    method,
                    path,
                    scope,
                    response.status_code,
                    response.text,
                )
            checked += 1
    assert checked >= 25
