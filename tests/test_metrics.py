"""GET /metrics on a real server: what it counts moves by what happened, it needs a
token unless made public, and it parses and never goes back while under load."""

import asyncio
import threading

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token
from tests.test_webhooks import Receiver
from tests.toolkit import DOMAIN, Subscriber, Writer, post, wait_for

Samples = dict[tuple[str, frozenset], float]


def scrape(server, token: str | None) -> Samples:
    """Every sample of one scrape, by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(server, token, condition, what: str, timeout: float = 10) -> Samples:
    """Scrape until `condition(samples)` holds; answer those samples."""

    def ready() -> Samples | None:
        samples = scrape(server, token)
        return samples if condition(samples) else None

    return wait_for(ready, timeout, what)


def source(aggregate: str, collection: str = "A", **keys: str) -> dict:
    return {
        "domain": DOMAIN,
        "aggregate": aggregate,
        "collection": collection,
        "keys": keys,
    }


def test_posts_and_a_subscription_move_their_metrics(start_server, token):
    server = start_server()
    headers = {"Authorization": f"Bearer {token}"}

    def count(name: str, **labels: str) -> float:
        return value(scrape(server, token), name, **labels)

    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            assert count("botlnek_live_subscriptions", transport="websocket") == 1
            for n in range(3):
                post(server, token, collection="AB"[n % 2], n=str(n))
            duplicate = httpx.post(
                f"{server.url}/api/sources",
                json=source("2026-11-26", n="0"),
                headers=headers,
            )
            assert duplicate.status_code == 200 and not duplicate.json()["created"]
            batch = httpx.post(
                f"{server.url}/api/sources",
                json=[source("2026-11-27", n=str(n)) for n in range(4)],
                headers=headers,
            )
            assert batch.status_code == 200, batch.text
            return await sub.versions(7)

    frames = asyncio.run(scenario())
    assert [f["position"] for f in frames] == list(range(1, 8))
    samples = scrape_until(
        server,
        token,
        lambda s: value(s, "botlnek_live_subscriptions", transport="websocket") == 0,
        "the closed subscription to be let go",
    )
    # The duplicate committed nothing; the batch committed its four.
    assert value(samples, "botlnek_versions_committed_total", domain=DOMAIN) == 7
    assert (
        value(samples, "botlnek_ingest_seconds_count", domain=DOMAIN, kind="single")
        == 4
    )
    assert (
        value(samples, "botlnek_ingest_seconds_count", domain=DOMAIN, kind="batch") == 1
    )
    assert value(samples, "botlnek_ingest_seconds_sum", domain=DOMAIN, kind="single")
    assert (
        value(
            samples,
            "botlnek_http_requests_total",
            method="POST",
            route="api/sources",
            status="2xx",
        )
        == 5
    )
    sent = value(
        samples, "botlnek_frames_sent_total", transport="websocket", kind="version"
    )
    assert sent >= 7
    delays = value(
        samples, "botlnek_commit_to_send_seconds_count", transport="websocket"
    )
    assert delays == 7  # every frame was a live one
    within = value(
        samples,
        "botlnek_commit_to_send_seconds_bucket",
        transport="websocket",
        le="10.0",
    )
    assert within == 7


def test_an_sse_stream_is_counted_while_open(start_server, token):
    server = start_server()
    post(server, token)
    params = {"domain": DOMAIN, "after_position": 0, "mode": "delta"}
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{server.url}/api/stream"
    with httpx.stream("GET", url, params=params, headers=headers, timeout=10) as r:
        lines = r.iter_lines()
        assert any(line.startswith("id: 1") for line in lines)
        samples = scrape(server, token)
        assert value(samples, "botlnek_live_subscriptions", transport="sse") == 1
        # The replayed version is sent and counted, but has no delay to report.
        assert (
            value(samples, "botlnek_frames_sent_total", transport="sse", kind="version")
            == 1
        )
        assert (
            value(samples, "botlnek_commit_to_send_seconds_count", transport="sse") == 0
        )
    scrape_until(
        server,
        token,
        lambda s: value(s, "botlnek_live_subscriptions", transport="sse") == 0,
        "the closed stream to be let go",
    )


def test_metrics_need_a_token_for_every_domain(start_server, token, read_token):
    server = start_server()
    url = f"{server.url}/metrics"
    for headers in [{}, {"Authorization": "Bearer bk_nope"}]:
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
    assert httpx.get(url, headers={"Authorization": f"Bearer {read_token}"}).is_success
    _, limited = create_token(name="one", scope="read", domains=[DOMAIN])
    forbidden = httpx.get(url, headers={"Authorization": f"Bearer {limited}"})
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    wrong = httpx.post(url, headers={"Authorization": f"Bearer {read_token}"})
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    # No header a client sends changes which part of the server answers: daphne
    # takes a root path from Daphne-Root-Path, which would route /x/metrics to the
    # dashboard's side.
    for path, headers in [
        ("/x/metrics", {"Daphne-Root-Path": "/x"}),
        ("/metrics", {"Daphne-Root-Path": "/metrics"}),
        ("/metrics", {"X-Forwarded-Prefix": "/x", "X-Forwarded-Host": "other"}),
        ("/metrics", {"Host": "localhost", "X-Forwarded-Proto": "https"}),
    ]:
        sneaked = httpx.get(f"{server.url}{path}", headers=headers)
        assert sneaked.status_code in (401, 404), (path, headers, sneaked.text)
        assert "botlnek_" not in sneaked.text
    # It is no JSON operation of the API.
    document = httpx.get(f"{server.url}/api/openapi.json").json()
    assert not [path for path in document["paths"] if "metrics" in path]


def test_public_metrics_need_no_token(start_server, transactional_db):
    server = start_server(BOTLNEK_PUBLIC_METRICS="1")
    samples = scrape(server, None)
    assert any(name.startswith("botlnek_") for name, _ in samples)
    assert any(name.startswith("process_") for name, _ in samples)


def test_rules_and_webhooks_report_events_statuses_deliveries_and_lag(
    start_server, token
):
    receiver = Receiver()
    receiver.answer = lambda request: 503
    try:
        server = start_server(BOTLNEK_WEBHOOK_ALLOWED_HOSTS="loopback")
        headers = {"Authorization": f"Bearer {token}"}
        rule = httpx.post(
            f"{server.url}/api/domains/{DOMAIN}/rules",
            json={"name": "run-c", "when": "A >= 1 and B >= 1"},
            headers=headers,
        )
        assert rule.status_code == 201, rule.text
        hook = httpx.post(
            f"{server.url}/api/domains/{DOMAIN}/webhooks",
            json={"url": receiver.url, "events": ["version"]},
            headers=headers,
        )
        assert hook.status_code == 201, hook.text
        post(server, token, "d1", "A")
        post(server, token, "d1", "B")
        post(server, token, "d2", "A")

        def statuses(samples: Samples) -> dict[str, float]:
            return {
                status: value(
                    samples, "botlnek_rule_statuses", domain=DOMAIN, status=status
                )
                for status in ("waiting", "ready", "late", "fired")
            }

        def events(samples: Samples) -> dict[str, float]:
            return {
                event: value(
                    samples, "botlnek_rule_events_total", domain=DOMAIN, event=event
                )
                for event in ("fired", "late")
            }

        # The engine counts its events just after its commit, so a scrape may see
        # the new status a moment before the count.
        expected = {"waiting": 1, "ready": 0, "late": 0, "fired": 1}
        samples = scrape_until(
            server,
            token,
            lambda s: statuses(s) == expected and events(s)["fired"] >= 1,
            "d1 fired and d2 waiting",
        )
        assert events(samples) == {"fired": 1, "late": 0}

        def deliveries(samples: Samples, outcome: str) -> float:
            return value(
                samples,
                "botlnek_webhook_deliveries_total",
                domain=DOMAIN,
                outcome=outcome,
            )

        # The receiver fails: the webhook stays three events behind.
        samples = scrape_until(
            server, token, lambda s: deliveries(s, "5xx"), "a failed delivery"
        )
        assert value(samples, "botlnek_webhook_lag_events", domain=DOMAIN) == 3
        assert value(samples, "botlnek_webhooks_paused", domain=DOMAIN) == 0
        receiver.answer = lambda request: 200
        # The delivery worker reports its attempts to the server twice a second.
        samples = scrape_until(
            server,
            token,
            lambda s: (
                value(s, "botlnek_webhook_lag_events", domain=DOMAIN) == 0
                and deliveries(s, "2xx") >= 3
            ),
            "the webhook to catch up",
            timeout=30,
        )
        assert deliveries(samples, "2xx") == 3
        assert deliveries(samples, "5xx") == len(receiver.requests) - 3
    finally:
        receiver.release.set()
        receiver.stop()


def test_a_slow_reader_closed_with_1013_is_counted(start_server, token):
    server = start_server()
    big = "x" * 60_000  # 400 of these outgrow every socket buffer on the way

    async def scenario():
        async with Subscriber(server, token, max_size=None, max_queue=1) as slow:
            await slow.subscribe(mode="delta")
            # Read nothing while 400 big and 1,100 small versions arrive live.
            for n in range(15):
                blob = {"blob": big} if n < 4 else {}
                await asyncio.to_thread(
                    register_sources,
                    [
                        NewSource(DOMAIN, f"agg-{n}", "A", {"i": str(i)}, blob)
                        for i in range(100)
                    ],
                )
                await asyncio.to_thread(post, server, token, aggregate="poke", n=str(n))
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    value(
                        scrape(server, token),
                        "botlnek_slow_consumer_disconnects_total",
                        transport="websocket",
                    )
                    == 1
                ),
                30,
                "the slow reader's disconnect to be counted",
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(slow.ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013

    asyncio.run(scenario())


def counters(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of counters and histograms: none of them may ever go down."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for sample in family.samples
    }


def test_scrapes_under_load_parse_and_never_go_back(start_server, token):
    server = start_server()
    writers = [
        Writer([server], token, [source(f"w{w}", n=str(n)) for n in range(40)])
        for w in range(4)
    ]
    headers = {"Authorization": f"Bearer {token}"}
    done = threading.Event()
    scrapes: list[httpx.Response] = []

    def scrape_repeatedly():
        with httpx.Client(timeout=10, headers=headers) as http:
            while not done.is_set():
                scrapes.append(http.get(f"{server.url}/metrics"))

    scraper = threading.Thread(target=scrape_repeatedly)
    scraper.start()
    try:
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
    finally:
        done.set()
        scraper.join(30)
    assert [len(writer.answers) for writer in writers] == [40] * 4
    assert not any(writer.failures for writer in writers)
    scrapes.append(httpx.get(f"{server.url}/metrics", headers=headers))
    assert len(scrapes) >= 3, "the scraper did not overlap the writers"
    assert {response.status_code for response in scrapes} == {200}
    previous: Samples = {}
    for response in scrapes:
        current = counters(response.text)  # parses, or fails
        went_back = {
            key: (was, current.get(key))
            for key, was in previous.items()
            if current.get(key, -1) < was
        }
        assert not went_back
        previous = current
    assert value(previous, "botlnek_versions_committed_total", domain=DOMAIN) == 160
    assert (
        value(previous, "botlnek_ingest_seconds_count", domain=DOMAIN, kind="single")
        == 160
    )
