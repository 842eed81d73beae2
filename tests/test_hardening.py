"""Per-token limits (off unless configured) and structured request logs."""

import asyncio
import json
import time
from unittest.mock import patch

import httpx
import pytest
import websockets
from django.test import override_settings

from aggregates import limits
from aggregates.client.http import Client
from aggregates.limits import Rate, RateLimiter
from aggregates.live.websocket import SubscribeConsumer
from aggregates.models import Version
from aggregates.tokens import create_token
from tests.toolkit import ApiClient, Subscriber, post_source, wait_for


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rate_limiter_allows_a_burst_then_refills_evenly():
    clock = FakeClock()
    limiter = RateLimiter(Rate(3, 60.0), clock)
    assert [limiter.take(1) for _ in range(3)] == [0, 0, 0]
    assert limiter.take(1) == pytest.approx(20.0)  # one request per 20 s
    assert limiter.take(2) == 0  # every token has its own bucket
    clock.now += 19
    assert limiter.take(1) == pytest.approx(1.0)
    clock.now += 1
    assert limiter.take(1) == 0
    clock.now += 3600  # a long pause refills to the burst size, not beyond
    assert [limiter.take(1) for _ in range(4)][-1] > 0
    assert limits.retry_after(0.01) == "1" and limits.retry_after(20.0) == "20"


def test_rate_is_parsed_strictly():
    assert Rate.parse("X", "100/s") == Rate(100, 1.0)
    assert str(Rate.parse("X", " 6000 / m ")) == "6000/m"
    assert Rate.parse("X", "") is None
    for bad in ("100", "0/s", "1/d", "-1/s", "fast"):
        with pytest.raises(Exception, match="X must look like"):
            Rate.parse("X", bad)


@pytest.fixture
def fresh_limiters():
    limits.reset()
    yield
    limits.reset()


@override_settings(BOTLNEK_WRITE_RATE=Rate(3, 60.0))
def test_writes_past_the_rate_get_429_with_retry_after_and_write_nothing(
    api, domain, fresh_limiters
):
    assert [post_source(api, keys={"n": str(n)}).status_code for n in range(3)] == [
        201,
        201,
        201,
    ]
    refused = post_source(api, keys={"n": "3"})
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limited"
    assert "3/m" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert Version.objects.count() == 3
    # Reads are not limited, and other tokens have their own budget.
    assert api.get("/api/domains/c-inputs").status_code == 200
    other = ApiClient(create_token(name="other", scope="write")[1])
    assert post_source(other, keys={"n": "3"}).status_code == 201
    # Route, method and scope come first: what they refuse spends nothing.
    assert api.post("/api/nope", {}).status_code == 404
    assert api.post("/api/domains/c-inputs", {}).status_code == 405
    reader = ApiClient(create_token(name="reader", scope="read")[1])
    for _ in range(5):
        assert post_source(reader, keys={"n": "4"}).status_code == 403
    assert post_source(other, keys={"n": "4"}).status_code == 201


def test_a_socket_gives_its_place_back_once_even_when_disconnected_twice():
    # An overflow (1013) disconnects the consumer, then the close does again.
    sockets = limits.ConnectionLimiter(2)
    consumer = SubscribeConsumer()
    consumer.holder, consumer.subscriptions = ("token", 7), {}
    with patch.object(limits, "connections", lambda: sockets):
        consumer.counted = sockets.open(("token", 7))
        assert sockets.open(("token", 7))  # the token's second socket, still open
        asyncio.run(consumer.disconnect(1013))
        asyncio.run(consumer.disconnect(1000))
    assert sockets.open(("token", 7))  # the first socket's place, given back once
    assert not sockets.open(("token", 7))  # the limit holds


def test_writes_are_unlimited_unless_configured(api, domain, fresh_limiters):
    statuses = {post_source(api, keys={"n": str(n)}).status_code for n in range(50)}
    assert statuses == {201}


def test_the_client_waits_out_a_429_and_succeeds(start_server, token, fresh_limiters):
    server = start_server(BOTLNEK_WRITE_RATE="1/s")
    client = Client(server.url, token)
    started = time.monotonic()
    answers = [client.post("c-inputs", "a", "A", {"n": str(n)}) for n in range(3)]
    assert [answer["version"] for answer in answers] == [1, 2, 3]
    assert time.monotonic() - started >= 1.5  # two of them waited ~1 s each


def test_websockets_past_the_per_token_limit_are_closed_with_1008(start_server, domain):
    limited = create_token(name="limited", scope="read")[1]
    other = create_token(name="other", scope="read")[1]
    server = start_server(BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN="2")

    async def scenario():
        async with Subscriber(server, limited) as first, Subscriber(server, limited):
            await first.subscribe()
            async with Subscriber(server, limited) as third:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await third.subscribe()
                assert closed.value.rcvd.code == 1008
                assert "2 open live connections" in closed.value.rcvd.reason
            async with Subscriber(server, other) as other_token:
                await other_token.subscribe()
            await first.ws.close()
            # A closed connection frees its place.
            for _ in range(50):
                async with Subscriber(server, limited) as again:
                    try:
                        await again.subscribe()
                        return
                    except websockets.ConnectionClosed:
                        await asyncio.sleep(0.1)
            raise AssertionError("the freed place never became available")

    asyncio.run(scenario())


def test_a_websocket_holds_at_most_so_many_subscriptions(start_server, token):
    server = start_server(BOTLNEK_WS_MAX_SUBSCRIPTIONS="2")

    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(id="a")
            await sub.subscribe(id="b")
            await sub.send(type="subscribe", id="c", domain="c-inputs")
            refused = await sub.next()
            await sub.send(type="unsubscribe", id="a")
            await sub.subscribe(id="c")  # a place was given back
            return refused

    refused = asyncio.run(scenario())
    assert (refused["type"], refused["error"], refused["id"]) == (
        "error",
        "too_many_subscriptions",
        "c",
    )
    assert "BOTLNEK_WS_MAX_SUBSCRIPTIONS" in refused["detail"]


def test_event_streams_and_dashboard_sockets_count_towards_the_limit(
    start_server, domain
):
    """A token's SSE streams count with its websockets; a logged-in user's
    dashboard sockets count for that user."""
    from django.contrib.auth import get_user_model

    limited = create_token(name="limited", scope="read")[1]
    server = start_server(BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN="2")
    headers = {"Authorization": f"Bearer {limited}"}
    stream = f"{server.url}/api/stream?domain=c-inputs"
    with httpx.Client(timeout=10) as http:
        with http.stream("GET", stream, headers=headers) as first:
            assert first.status_code == 200
            with http.stream("GET", stream, headers=headers) as second:
                assert second.status_code == 200
                third = http.get(stream, headers=headers)
                assert third.status_code == 429
                assert third.json()["error"] == "too_many_connections"
                assert "BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN" in third.json()["detail"]

                async def websocket():
                    async with Subscriber(server, limited) as fourth:
                        with pytest.raises(websockets.ConnectionClosed) as closed:
                            await fourth.subscribe()
                        return closed.value.rcvd.code

                assert asyncio.run(websocket()) == 1008
        # Both streams closed: their places are given back.
        wait_for(lambda: _opens(http, stream, headers), 10, "a stream again")

    get_user_model().objects.create_user("viewer", password="a long passphrase")
    cookie = {"Cookie": f"sessionid={_session(server, 'viewer')}", "Origin": server.url}
    page = server.ws_url + "/ws/dashboard?path=/d/c-inputs/"

    async def dashboards():
        async with (
            websockets.connect(page, additional_headers=cookie) as one,
            websockets.connect(page, additional_headers=cookie) as two,
        ):
            await one.recv()
            await two.recv()
            async with websockets.connect(page, additional_headers=cookie) as three:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await three.recv()
                return closed.value.rcvd

    refused = asyncio.run(dashboards())
    assert refused.code == 1008 and "this user already has 2" in refused.reason


def _opens(http: httpx.Client, url: str, headers: dict) -> bool:
    with http.stream("GET", url, headers=headers) as response:
        return response.status_code == 200


def _session(server, username: str) -> str:
    """Log in through the login page; the session cookie."""
    with httpx.Client(base_url=server.url) as browser:
        login = browser.get("/accounts/login/")
        browser.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": "a long passphrase",
                "csrfmiddlewaretoken": login.cookies["csrftoken"],
            },
            headers={"Referer": f"{server.url}/accounts/login/"},
        )
        return browser.cookies["sessionid"]


def test_one_json_log_line_per_request_with_the_token_name_never_its_secret(
    start_server, domain
):
    secret = create_token(name="nightly-loader", scope="write")[1]
    server = start_server()
    source = {"domain": "c-inputs", "aggregate": "a", "collection": "A", "keys": {}}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        auth = {"Authorization": f"Bearer {secret}"}
        assert http.post("/api/sources", json=source, headers=auth).status_code == 201
        assert http.get("/api/domains/nope", headers=auth).status_code == 404
        bogus = {"Authorization": f"Bearer {secret}x"}
        assert http.get("/api/domains", headers=bogus).status_code == 401

    def request_lines() -> list[dict]:
        lines = [
            json.loads(line) for line in server.log().splitlines() if line[:1] == "{"
        ]
        return lines if len(lines) >= 3 else []

    lines = wait_for(request_lines, what="three request log lines")
    assert secret not in server.log()
    by_path = {(line["method"], line["path"]): line for line in lines}
    posted = by_path["POST", "/api/sources"]
    assert posted["status"] == 201 and posted["token"] == "nightly-loader"
    assert posted["ms"] > 0
    assert by_path["GET", "/api/domains/nope"]["status"] == 404
    assert by_path["GET", "/api/domains"] == {
        "method": "GET",
        "path": "/api/domains",
        "status": 401,
        "ms": by_path["GET", "/api/domains"]["ms"],
        "token": None,
    }
