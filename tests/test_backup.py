"""Backups: `export` then `import` gives back the same database (docs/backup.md) —
in process on the test database, and a move from SQLite to PostgreSQL with real
servers, a websocket subscriber and a webhook receiver."""

import asyncio
import io
import json
import os
import stat
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from aggregates.management import backup
from aggregates.models import ApiToken, Domain, Rule, Webhook
from aggregates.rules import engine
from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token
from aggregates.webhooks.targets import AllowList
from tests.test_webhooks import Receiver
from tests.toolkit import (
    ApiClient,
    ServerProcess,
    Subscriber,
    manage,
    wait_for,
)

D = "/api/domains/c-inputs"


def register(aggregate, collection, domain="c-inputs", **keys):
    return register_sources([NewSource(domain, aggregate, collection, keys, keys)])


@pytest.fixture
def history(api, domain, settings):
    """A domain with everything a user relies on: versions, a rule that went late
    and fired, receipts, webhooks with progress, an intake, and a second domain."""
    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse("loopback")
    for name, body in {
        "run-c": {
            "when": "A >= 2 and B >= 1",
            "deadline": {"after": "1h", "from": "first_source"},
        },
        "each": {"when": "A >= 1", "trigger": "every"},
    }.items():
        assert api.post(f"{D}/rules", {"name": name, **body}).status_code == 201
    register("2026-11-26", "A", run="am")
    started = timezone.now()
    engine.catch_up("c-inputs", now=started + timedelta(minutes=61))
    register("2026-11-26", "B")
    register("2026-11-26", "A", run="pm")
    register("2026-11-27", "A", run="am")
    engine.catch_up("c-inputs")
    receipt = {"watcher": "c", "domain": "c-inputs", "aggregate": "2026-11-26"}
    for extra in ({"version": 3}, {"version": 3, "rule": "run-c", "seq": 2}):
        answer = api.post("/api/receipts", {**receipt, **extra, "outcome": "success"})
        assert answer.status_code == 201, answer.text
    hook = api.post(
        f"{D}/webhooks", {"url": "http://127.0.0.1:9/v", "events": ["version"]}
    )
    rule_hook = api.post(
        f"{D}/webhooks",
        {"url": "http://127.0.0.1:9/r", "events": ["rule.fired"], "rule": "run-c"},
    )
    # Where a deliverer would have left them: two delivered, then failing.
    Webhook.objects.filter(pk=hook.json()["id"]).update(
        cursor=2, attempts=3, failing_since=started, last_status=503
    )
    Webhook.objects.filter(pk=rule_hook.json()["id"]).update(
        paused=True, paused_reason="410 Gone"
    )
    intake = {"name": "a", "aggregate": "{{ data.day }}", "collection": "A"}
    assert api.post(f"{D}/intakes", intake).status_code == 201
    api.post("/api/domains", {"key": "other", "attrs": {"team": "x"}})
    register("2026-11-26", "B", domain="other", n="1")
    # A rule deleted before the export: its id is never given out again.
    api.post(f"{D}/rules", {"name": "gone", "when": "A >= 1"})
    assert api.request("DELETE", f"{D}/rules/gone").status_code == 204


def reads(api, domains=("c-inputs", "other")) -> dict:
    """Every API read of the domains, as a user sees them (`api`: an in-process
    ApiClient, or a Remote server)."""
    seen = {}

    def get(path, **params):
        response = api.get(path, **params)
        assert response.status_code == 200, (path, response.text)
        seen[(path, tuple(params.items()))] = response.json()
        return response.json()

    for domain in domains:
        base = f"/api/domains/{domain}"
        get(base)
        aggregates = get(f"{base}/aggregates")["aggregates"]
        get(f"{base}/versions", after_position=0)
        for row in aggregates:
            get(f"{base}/aggregates/{row['key']}")
            get(f"{base}/aggregates/{row['key']}/versions")
            get(f"{base}/aggregates/{row['key']}/receipts")
        for rule in get(f"{base}/rules")["rules"]:
            name = rule["name"]
            get(f"{base}/rules/{name}")
            get(f"{base}/rules/{name}/events", after_seq=0)
            get(f"{base}/rules/{name}/aggregates")
            get(f"{base}/rules/{name}/receipts", watcher="c")
        for hook in get(f"{base}/webhooks")["webhooks"]:
            get(f"{base}/webhooks/{hook['id']}")
            get(f"{base}/webhooks/{hook['id']}/deliveries")
        for intake in get(f"{base}/intakes")["intakes"]:
            get(f"{base}/intakes/{intake['name']}")
    get("/api/domains")
    return seen


class Remote:
    """GETs to a real server with a token, as reads() makes them."""

    def __init__(self, server: ServerProcess, token: str):
        self.url, self.headers = server.url, {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **params) -> httpx.Response:
        return httpx.get(
            self.url + path, params=params, headers=self.headers, timeout=30
        )

    def post(self, path: str, body) -> dict:
        response = httpx.post(
            self.url + path, json=body, headers=self.headers, timeout=60
        )
        assert response.status_code in (200, 201), response.text
        return response.json()


def export(tmp_path, *args, name="backup.jsonl") -> str:
    path = tmp_path / name
    call_command("export", "--output", str(path), *args, stderr=io.StringIO())
    return str(path)


def import_(path) -> str:
    out = io.StringIO()
    call_command("import", path, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def wipe() -> None:
    Domain.objects.all().delete()
    ApiToken.objects.all().delete()


def test_round_trip_gives_back_every_read(history, api, tmp_path):
    before = reads(api)
    _, raw = create_token(name="reader", scope="read", domains=["other"])
    path = export(tmp_path)
    with open(path) as file:
        head = json.loads(file.readline())
    assert head["botlnek_export"] == backup.FORMAT
    assert head["whole_database"] and head["domains"] == ["c-inputs", "other"]
    assert head["records"]["version"] == 5 and head["records"]["token"] == 2
    assert head["records"]["rule_event"] == 6 and head["database"]
    newest = Rule.objects.order_by("pk").last().pk
    assert head["ids"]["rule"] == newest + 1  # the deleted rule's id too

    wipe()
    assert not ApiToken.objects.exists()
    assert "Restored domain 'c-inputs'" in import_(path)
    assert reads(api) == before  # the write token authenticates again
    assert ApiClient(raw).get("/api/domains/other").status_code == 200

    # Counters go on after the restored rows.
    posted = api.post(
        "/api/sources",
        {"domain": "c-inputs", "aggregate": "2026-11-27", "collection": "B"},
    ).json()
    assert (posted["version"], posted["position"]) == (2, 5)
    engine.catch_up("c-inputs")
    seqs = [e["seq"] for e in api.get(f"{D}/rules/each/events").json()["events"]]
    assert seqs == [1, 2, 3, 4, 5]
    assert api.post(f"{D}/rules", {"name": "new", "when": "A >= 1"}).status_code == 201
    assert Rule.objects.get(name="new").pk > head["ids"]["rule"]


def test_reimport_changes_nothing_and_says_so(history, api, tmp_path):
    path = export(tmp_path)
    before = reads(api)
    said = import_(path)
    assert "'c-inputs' is here already, exactly as in the file" in said
    assert "Tokens: 0 restored, 1 already here." in said
    assert reads(api) == before


def test_a_token_made_before_the_restore_stays(history, api, tmp_path):
    path = export(tmp_path)
    restored = ApiToken.objects.get().pk
    wipe()
    # As `manage.py serve` makes on a new database, and with the restored one's id.
    first, raw = create_token(name="first write token", scope="write")
    ApiToken.objects.filter(pk=first.pk).update(id=restored)
    assert "Tokens: 1 restored, 0 already here." in import_(path)
    assert api.get(D).status_code == 200
    assert ApiClient(raw).get(D).status_code == 200
    assert ApiToken.objects.get(digest=first.digest).pk == restored


def test_a_domain_export_restores_that_domain_without_tokens(history, api, tmp_path):
    path = export(tmp_path, "--domain", "other")
    before = reads(api)
    Domain.objects.filter(key="other").delete()
    with open(path) as file:
        head = json.loads(file.readline())
    assert head["domains"] == ["other"] and "token" not in head["records"]
    assert "Restored domain 'other': 1 aggregate, 1 version." in import_(path)
    assert reads(api) == before


def test_a_target_with_another_history_is_refused_with_nothing_written(
    history, api, tmp_path
):
    path = export(tmp_path)
    Domain.objects.filter(key="c-inputs").delete()
    register("2026-11-27", "A", domain="other", n="2")  # other moved on
    with pytest.raises(CommandError, match="'other' is here already") as refused:
        import_(path)
    assert "nothing was written" in str(refused.value)
    # c-inputs came first in the file and was restored before the refusal: undone.
    assert not Domain.objects.filter(key="c-inputs").exists()


def test_a_restore_keeps_ids_and_refuses_where_they_are_taken(history, tmp_path):
    path = export(tmp_path, "--domain", "other")
    other = Domain.objects.get(key="other").pk
    Domain.objects.filter(pk=other).delete()
    # Another domain has its id (as in another database): webhook ids would collide.
    Domain.objects.create(key="newcomer", pk=other)
    with pytest.raises(CommandError, match="had id"):
        import_(path)
    assert not Domain.objects.filter(key="other").exists()


def test_the_output_file_is_private(history, tmp_path):
    path = export(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(CommandError, match="File exists"):
        export(tmp_path)
    with pytest.raises(CommandError, match="domain 'nope' does not exist"):
        export(tmp_path, "--domain", "nope", name="nope.jsonl")
    assert not (tmp_path / "nope.jsonl").exists()


def test_export_to_stdout_writes_json_lines(history, capsys):
    out = io.StringIO()
    call_command("export", "--domain", "c-inputs", stdout=out, stderr=io.StringIO())
    lines = out.getvalue().splitlines()
    kinds = [json.loads(line).get("kind") for line in lines[1:]]
    assert kinds[:2] == ["domain", "aggregate"] and "webhook" in kinds
    versions = [json.loads(line) for line in lines if '"kind": "version"' in line]
    assert [v["position"] for v in versions] == [1, 2, 3, 4]
    assert versions[0]["source"]["keys"] == {"run": "am"}
    assert "24/24 records exported" in capsys.readouterr().err  # a progress bar


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: {**r, "position": "x"}, "version 'position'"),
        (lambda r: {**r, "at": "yesterday"}, "version 'at'"),
        (lambda r: {k: v for k, v in r.items() if k != "number"}, "has no 'number'"),
        (lambda r: {**r, "colour": 1}, "has no 'colour'"),
        (lambda r: {**r, "kind": "thing"}, "'kind' must be one of"),
        (lambda r: {**r, "domain_id": 99}, "is not in domain 'c-inputs'"),
        (lambda r: {**r, "aggregate_id": 99}, "is not in domain 'c-inputs'"),
        (lambda r: {**r, "counts": [1]}, "'counts' must be an object"),
    ],
)
def test_a_bad_line_is_refused_by_number_with_nothing_written(
    history, tmp_path, change, message
):
    path = export(tmp_path)
    lines = Path(path).read_text().splitlines()
    number = next(n for n, line in enumerate(lines, 1) if '"kind": "version"' in line)
    lines[number - 1] = json.dumps(change(json.loads(lines[number - 1])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    wipe()
    with pytest.raises(CommandError, match=f"line {number}: .*{message}"):
        import_(str(bad))
    assert not Domain.objects.exists() and not ApiToken.objects.exists()


def test_a_truncated_file_is_refused(history, tmp_path):
    path = export(tmp_path)
    lines = Path(path).read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-3]) + "\n")
    wipe()
    with pytest.raises(CommandError, match="ends early"):
        import_(str(short))
    assert not Domain.objects.exists()


# The move: SQLite → PostgreSQL, with real servers


@pytest.fixture
def fresh_postgres():
    """An empty PostgreSQL database of its own (dropped afterwards): its URL."""
    server = urlsplit(os.environ["BOTLNEK_DATABASE_URL"])
    name = f"botlnek_move_{uuid.uuid4().hex[:12]}"
    admin = server._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server._replace(path=f"/{name}").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_a_move_from_sqlite_to_postgresql_goes_on_where_it_stopped(
    start_server, tmp_path, fresh_postgres
):
    """10,000 versions, rules, webhooks and receipts move; afterwards every read is
    the same, a subscriber resumes from its old position and a webhook goes on with
    the next webhook-id."""
    sqlite = f"sqlite:///{tmp_path / 'before.sqlite3'}"
    manage(sqlite, tmp_path, "migrate", "--no-input")
    token = manage(sqlite, tmp_path, "token", "create", "--scope", "write").strip()
    serve = {
        "BOTLNEK_DATA_DIR": str(tmp_path),
        "BOTLNEK_WEBHOOK_ALLOWED_HOSTS": "loopback",
    }
    before = start_server(BOTLNEK_DATABASE_URL=sqlite, **serve)
    old = Remote(before, token)
    receiver = Receiver()
    try:
        old.post("/api/domains", {"key": "c-inputs"})
        for batch in range(10):
            old.post(
                "/api/sources",
                [
                    {
                        "domain": "c-inputs",
                        "aggregate": f"2026-10-{1 + (batch * 1000 + i) % 20:02d}",
                        "collection": "AB"[i % 2],
                        "keys": {"i": str(batch * 1000 + i)},
                    }
                    for i in range(1000)
                ],
            )
        rule = {"name": "run-c", "when": "A >= 1 and B >= 1"}
        old.post(f"{D}/rules", rule)
        old.post(f"{D}/rules", {"name": "gone", "when": "A >= 1"})
        assert old.get(f"{D}/rules/gone").status_code == 200
        httpx.delete(f"{before.url}{D}/rules/gone", headers=old.headers)
        hooks = [
            {"url": receiver.url + "/v", "events": ["version"]},
            {"url": receiver.url + "/r", "events": ["rule.fired"], "rule": "run-c"},
        ]
        for hook in hooks:
            old.post(f"{D}/webhooks", hook)

        def day(n, collection):
            return {
                "domain": "c-inputs",
                "aggregate": f"2026-11-{n:02d}",
                "collection": collection,
                "keys": {},
            }

        for n in (1, 2):
            old.post("/api/sources", day(n, "A"))
            old.post("/api/sources", day(n, "B"))
        receipt = {"watcher": "c", "domain": "c-inputs", "aggregate": "2026-11-01"}
        old.post("/api/receipts", {**receipt, "version": 2, "outcome": "success"})
        wait_for(lambda: len(receiver.requests) == 6, 30, "6 deliveries")
        wait_for(
            lambda: all(
                h["lag"] == 0 for h in old.get(f"{D}/webhooks").json()["webhooks"]
            ),
            30,
            "webhooks caught up",
        )
        subscriber = asyncio.run(follow(before, token, after=9_990, count=10))
        assert subscriber[-1]["position"] == 10_000
        seen = reads(old, domains=["c-inputs"])
    finally:
        before.stop()

    moved = tmp_path / "move.jsonl"
    manage(sqlite, tmp_path, "export", "--output", str(moved))
    manage(fresh_postgres, tmp_path, "migrate", "--no-input")
    said = manage(fresh_postgres, tmp_path, "import", str(moved))
    assert "Restored domain 'c-inputs'" in said and "Tokens: 1 restored" in said
    # Exported again from PostgreSQL, every row is the same (PostgreSQL keeps
    # the keys of JSON objects in an order of its own).
    again = [
        json.loads(line)
        for line in manage(fresh_postgres, tmp_path, "export").splitlines()
    ]
    rows = [json.loads(line) for line in moved.read_text().splitlines()]
    assert again[1:] == rows[1:] and again[0]["database"] == "postgresql"

    after = start_server(BOTLNEK_DATABASE_URL=fresh_postgres, **serve)
    new = Remote(after, token)
    try:
        assert reads(new, domains=["c-inputs"]) == seen
        # A subscriber resumes from its old position: the same frames, then new ones.
        old_ids = [r["headers"]["webhook-id"] for r in receiver.requests]
        for collection in ("A", "B"):
            new.post("/api/sources", day(3, collection))
        resumed = asyncio.run(follow(after, token, after=9_995, count=11))
        assert [f["position"] for f in resumed] == list(range(9_996, 10_007))
        assert resumed[:5] == subscriber[5:]
        wait_for(lambda: len(receiver.requests) == 9, 30, "3 more deliveries")
    finally:
        receiver.stop()
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == len(ids)
    domain_id = old_ids[0].split("_")[1][1:]
    rule_id = next(i for i in old_ids if i.startswith("msg_r")).split("_")[1][1:]
    assert sorted(ids[6:]) == sorted(
        [f"msg_v{domain_id}_10005", f"msg_v{domain_id}_10006", f"msg_r{rule_id}_3"]
    )
    # A rule made after the move never takes the deleted rule's id.
    new.post(f"{D}/rules", {"name": "later", "when": "A >= 1"})
    with psycopg.connect(fresh_postgres) as conn:
        (later,) = conn.execute(
            "SELECT id FROM aggregates_rule WHERE name = 'later'"
        ).fetchone()
    assert later > int(rule_id) + 1


async def follow(server, token, *, after: int, count: int) -> list[dict]:
    async with Subscriber(server, token) as sub:
        await sub.subscribe(after_position=after, mode="delta")
        return await sub.versions(count)
