"""Several server processes sharing the database and Redis: a subscriber on one
process gets what is posted through another, whatever disconnects or Redis does."""

import asyncio
import json
import random
import threading
import time

import httpx
import pytest
import websockets

from aggregates.models import Domain, Version
from aggregates.tokens import create_token
from tests.conftest import post_via_http as post


@pytest.fixture
def token(transactional_db):
    Domain.objects.create(key="c-inputs")
    return create_token(name="scale", scope="write")[1]


def ws_url(server) -> str:
    return server.url.replace("http", "ws") + "/ws/subscribe"


async def collect(servers, token, total, rng, disconnect_every=None):
    """Subscribe, hopping between servers and resuming, until `total` positions."""
    seen: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    while len(seen) < total:
        server = rng.choice(servers)
        async with websockets.connect(ws_url(server), additional_headers=headers) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "s",
                        "domain": "c-inputs",
                        "after_position": seen[-1] if seen else 0,
                        "mode": "delta",
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "subscribed"
            budget = rng.randint(1, disconnect_every) if disconnect_every else total
            while budget and len(seen) < total:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                seen.append(frame["position"])
                budget -= 1
    return seen


def test_subscriber_on_one_process_gets_posts_through_another(
    start_server, token, redis_url
):
    one = start_server(BOTLNEK_REDIS_URL=redis_url)
    two = start_server(BOTLNEK_REDIS_URL=redis_url)
    assert httpx.get(f"{one.url}/healthz").json()["channel_layer"] == "ok"

    async def scenario():
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(ws_url(one), additional_headers=headers) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "s",
                        "domain": "c-inputs",
                        "mode": "delta",
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "subscribed"
            started = time.monotonic()
            await asyncio.to_thread(post, two, token, n="1")
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            # Well before the 30 s position check: Redis carried the notification.
            return frame, time.monotonic() - started

    frame, elapsed = asyncio.run(scenario())
    assert frame["position"] == 1
    assert elapsed < 3


@pytest.mark.postgres
def test_random_disconnects_under_concurrent_writers(start_server, token, redis_url):
    servers = [start_server(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    total = 240

    def writer(n: int) -> None:
        for i in range(total // 4):
            post(
                servers[(n + i) % 2],
                token,
                aggregate=f"agg-{i % 5}",
                w=str(n),
                i=str(i),
            )

    async def scenario():
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in writers:
            thread.start()
        results = await asyncio.gather(
            *(
                collect(servers, token, total, random.Random(seed), 25)
                for seed in range(3)
            )
        )
        for thread in writers:
            thread.join()
        return results

    results = asyncio.run(scenario())
    in_database = list(
        Version.objects.order_by("position").values_list("position", flat=True)
    )
    assert in_database == list(range(1, total + 1))
    for seen in results:
        assert seen == in_database
