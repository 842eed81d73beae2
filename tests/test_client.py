"""The Python client and the `botlnek` CLI against a real server."""

import asyncio
import json
import os
import subprocess
import sys

import pytest

from aggregates.client import BotlnekError, Client
from aggregates.store import NewSource, register_sources
from tests.toolkit import ROOT


def test_post_and_post_batch(start_server, token):
    client = Client(start_server().url, token)
    first = client.post("c-inputs", "d1", "A", keys={"run": "am"}, attrs={"p": 1})
    assert (first["created"], first["version"]) == (True, 1)
    results = client.post_batch(
        [{"domain": "c-inputs", "aggregate": "d1", "collection": c} for c in "BC"]
    )
    assert [r["version"] for r in results] == [2, 3]
    with pytest.raises(BotlnekError) as error:
        client.post("c-inputs", "d1", "A", keys={"run": "am"}, attrs={"p": 2})
    assert error.value.status == 409


def test_subscribe_reconnects_and_resumes_across_a_server_restart(start_server, token):
    server = start_server(BOTLNEK_POSITION_CHECK_SECONDS="1")
    client = Client(server.url, token)

    async def scenario():
        frames = []
        stream = client.subscribe("c-inputs", after_position=0, mode="delta")
        await asyncio.to_thread(client.post, "c-inputs", "d1", "A")
        frames.append(await anext(stream))
        server.stop()
        # Committed while the server is down: only the resume can deliver them.
        await asyncio.to_thread(
            register_sources,
            [NewSource("c-inputs", "d1", "A", {"n": str(n)}) for n in range(3)],
        )
        await asyncio.to_thread(start_server, server.port)
        while len(frames) < 4:
            frames.append(await asyncio.wait_for(anext(stream), 20))
        await stream.aclose()
        return frames

    frames = asyncio.run(scenario())
    assert [f["position"] for f in frames] == [1, 2, 3, 4]


def test_subscribe_with_a_bad_token_raises(start_server, token):
    client = Client(start_server().url, "bk_bogus")

    async def scenario():
        async for _ in client.subscribe("c-inputs"):
            pass

    with pytest.raises(BotlnekError, match="refused"):
        asyncio.run(scenario())


def test_cli_subscribe_prints_one_line_per_version(start_server, token):
    server = start_server()
    env = {**os.environ, "BOTLNEK_URL": server.url, "BOTLNEK_TOKEN": token}
    subscriber = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregates.client.cli",
            "subscribe",
            "--domain",
            "c-inputs",
            "--after-position",
            "0",
            "--mode",
            "delta",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for collection in "AB":
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "aggregates.client.cli",
                    "post",
                    "--domain",
                    "c-inputs",
                    "--aggregate",
                    "d1",
                    "--collection",
                    collection,
                    "run=am",
                ],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
        lines = [json.loads(subscriber.stdout.readline()) for _ in range(2)]
    finally:
        subscriber.terminate()
        subscriber.wait(timeout=10)
    assert [(f["type"], f["version"], f["counts"]) for f in lines] == [
        ("version", 1, {"A": 1}),
        ("version", 2, {"A": 1, "B": 1}),
    ]


def test_cli_errors_are_one_line(start_server, token):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregates.client.cli",
            "subscribe",
            "--url",
            start_server().url,
            "--token",
            "bk_bogus",
            "--domain",
            "c-inputs",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("botlnek: ") and result.stderr.count("\n") == 1


def test_a_frame_over_the_servers_limit_is_a_clear_error(start_server, token):
    client = Client(start_server().url, token)
    big = {"blob": "x" * 60_000}
    for half in range(2):  # a request is at most 1 MiB
        client.post_batch(
            [
                {
                    "domain": "c-inputs",
                    "aggregate": "big",
                    "collection": "A",
                    "keys": {"n": f"{half}-{n}"},
                    "attrs": big,
                }
                for n in range(10)
            ]
        )

    async def scenario(mode):
        stream = client.subscribe("c-inputs", after_position=19, mode=mode)
        try:
            return await asyncio.wait_for(anext(stream), 20)
        finally:
            await stream.aclose()

    # The state of version 20 is over daphne's default 1 MiB message limit: full
    # mode says so (instead of reconnecting for ever); delta mode is unaffected.
    with pytest.raises(BotlnekError, match="frame_too_large"):
        asyncio.run(scenario("full"))
    assert asyncio.run(scenario("delta"))["version"] == 20
