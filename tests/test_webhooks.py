"""Webhooks against a real HTTP receiver on 127.0.0.1: order, signatures, retries,
pauses, replay, restarts, rule events, several processes, a hanging receiver."""

import base64
import functools
import hashlib
import hmac
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from aggregates.models import Lease, RuleEvent, Version, Webhook
from aggregates.webhooks.delivery import VersionEvents
from aggregates.webhooks.progress import backoff
from aggregates.webhooks.targets import AllowList
from tests.toolkit import (
    ApiClient,
    Writer,
    alive,
    children,
    free_port,
    post,
    wait_for,
)

HOOKS = "/api/domains/c-inputs/webhooks"


class Receiver:
    """An HTTP server recording every POST; `answer` decides each status (or None
    to hang until released); `stop()`/`start()` make it refuse connections."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[dict] = []
        self.answer = lambda request: 200
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.start()

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                request = {"headers": dict(self.headers), "body": body}
                request["path"] = self.path
                with receiver.lock:
                    receiver.requests.append(request)
                status = receiver.answer(request)
                if status is None:
                    receiver.release.wait(30)
                    status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests]


@pytest.fixture
def serve(start_server):
    """Start a server whose webhooks may call receivers on this machine: loopback
    addresses are an operator's opt-in."""
    return functools.partial(start_server, BOTLNEK_WEBHOOK_ALLOWED_HOSTS="loopback")


@pytest.fixture
def loopback_allowed(settings):
    """In this process, webhooks may call loopback addresses."""
    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse("loopback")


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.release.set()
    found.stop()


def verify(secret: str, headers: dict, body: str) -> bool:
    """The Standard Webhooks signature, checked from the convention itself:
    v1,base64(HMAC-SHA256(base64-decoded secret after whsec_, id.timestamp.body))."""
    headers = {name.lower(): value for name, value in headers.items()}
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}"
    expected = base64.b64encode(
        hmac.new(key, signed.encode(), hashlib.sha256).digest()
    ).decode()
    sent = [part.split(",", 1) for part in headers["webhook-signature"].split()]
    return any(v == "v1" and hmac.compare_digest(s, expected) for v, s in sent)


def hook(server, token, **definition):
    response = httpx.post(
        f"{server.url}{HOOKS}",
        json=definition,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def api_call(server, token, method, path, **kwargs):
    return httpx.request(
        method,
        f"{server.url}{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kwargs,
    )


# The API, in process


def test_a_webhook_is_created_with_its_secret_shown_once(api, domain, loopback_allowed):
    created = api.post(HOOKS, {"url": "http://127.0.0.1:9/hook", "events": ["version"]})
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"][6:])) == 24
    read = api.get(f"{HOOKS}/{body['id']}").json()
    assert "secret" not in read and read["lag"] == 0 and read["paused"] is False
    assert [h["id"] for h in api.get(HOOKS).json()["webhooks"]] == [body["id"]]
    changed = api.put(f"{HOOKS}/{body['id']}", {"description": "run C", "paused": True})
    assert changed.json()["description"] == "run C"
    assert changed.json()["paused_reason"] == "paused through the API"
    assert api.request("DELETE", f"{HOOKS}/{body['id']}").status_code == 204
    assert api.get(f"{HOOKS}/{body['id']}").status_code == 404


@pytest.mark.parametrize(
    ("definition", "field", "says"),
    [
        ({"url": "ftp://x/y", "events": ["version"]}, "url", "http"),
        # About the whole definition: said in `detail`, no field named.
        ({"url": "http://x/y", "events": []}, None, "at least one"),
        ({"url": "http://x/y", "events": ["version", "rule.late"]}, None, "or"),
        ({"url": "http://x/y", "events": ["rule.fired"]}, None, 'need "rule"'),
        (
            {"url": "http://x/y", "events": ["version"], "rule": "run-c"},
            None,
            "versions takes no rule",
        ),
        ({"url": "http://x/y", "events": ["sometimes"]}, "events[0]", "must be"),
    ],
)
def test_bad_webhooks_are_400(api, domain, definition, field, says):
    response = api.post(HOOKS, definition)
    assert response.status_code == 400, response.json()
    assert says in response.json()["detail"]
    if field is None:
        assert "fields" not in response.json()
    else:
        assert field in response.json()["fields"]
    assert not Webhook.objects.exists()


def test_backoff_doubles_from_a_second_with_jitter_up_to_ten_minutes():
    for attempts, base in [(1, 1), (2, 2), (5, 16), (10, 512), (11, 600), (40, 600)]:
        waits = [backoff(attempts) for _ in range(50)]
        assert all(base <= wait <= min(base * 1.2, 600) for wait in waits), (
            attempts,
            waits,
        )
    assert len({backoff(9) for _ in range(20)}) > 1  # 256 s, jittered


def test_a_domains_version_events_are_read_once_for_all_its_webhooks(
    api, domain, django_assert_num_queries
):
    for n in range(3):
        source = {"domain": "c-inputs", "aggregate": "d1", "collection": "A"}
        response = api.post("/api/sources", {**source, "keys": {"n": str(n)}})
        assert response.status_code == 201
    events = VersionEvents()
    first = events.after(domain, 0)
    assert [(e.cursor, e.event_id) for e in first] == [
        (p, f"msg_v{domain.pk}_{p}") for p in (1, 2, 3)
    ]
    assert [json.loads(e.body)["position"] for e in first] == [1, 2, 3]
    with django_assert_num_queries(0):  # another webhook, or a retry
        assert events.after(domain, 1) == first[1:]
    with django_assert_num_queries(2):  # nothing cached after 3: read
        assert events.after(domain, 3) == []
    events.MAX_AGE = -1  # a minute later: read again
    with django_assert_num_queries(2):
        assert events.after(domain, 1) == first[1:]


def test_a_replay_back_to_where_a_run_began_is_not_overwritten(
    api, domain, loopback_allowed
):
    """A run that started at cursor 2 and sent 3-5 saves over cursor 2 only if
    nobody rewound the webhook meanwhile — a replay to 2 included."""
    from aggregates import leases
    from aggregates.webhooks.progress import Progress, lease_name, save_all
    from tests.toolkit import fill

    created = api.post(HOOKS, {"url": "http://127.0.0.1:9/", "events": ["version"]})
    webhook = Webhook.objects.get(pk=created.json()["id"])
    fill("d1", 5)
    Webhook.objects.filter(pk=webhook.pk).update(cursor=2)
    webhook.refresh_from_db()  # as the run loaded it
    leases.acquire(lease_name(webhook.pk), "holder", 30)
    replayed = api.post(f"{HOOKS}/{webhook.pk}/replay", {"after_position": 2})
    assert replayed.status_code == 200
    assert save_all([(webhook, 2, Progress(5))], "holder") == [None]  # stop
    assert Webhook.objects.get(pk=webhook.pk).cursor == 2  # the replay stands
    webhook.refresh_from_db()  # a run that began after the replay saves
    assert save_all([(webhook, 2, Progress(5))], "holder") != [None]
    assert Webhook.objects.get(pk=webhook.pk).cursor == 5


def test_tokens_are_checked(domain, read_token):
    reader = ApiClient(read_token)
    refused = reader.post(HOOKS, {"url": "http://x/y", "events": ["version"]})
    assert refused.status_code == 403
    assert reader.get(HOOKS).status_code == 200


# Deliveries, with real servers and a real receiver


def test_versions_arrive_in_order_signed_one_post_each(serve, token, receiver):
    server = serve()
    created = hook(server, token, url=receiver.url, events=["version"])
    for n in range(20):
        post(server, token, f"d{n % 3}", "AB"[n % 2], n=str(n))
    wait_for(lambda: len(receiver.requests) >= 20, 20, "20 deliveries")
    bodies = receiver.bodies()
    assert [b["position"] for b in bodies] == list(range(1, 21))
    assert {b["type"] for b in bodies} == {"version"} and "counts" in bodies[0]
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == 20
    for request in receiver.requests:
        assert verify(created["secret"], request["headers"], request["body"])
        assert not verify("whsec_" + "A" * 32, request["headers"], request["body"])
    health = api_call(server, token, "GET", f"{HOOKS}/{created['id']}").json()
    assert (health["lag"], health["last_status"]) == (0, 200)


def deliveries(server, token, webhook_id: int) -> list[dict]:
    path = f"{HOOKS}/{webhook_id}/deliveries"
    answer = api_call(server, token, "GET", path, params={"limit": 1000})
    return answer.json()["deliveries"]


def test_a_failing_then_absent_receiver_gets_everything_in_order(
    serve, token, receiver
):
    server = serve()
    created = hook(server, token, url=receiver.url, events=["version"])
    failures = iter([503, 503])
    receiver.answer = lambda request: next(failures, 200)
    for n in range(5):
        post(server, token, "d1", "A", n=str(n))
    wait_for(lambda: len(receiver.requests) >= 7, 20, "two 503s, then five")
    receiver.stop()  # down: connections refused
    for n in range(5, 10):
        post(server, token, "d1", "A", n=str(n))
    wait_for(  # refused connections, recorded as such
        lambda: any(d["error"] for d in deliveries(server, token, created["id"])), 20
    )
    receiver.answer = lambda request: 200
    receiver.start()
    wait_for(
        lambda: receiver.bodies()[-1:] and receiver.bodies()[-1]["position"] == 10, 30
    )
    first = receiver.requests[0]["headers"]["webhook-id"]
    # The same event was sent three times, with one id; then each once, in order.
    assert [r["headers"]["webhook-id"] for r in receiver.requests[:3]] == [first] * 3
    delivered = [b["position"] for b in receiver.bodies()[2:]]
    assert delivered == list(range(1, 11))
    log = deliveries(server, token, created["id"])
    refused = [d for d in log if d["error"]]
    assert [d["status_code"] for d in reversed(log) if d["status_code"] == 503] == [
        503,
        503,
    ]
    assert refused and all(d["status_code"] is None for d in refused)
    assert max(d["attempt"] for d in log) >= 2


def test_410_pauses_unpausing_delivers_the_rest_and_replay_redelivers(
    serve, token, receiver
):
    server = serve()
    created = hook(server, token, url=receiver.url, events=["version"])
    path = f"{HOOKS}/{created['id']}"
    receiver.answer = lambda request: (
        410 if json.loads(request["body"])["position"] == 3 else 200
    )
    for n in range(5):
        post(server, token, "d1", "A", n=str(n))
    paused = wait_for(
        lambda: (h := api_call(server, token, "GET", path).json())["paused"] and h, 20
    )
    assert paused["paused_reason"] == "the receiver answered 410 Gone"
    assert paused["lag"] == 3  # positions 3, 4, 5 wait
    receiver.answer = lambda request: 200
    resumed = api_call(server, token, "PUT", path, json={"paused": False})
    assert resumed.json()["paused"] is False
    wait_for(lambda: receiver.bodies()[-1]["position"] == 5, 20)
    assert [b["position"] for b in receiver.bodies()] == [1, 2, 3, 3, 4, 5]
    before = len(receiver.requests)
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    replayed = api_call(
        server, token, "POST", f"{path}/replay", json={"after_position": 2}
    )
    assert replayed.status_code == 200
    wait_for(lambda: len(receiver.requests) == before + 3, 20)
    again = receiver.requests[before:]
    assert [json.loads(r["body"])["position"] for r in again] == [3, 4, 5]
    assert {r["headers"]["webhook-id"] for r in again} <= ids  # the original ids
    wrong = api_call(server, token, "POST", f"{path}/replay", json={"after_seq": 1})
    assert wrong.status_code == 400


def test_deliveries_pending_across_a_restart_all_arrive(serve, token, receiver):
    server = serve()
    hook(server, token, url=receiver.url, events=["version"])
    receiver.answer = lambda request: 503
    for n in range(4):
        post(server, token, "d1", "A", n=str(n))
    wait_for(lambda: receiver.requests, 20)
    server.stop()
    receiver.answer = lambda request: 200
    receiver.requests.clear()
    serve(server.port)  # its deliverer starts with the server
    wait_for(lambda: len(receiver.requests) >= 4, 30)
    assert [b["position"] for b in receiver.bodies()] == [1, 2, 3, 4]


def test_rule_events_are_delivered_once_each(serve, token, receiver):
    server = serve()
    api_call(
        server,
        token,
        "POST",
        "/api/domains/c-inputs/rules",
        json={
            "name": "run-c",
            "when": "A >= 1 and B >= 1",
            "deadline": {"after": "2s", "from": "first_source"},
        },
    )
    hook(
        server,
        token,
        url=receiver.url,
        events=["rule.fired", "rule.late"],
        rule="run-c",
    )
    post(server, token, "d1", "A")
    post(server, token, "d2", "A")
    post(server, token, "d2", "B")
    wait_for(lambda: len(receiver.requests) >= 2, 20, "fired d2, then late d1")
    post(server, token, "d1", "B")  # late, but there
    post(server, token, "d3", "A")
    post(server, token, "d3", "B")  # the sentinel: nothing before it twice
    wait_for(lambda: len(receiver.requests) >= 4, 20)
    assert [
        (b["type"], b["aggregate"], b["seq"], b["late"]) for b in receiver.bodies()
    ] == [
        ("rule.fired", "d2", 1, False),
        ("rule.late", "d1", 2, True),
        ("rule.fired", "d1", 3, True),
        ("rule.fired", "d3", 4, False),
    ]
    assert RuleEvent.objects.count() == 4


def test_a_hanging_receiver_slows_neither_ingest_nor_another_webhook(
    serve, token, receiver
):
    server = serve()
    healthy = Receiver()
    try:
        receiver.answer = lambda request: None  # never answers (until the end)
        hook(server, token, url=receiver.url, events=["version"])
        hook(server, token, url=healthy.url, events=["version"])
        started = time.monotonic()
        for n in range(30):
            post(server, token, "d1", "A", n=str(n))
        writing = time.monotonic() - started
        wait_for(lambda: len(healthy.requests) >= 30, 10, "the healthy receiver")
        assert [b["position"] for b in healthy.bodies()] == list(range(1, 31))
        assert len(receiver.requests) == 1  # still waiting on its first
        assert writing < 10  # generous: a write waiting on the 10 s timeout would not
    finally:
        healthy.release.set()
        healthy.stop()


def test_the_delivery_worker_is_niced_restarted_and_ends_with_its_server(
    serve, token, receiver
):
    server = serve()
    hook(server, token, url=receiver.url, events=["version"])
    post(server, token, "d1", "A", n="0")
    wait_for(lambda: receiver.requests, 20)
    (worker,) = children(server.process.pid)
    priority = os.getpriority(os.PRIO_PROCESS, server.process.pid)
    assert os.getpriority(os.PRIO_PROCESS, worker) == min(priority + 19, 19)
    # Stopped (as the server's end stops it): it gives its leases up, and the
    # server starts another, which delivers what was posted meanwhile.
    os.kill(worker, signal.SIGTERM)
    wait_for(lambda: not alive(worker), 10, "the worker to stop")
    post(server, token, "d1", "A", n="1")
    restarted = wait_for(lambda: children(server.process.pid), 10, "a new worker")
    assert restarted != [worker]
    wait_for(lambda: len(receiver.requests) >= 2, 20)
    assert [b["position"] for b in receiver.bodies()] == [1, 2]
    assert not Lease.objects.filter(holder__contains=f":{worker}:").exists()
    # The server killed outright: its worker does not outlive it.
    server.process.kill()
    server.process.wait()
    wait_for(lambda: not alive(restarted[0]), 10, "the worker to end with the server")


@pytest.mark.postgres
def test_two_processes_deliver_each_event_once_in_order_despite_a_kill(
    serve, token, receiver, redis_url
):
    servers = [serve(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    hook(servers[0], token, url=receiver.url + "?first", events=["version"])
    hook(servers[1], token, url=receiver.url + "?second", events=["version"])
    receiver.answer = lambda request: (time.sleep(0.01), 200)[1]
    total = 120
    items = [
        {
            "domain": "c-inputs",
            "aggregate": f"d{n % 7}",
            "collection": "AB"[n % 2],
            "keys": {"n": str(n)},
        }
        for n in range(total)
    ]
    writers = [Writer(servers, token, items[n::4]) for n in range(4)]
    for writer in writers:
        writer.start()
    wait_for(lambda: len(receiver.requests) >= 40, 30)
    # Crash the server delivering the first webhook and its delivery worker,
    # mid-delivery (a machine lost): the lease expires and the other server's
    # worker takes over.
    holder = Lease.objects.filter(name__startswith="webhook:").order_by("name").first()
    doomed = next(s for s in servers if f":{s.process.pid}:" in holder.holder)
    (worker,) = children(doomed.process.pid)
    assert f":{worker}:" in holder.holder
    os.kill(worker, signal.SIGKILL)
    doomed.process.kill()
    doomed.process.wait()
    for writer in writers:
        writer.join()
    assert Version.objects.count() == total

    def positions(name: str) -> list[int]:
        with receiver.lock:
            return [
                json.loads(r["body"])["position"]
                for r in receiver.requests
                if r["path"].endswith(name)
            ]

    for name in ("first", "second"):
        seen = wait_for(
            lambda name=name: (
                set(positions(name)) == set(range(1, total + 1)) and positions(name)
            ),
            90,
            name,
        )
        # In order; going back at most once (the takeover after the kill), to
        # repeat what got a 2xx the killed process had not saved yet.
        backs = [i for i in range(1, len(seen)) if seen[i] <= seen[i - 1]]
        assert len(backs) <= 1, (name, seen)
        for i in range(1, len(seen)):
            assert seen[i] == seen[i - 1] + 1 or i in backs, (name, seen)


def test_cloudevents_webhooks_are_valid_cloudevents_signed_per_standard_webhooks(
    serve, token, receiver
):
    from cloudevents.core.bindings.http import HTTPMessage, from_structured
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
    from standardwebhooks import Webhook as StandardWebhook

    server = serve()
    api_call(
        server,
        token,
        "POST",
        "/api/domains/c-inputs/rules",
        json={"name": "run-c", "when": "A >= 1 and B >= 1"},
    )
    versions = hook(
        server, token, url=receiver.url, events=["version"], format="cloudevents"
    )
    assert versions["format"] == "cloudevents"
    fired = hook(
        server,
        token,
        url=receiver.url + "?rule",
        events=["rule.fired"],
        rule="run-c",
        format="cloudevents",
    )
    post(server, token, "2026-12-01", "A")
    post(server, token, "2026-12-01", "B")
    wait_for(lambda: len(receiver.requests) >= 3, 20, "two versions and one rule event")
    seen = []
    for request in receiver.requests:
        headers = {name.lower(): value for name, value in request["headers"].items()}
        assert headers["content-type"] == "application/cloudevents+json"
        secret = fired["secret"] if "rule" in request["path"] else versions["secret"]
        StandardWebhook(secret).verify(request["body"], headers)  # raises if not
        message = HTTPMessage(headers=headers, body=request["body"].encode())
        event = from_structured(message, JSONFormat(), CloudEvent)
        assert event.get_id() == headers["webhook-id"]
        assert event.get_source() == "/domains/c-inputs"
        assert event.get_subject() == "2026-12-01"
        data = event.get_data()
        cursor = data["seq"] if "seq" in data else data["position"]
        assert int(event.get_extension("sequence")) == cursor
        seen.append((event.get_type(), cursor, data["aggregate"]))
    assert sorted(seen) == [
        ("io.botlnek.rule.fired", 1, "2026-12-01"),
        ("io.botlnek.version", 1, "2026-12-01"),
        ("io.botlnek.version", 2, "2026-12-01"),
    ]
