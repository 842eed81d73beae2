"""Several server processes sharing the database and Redis: a subscriber on one
process gets what is posted through another, whatever disconnects or Redis does."""

import asyncio
import random
import threading

import httpx
import pytest

from aggregates.models import Version
from tests.toolkit import Follower, Subscriber, post


def test_subscriber_on_one_process_gets_posts_through_another(
    start_server, token, redis_url
):
    # No position check for an hour: only Redis can carry the news in time.
    one = start_server(
        BOTLNEK_REDIS_URL=redis_url, BOTLNEK_POSITION_CHECK_SECONDS="3600"
    )
    two = start_server(BOTLNEK_REDIS_URL=redis_url)
    assert httpx.get(f"{one.url}/healthz").json()["channel_layer"] == "ok"

    async def scenario():
        async with Subscriber(one, token) as sub:
            await sub.subscribe(mode="delta")
            await asyncio.to_thread(post, two, token, n="1")
            return await sub.versions(1, timeout=10)

    (frame,) = asyncio.run(scenario())
    assert frame["position"] == 1


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
        followers = [
            Follower(servers, token, rng=random.Random(seed), hop_every=(1, 25))
            for seed in range(3)
        ]
        results = await asyncio.gather(*(f.follow(total) for f in followers))
        for thread in writers:
            await asyncio.to_thread(thread.join)
        return results

    results = asyncio.run(scenario())
    in_database = list(
        Version.objects.order_by("position").values_list("position", flat=True)
    )
    assert in_database == list(range(1, total + 1))
    for seen in results:
        assert seen == in_database
