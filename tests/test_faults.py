"""Faults while writers and subscribers are busy: Redis stopped, a server process
killed, PostgreSQL restarted. Nothing committed is lost or half-written, nothing is
delivered twice, and the servers heal by themselves."""

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from aggregates.models import Receipt, Source, Version
from tests.toolkit import (
    IN_CI,
    Follower,
    Writer,
    free_port,
    manage,
    post,
    wait_for,
)


def source(n: int, writer: int = 0) -> dict:
    return {
        "domain": "c-inputs",
        "aggregate": f"agg-{n % 5}",
        "collection": "AB"[n % 2],
        "keys": {"writer": str(writer), "n": str(n)},
    }


async def follow(servers, token, total: int, start: int = 0) -> list[int]:
    """A subscriber that resumes on the next server whenever its connection ends,
    until it has seen `total` positions."""
    follower = Follower(servers, token, start=start, pause=(0.1, 0.1))
    return await follower.follow(total)


def assert_nothing_partial_or_twice(expected_identities: int) -> None:
    """Every registration once: positions and versions gapless, one source each."""
    positions = list(
        Version.objects.order_by("position").values_list("position", flat=True)
    )
    assert positions == list(range(1, expected_identities + 1))
    assert Source.objects.count() == expected_identities
    assert not Version.objects.filter(source__isnull=True).exists()
    for aggregate in {v for v in Version.objects.values_list("aggregate", flat=True)}:
        numbers = Version.objects.filter(aggregate=aggregate).order_by("number")
        numbers = list(numbers.values_list("number", flat=True))
        assert numbers == list(range(1, len(numbers) + 1))


def test_redis_outage_keeps_writes_and_heals_every_subscriber(
    start_server, token, private_redis
):
    servers = [
        start_server(
            BOTLNEK_REDIS_URL=private_redis.url, BOTLNEK_POSITION_CHECK_SECONDS="1"
        )
        for _ in range(2)
    ]
    total = 60
    health_while_down: list[tuple[int, dict]] = []
    health_after: list[int] = []

    def writer() -> None:
        with httpx.Client(timeout=30) as http:
            auth = {"Authorization": f"Bearer {token}"}
            for n in range(total):
                if n == 20:
                    private_redis.stop()
                    for server in servers:
                        response = http.get(f"{server.url}/healthz")
                        health_while_down.append(
                            (response.status_code, response.json())
                        )
                if n == 40:
                    private_redis.start()
                # Writes never wait for Redis.
                response = http.post(
                    f"{servers[n % 2].url}/api/sources", json=source(n), headers=auth
                )
                assert response.status_code == 201, response.text
                time.sleep(0.02)
            for server in servers:
                url = f"{server.url}/healthz"
                # Healed by itself: ready again soon after Redis is back.
                wait_for(lambda url=url: http.get(url).status_code == 200, what=url)
                health_after.append(http.get(url).status_code)

    async def scenario():
        # Three subscribers on each process, each from the start.
        subscribers = [follow(servers[i % 2 :], token, total) for i in range(6)]
        thread = threading.Thread(target=writer)
        thread.start()
        results = await asyncio.gather(*subscribers)
        await asyncio.to_thread(thread.join)
        return results

    for seen in asyncio.run(scenario()):
        assert seen == list(range(1, total + 1))
    down = {"status": "unavailable", "database": "ok", "channel_layer": "unreachable"}
    assert health_while_down == [(503, down), (503, down)]
    assert health_after == [200, 200]
    assert_nothing_partial_or_twice(total)


@pytest.mark.postgres
def test_a_server_killed_mid_stream_leaves_nothing_partial_and_loses_nothing(
    start_server, token, redis_url
):
    servers = [start_server(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    doomed = servers[0]
    per_writer = 50
    writers = [
        Writer(servers, token, [source(n, w) for n in range(per_writer)])
        for w in range(4)
    ]
    total = per_writer * len(writers)

    def kill_when_busy() -> None:
        wait_for(lambda: sum(w.done_count for w in writers) >= total // 3, 60)
        doomed.process.kill()  # SIGKILL: no cleanup, requests cut mid-flight
        doomed.process.wait()

    async def scenario():
        # Subscribers on both processes; those on the killed one resume elsewhere.
        subscribers = [follow(servers, token, total, start=i) for i in range(6)]
        for thread in writers:
            thread.start()
        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        results = await asyncio.gather(*subscribers)
        for thread in [*writers, killer]:
            await asyncio.to_thread(thread.join)
        return results

    results = asyncio.run(scenario())
    assert doomed.process.returncode == -9
    assert sum(writer.transport_errors for writer in writers) > 0  # it hit mid-run
    assert_nothing_partial_or_twice(total)
    for writer in writers:
        assert not writer.failures
        assert len(writer.answers) == per_writer
    in_database = list(range(1, total + 1))
    for seen in results:
        assert seen == in_database


def test_a_server_stopped_under_writers_exits_promptly(start_server, token):
    """SIGTERM while posts are committing: the writes still in flight must not hold
    the process up (a notification sent after the loop stopped once hung it)."""
    for attempt in range(3):
        server = start_server()
        writers = [
            Writer([server], token, [source(n, 10 * attempt + w) for n in range(200)])
            for w in range(8)
        ]
        for writer in writers:
            writer.start()
        try:
            wait_for(
                lambda writers=writers: sum(w.done_count for w in writers) >= 40,
                what="writes",
            )
            server.process.terminate()
            assert server.process.wait(timeout=15) == 0, server.log()
        finally:
            for writer in writers:
                writer.stopped.set()
                writer.join()


def test_a_stopped_server_answers_every_write_it_commits(start_server, token):
    """SIGTERM under writers of receipts, which unlike sources are not idempotent
    (a retried one is another receipt): every receipt written was answered, every
    one answered was written, and those turned away or refused wrote nothing."""
    server = start_server()
    post(server, token, "d1", "A")
    outcomes: dict[str, str] = {}  # a receipt's detail: how its request ended
    gone = threading.Event()

    def write(writer: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=30, headers=headers) as http:
            for n in range(100_000):
                if gone.is_set():
                    return
                detail = f"{writer}-{n}"
                receipt = {
                    "watcher": "w",
                    "domain": "c-inputs",
                    "aggregate": "d1",
                    "version": 1,
                    "outcome": "success",
                    "detail": detail,
                }
                try:
                    response = http.post(f"{server.url}/api/receipts", json=receipt)
                except httpx.TransportError as exc:
                    outcomes[detail] = type(exc).__name__
                    time.sleep(0.01)
                    continue
                outcomes[detail] = str(response.status_code)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for writer in writers:
        writer.start()
    try:
        wait_for(lambda: sum(o == "201" for o in outcomes.values()) >= 200, 30)
        server.process.terminate()
        assert server.process.wait(timeout=20) == 0, server.log()
    finally:
        gone.set()
        for writer in writers:
            writer.join()
    written = set(Receipt.objects.values_list("detail", flat=True))
    answered = {detail for detail, outcome in outcomes.items() if outcome == "201"}
    assert written == answered, (
        f"written, never answered: {sorted(written - answered)[:5]} "
        f"({[outcomes[d] for d in sorted(written - answered)[:5]]}); "
        f"answered, never written: {sorted(answered - written)[:5]}"
    )
    # Refused, turned away, or sent on a kept-alive connection as the server
    # closed it (then the server never read it: HTTP/1.1's own race, which the
    # Idempotency-Key header is for): none of them wrote anything.
    endings = {"201", "503", "ConnectError", "RemoteProtocolError"}
    assert set(outcomes.values()) <= endings, set(outcomes.values())


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own, so it can be restarted."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = binaries[-1] if binaries else shutil.which("pg_ctl")
    if pg_ctl is None:
        if IN_CI:
            pytest.fail("PostgreSQL's pg_ctl is not installed in CI")
        pytest.skip("needs PostgreSQL's server binaries")
    bindir = Path(pg_ctl).parent
    # Outside pytest's tmp_path, which the postgres user may not enter.
    home = Path(tempfile.mkdtemp(prefix="botlnek-test-pg-"))
    # PostgreSQL refuses to run as root: run it as the postgres user then.
    as_owner = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    run = subprocess.run
    initdb = [bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres"]
    run(
        [*as_owner, *initdb, "--no-sync", "-E", "UTF8"], check=True, capture_output=True
    )
    port = free_port()
    # No fsync: this cluster's durability across a machine crash is not the point.
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    control = [*as_owner, pg_ctl, "-D", data, "-l", home / "log", "-w", "-o", options]

    class Private:
        url = f"postgres://postgres@127.0.0.1:{port}/botlnek"

        def query(self, sql: str) -> list[tuple]:
            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(sql).fetchall()

        def restart(self) -> None:
            run([*control, "-m", "fast", "restart"], check=True, capture_output=True)

    run([*control, "start"], check=True, capture_output=True)
    admin = f"postgres://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE botlnek")
    yield Private()
    run([*control, "-m", "immediate", "stop"], check=False, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.postgres
def test_postgresql_restart_fails_requests_cleanly_and_heals(
    start_server, private_postgres, tmp_path
):
    url = private_postgres.url
    manage(url, tmp_path, "migrate", "--no-input")
    token = manage(url, tmp_path, "token", "create", "--scope", "write").split()[-1]
    server = start_server(BOTLNEK_DATABASE_URL=url, BOTLNEK_POSITION_CHECK_SECONDS="1")
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{server.url}/api/domains", json={"key": "c-inputs"}, headers=auth
    )
    assert created.status_code == 201, created.text
    writers = [
        Writer([server], token, [source(n, w) for n in range(60)]) for w in range(2)
    ]
    total = 120
    health: list[int] = []

    def restart_when_busy() -> None:
        wait_for(lambda: sum(w.done_count for w in writers) >= 40, 60)
        private_postgres.restart()
        health.append(httpx.get(f"{server.url}/healthz", timeout=30).status_code)

    async def scenario():
        subscriber = follow([server], token, total)
        for thread in writers:
            thread.start()
        restarter = threading.Thread(target=restart_when_busy)
        restarter.start()
        seen = await subscriber
        for thread in [*writers, restarter]:
            await asyncio.to_thread(thread.join)
        return seen

    seen = asyncio.run(scenario())
    assert seen == list(range(1, total + 1))
    failures = [failure for writer in writers for failure in writer.failures]
    # Requests cut by the restart answered a 5xx with the error shape, never hung
    # up; the writers retried them.
    for status, body in failures:
        assert (status, body["error"]) == (503, "unavailable"), body
    assert sum(writer.transport_errors for writer in writers) == 0
    assert health == [200]  # right after the restart, without help
    rows = private_postgres.query(
        "SELECT count(*), min(position), max(position) FROM aggregates_version"
    )
    assert rows == [(total, 1, total)]
    orphans = private_postgres.query(
        "SELECT count(*) FROM aggregates_version v LEFT JOIN aggregates_source s"
        " ON s.version_id = v.id WHERE s.id IS NULL"
    )
    assert orphans == [(0,)]
    assert private_postgres.query("SELECT count(*) FROM aggregates_source") == [
        (total,)
    ]
    print(f"{len(failures)} requests failed cleanly during the restart")
