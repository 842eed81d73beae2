"""Websocket subscriptions against a real server: live, resume, gaps, auth."""

import asyncio
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
import websockets

from aggregates import store
from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token
from tests.toolkit import ROOT, Subscriber, post, wait_for


@pytest.fixture
def server(start_server):
    return start_server(BOTLNEK_POSITION_CHECK_SECONDS="1")


def test_live_versions_arrive_with_growing_state(server, token):
    async def scenario():
        async with Subscriber(server, token) as sub:
            assert (await sub.subscribe())["position"] == 0
            post(server, token, collection="A", run="am")
            post(server, token, collection="B")
            post(server, token, collection="A", run="pm")
            return await sub.versions(3)

    frames = asyncio.run(scenario())
    assert [f["version"] for f in frames] == [1, 2, 3]
    assert [f["position"] for f in frames] == [1, 2, 3]
    assert {f["subscription"] for f in frames} == {"s1"}
    assert [f["source"]["collection"] for f in frames] == ["A", "B", "A"]
    assert [len(f["state"]["versions"]) for f in frames] == [1, 2, 3]
    assert frames[2]["state"]["collections"]["A"][1]["keys"] == {"run": "pm"}
    # The state is the API's, as of that version.
    api = httpx.get(
        f"{server.url}/api/domains/c-inputs/aggregates/2026-11-26?version=2",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert frames[1]["state"] == api


def test_delta_mode_sends_counts_not_state(server, token):
    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            post(server, token, collection="A")
            post(server, token, collection="B")
            return await sub.versions(2)

    frames = asyncio.run(scenario())
    assert [f["counts"] for f in frames] == [{"A": 1}, {"A": 1, "B": 1}]
    assert all("state" not in f for f in frames)


def test_resume_after_disconnect_gets_exactly_what_was_missed(server, token):
    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            post(server, token, i="0")
            last = (await sub.versions(1))[0]["position"]
        for i in range(1, 51):
            post(server, token, aggregate=f"agg-{i % 3}", i=str(i))
        async with Subscriber(server, token) as sub:
            await sub.subscribe(after_position=last, mode="delta")
            missed = await sub.versions(50)
            post(server, token, i="live")
            live = await sub.versions(1)
            post(server, token, i="sentinel")  # the very next frame: nothing twice
            sentinel = await sub.versions(1)
        return last, missed, live, sentinel

    last, missed, live, sentinel = asyncio.run(scenario())
    assert [f["position"] for f in missed] == list(range(last + 1, last + 51))
    assert live[0]["position"] == last + 51
    assert sentinel[0]["source"]["keys"] == {"i": "sentinel"}


def test_versions_posted_during_replay_leave_no_gap(server, token):
    register_sources(
        [NewSource("c-inputs", f"a{i % 10}", "A", {"i": str(i)}) for i in range(1000)]
    )
    register_sources(
        [NewSource("c-inputs", f"a{i % 10}", "B", {"i": str(i)}) for i in range(600)]
    )
    writer_done = threading.Event()

    def writer():
        for i in range(60):
            post(server, token, aggregate="during", i=str(i))
        writer_done.set()

    async def scenario():
        async with Subscriber(server, token) as sub:
            thread = threading.Thread(target=writer)
            thread.start()
            await sub.subscribe(after_position=0, mode="delta")
            frames = await sub.versions(1660, timeout=30)
            await asyncio.to_thread(thread.join)
            post(server, token, aggregate="sentinel")  # nothing twice before it
            frames += await sub.versions(1)
            return frames

    frames = asyncio.run(scenario())
    assert writer_done.is_set()
    assert [f["position"] for f in frames] == list(range(1, 1662))
    assert frames[-1]["aggregate"] == "sentinel"


def test_aggregate_subscription_resumes_after_version(server, token):
    for i in range(3):
        post(server, token, aggregate="mine", i=str(i))
        post(server, token, aggregate="other", i=str(i))

    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(aggregate="mine", after_version=1, mode="delta")
            replayed = await sub.versions(2)
            post(server, token, aggregate="other", i="x")
            post(server, token, aggregate="mine", i="x")
            live = await sub.versions(1)
            return replayed, live

    replayed, live = asyncio.run(scenario())
    assert [(f["aggregate"], f["version"]) for f in replayed] == [
        ("mine", 2),
        ("mine", 3),
    ]
    assert [(f["aggregate"], f["version"]) for f in live] == [("mine", 4)]


def test_lost_notifications_are_healed_from_the_database(server, token):
    """Versions committed by another process with no channel layer in common are,
    for this server, exactly versions whose notifications were lost."""

    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            await asyncio.to_thread(
                register_sources, [NewSource("c-inputs", "quiet", "A", {"n": "1"})]
            )
            post(server, token, aggregate="loud")  # position 2 reveals the gap
            healed = await sub.versions(2)
            # A lost *last* notification: only the position check can reveal it.
            await asyncio.to_thread(
                register_sources, [NewSource("c-inputs", "quiet", "A", {"n": "2"})]
            )
            last = await sub.versions(1, timeout=5)
            return healed, last

    healed, last = asyncio.run(scenario())
    assert [(f["aggregate"], f["position"]) for f in healed] == [
        ("quiet", 1),
        ("loud", 2),
    ]
    assert [(f["aggregate"], f["position"]) for f in last] == [("quiet", 3)]


def test_handshake_without_or_with_a_bogus_token_is_refused(server, token):
    async def refused(headers):
        with pytest.raises(websockets.InvalidStatus) as error:
            async with websockets.connect(
                server.url.replace("http", "ws") + "/ws/subscribe",
                additional_headers=headers,
            ):
                pass
        return error.value.response.status_code

    assert asyncio.run(refused({})) == 403
    assert asyncio.run(refused({"Authorization": "Bearer bk_bogus"})) == 403


def test_bad_frames_get_errors_and_the_connection_stays_open(server, token):
    _, other = create_token(name="other", scope="read", domains=["elsewhere"])
    store.create_domain("elsewhere", {})

    async def scenario():
        replies = []
        async with Subscriber(server, token) as sub:
            for frame in [
                "not json",
                "[1]",
                json.dumps({"type": "dance"}),
                json.dumps({"type": "subscribe", "id": "x", "domain": "bad key"}),
                json.dumps({"type": "subscribe", "id": "x", "domain": "nope"}),
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "x",
                        "domain": "c-inputs",
                        "after_position": 1,
                        "after_version": 1,
                    }
                ),
                json.dumps(
                    {
                        "type": "subscribe",
                        "id": "x",
                        "domain": "c-inputs",
                        "after_version": 1,
                    }
                ),
                json.dumps({"type": "unsubscribe", "id": "zzz"}),
            ]:
                await sub.ws.send(frame)
                replies.append(await sub.next())
            await sub.subscribe()  # still works
        async with Subscriber(server, other) as sub:
            await sub.send(type="subscribe", id="s1", domain="c-inputs")
            replies.append(await sub.next())
        return replies

    replies = asyncio.run(scenario())
    assert [r["type"] for r in replies] == ["error"] * 9
    assert [r["error"] for r in replies] == [
        "invalid_json",
        "invalid",
        "invalid",
        "invalid",
        "not_found",
        "invalid",
        "invalid",
        "not_found",
        "forbidden",
    ]
    assert "characters from" in replies[3]["detail"]
    assert replies[4]["id"] == "x"


def test_browsers_use_their_session_and_an_allowed_origin(server, token):
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_user(
        "viewer", password="a long passphrase", is_staff=True
    )
    with httpx.Client(base_url=server.url) as browser:
        login = browser.get("/admin/login/")
        browser.post(
            "/admin/login/?next=/admin/",
            data={
                "username": "viewer",
                "password": "a long passphrase",
                "csrfmiddlewaretoken": login.cookies["csrftoken"],
            },
            headers={"Referer": f"{server.url}/admin/login/"},
        )
        session = browser.cookies["sessionid"]
    url = server.ws_url + "/ws/subscribe"
    cookie = {"Cookie": f"sessionid={session}"}

    async def connect(headers):
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(
                json.dumps({"type": "subscribe", "id": "b", "domain": "c-inputs"})
            )
            return json.loads(await ws.recv())["type"]

    assert asyncio.run(connect({**cookie, "Origin": server.url})) == "subscribed"
    for refused in [{**cookie, "Origin": "http://evil.example"}, cookie]:
        with pytest.raises(websockets.InvalidStatus):
            asyncio.run(connect(refused))


def test_a_reader_that_stops_reading_is_closed_with_1013_and_resumes(server, token):
    big = "x" * 60_000  # 400 of these outgrow every socket buffer on the way

    async def scenario():
        async with Subscriber(server, token, max_size=None, max_queue=1) as slow:
            await slow.subscribe(mode="delta")
            ws = slow.ws
            # Read nothing while 400 big and 1,100 small versions arrive live.
            for n in range(15):
                blob = {"blob": big} if n < 4 else {}
                await asyncio.to_thread(
                    register_sources,
                    [
                        NewSource("c-inputs", f"agg-{n}", "A", {"i": str(i)}, blob)
                        for i in range(100)
                    ],
                )
                await asyncio.to_thread(post, server, token, aggregate="poke", n=str(n))
            # Still reading nothing, until the server has given up on this reader.
            await asyncio.to_thread(
                wait_for, lambda: "(1013)" in server.log(), 30, "the 1013 close"
            )
            positions = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    try:
                        text = await asyncio.wait_for(ws.recv(), 10)
                    except TimeoutError:
                        raise AssertionError(
                            f"stalled after {len(positions)}"
                        ) from None
                    frame = json.loads(text)
                    if frame["type"] == "version":
                        positions.append(frame["position"])
        assert closed.value.rcvd is not None, (closed.value, len(positions))
        assert closed.value.rcvd.code == 1013
        assert "resume" in closed.value.rcvd.reason
        # Resuming from the last position received misses nothing.
        async with Subscriber(server, token) as sub:
            await sub.subscribe(after_position=positions[-1], mode="delta")
            rest = await sub.versions(1515 - len(positions), timeout=30)
        return positions + [f["position"] for f in rest]

    assert asyncio.run(scenario()) == list(range(1, 1516))


def test_a_burst_does_not_disconnect_a_reader_that_keeps_up(server, token):
    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            await asyncio.to_thread(
                register_sources,
                [
                    NewSource("c-inputs", f"a{i % 9}", "A", {"i": str(i)})
                    for i in range(1000)
                ],
            )
            await asyncio.to_thread(
                register_sources,
                [
                    NewSource("c-inputs", f"b{i % 9}", "A", {"i": str(i)})
                    for i in range(1000)
                ],
            )
            post(server, token, aggregate="poke")
            return await sub.versions(2001, timeout=30)

    frames = asyncio.run(scenario())
    assert [f["position"] for f in frames] == list(range(1, 2002))


def test_commits_of_another_process_arrive_within_a_second_on_sqlite(
    start_server, tmp_path
):
    """The embedded default (SQLite, in-memory layer) and no setting: a version
    another process commits reaches a subscriber at once, not at the 30 s
    position check. On its own SQLite file, whatever the suite runs on."""
    url = f"sqlite:///{tmp_path / 'own.sqlite3'}"

    def manage(*args: str) -> str:
        env = {
            **os.environ,
            "BOTLNEK_DATABASE_URL": url,
            "BOTLNEK_DATA_DIR": str(tmp_path),
        }
        env.pop("BOTLNEK_REDIS_URL", None)
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    manage("migrate", "--no-input")
    token = manage("token", "create", "--scope", "write").split()[-1]
    manage(
        "shell",
        "-c",
        "from aggregates import store; store.create_domain('c-inputs', {})",
    )
    server = start_server(BOTLNEK_DATABASE_URL=url)
    write = (
        "from aggregates.store import NewSource, register_sources; "
        "register_sources([NewSource('c-inputs', '2026-12-01', 'A', {'n': '%d'})])"
    )

    async def scenario():
        async with Subscriber(server, token) as sub:
            await sub.subscribe(mode="delta")
            arrivals = []
            for n in range(3):
                await asyncio.to_thread(manage, "shell", "-c", write % n)
                # 5 s: far from the 30 s the position check would take.
                (frame,) = await sub.versions(1, timeout=5)
                arrivals.append(frame["position"])
            return arrivals

    assert asyncio.run(scenario()) == [1, 2, 3]
