"""What the tests share: a client through the production handler stack, posting and
filling helpers, real server processes, websocket subscribers and followers, and
waiting for a condition instead of sleeping.

Fixtures built on these live in conftest.py.
"""

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets
from django.db import connection

from aggregates import daphne_transport
from aggregates.store import NewSource, Registration, register_sources

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
DOMAIN = "c-inputs"


def wait_for(condition: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """Poll `condition` until it answers something true; answer that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.02)


# In-process requests, through the very ASGI application daphne serves.


class ApiClient:
    """JSON requests with a bearer token, served in this process by
    botlnek_site.asgi:application (the API's own handler and middleware, as in
    production), answering httpx responses."""

    def __init__(self, token: str | None):
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = ...,  # type: ignore[assignment]
        params: dict | None = None,
        body: str | bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        token = self.token if token is ... else token
        headers = dict(headers or {})
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        if content_type is not None:
            headers["Content-Type"] = content_type
        return asyncio.run(_asgi_request(method, path, params, body, headers))

    def get(self, path: str, token: str | None = ..., **params) -> httpx.Response:  # type: ignore[assignment]
        return self.request("GET", path, token=token, params=params or None)

    def post(
        self,
        path: str,
        json_body: Any = None,
        *,
        token: str | None = ...,  # type: ignore[assignment]
        body: str | bytes | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        if body is None:
            body = json.dumps(json_body)
        return self.request(
            "POST", path, token=token, body=body, content_type=content_type
        )

    def put(self, path: str, json_body: Any) -> httpx.Response:
        return self.request(
            "PUT", path, body=json.dumps(json_body), content_type="application/json"
        )


async def _asgi_request(method, path, params, body, headers) -> httpx.Response:
    from botlnek_site.asgi import application

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver"
    ) as client:
        response = await client.request(
            method, path, params=params, content=body, headers=headers
        )
        await response.aread()
        ERRORS_SEEN.note(method, path, response)
        return response


class ErrorsSeen:
    """Every error the API answered in-process during the run: the table of the
    messages users can get (written by conftest at the end, and checked for
    framework wording)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str, str], str] = {}

    def note(self, method: str, path: str, response: httpx.Response) -> None:
        if "json" not in response.headers.get("content-type", ""):
            return
        body = response.json()
        if not isinstance(body, dict):
            return
        answers = [(response.status_code, body)]
        answers += [
            (result["status"], result)  # an intake's answer per event
            for result in body.get("results") or []
            if isinstance(result, dict) and result.get("status", 0) >= 400
        ]
        for status, answer in answers:
            if status < 400 or "detail" not in answer:
                continue
            messages = [answer["detail"], *(answer.get("fields") or {}).values()]
            for message in messages:
                key = (status, answer.get("error", ""), str(message))
                self.seen.setdefault(key, f"{method} {path.split('?')[0]}")


ERRORS_SEEN = ErrorsSeen()


def post_source(
    api: ApiClient, aggregate="2026-11-26", collection="A", keys=None, **extra
) -> httpx.Response:
    """POST one source of c-inputs in process."""
    body = {
        "domain": DOMAIN,
        "aggregate": aggregate,
        "collection": collection,
        "keys": keys or {},
        **extra,
    }
    return api.post("/api/sources", body)


def fill(
    aggregate: str, count: int, *, domain: str = DOMAIN, start: int = 0
) -> list[Registration]:
    """Register `count` new sources into one aggregate, alternating A and B."""
    return register_sources(
        [
            NewSource(domain, aggregate, "AB"[i % 2], {"i": str(i)}, {"n": i})
            for i in range(start, start + count)
        ]
    )


# Real server processes, for what crosses processes and sockets.


def watch_command(server, token: str, *args: str, domain: str = "c-inputs") -> list:
    """`botlnek watch` against `server`, as a user runs it (then `args`)."""
    return [
        sys.executable,
        "-m",
        "aggregates.client.cli",
        "watch",
        "--url",
        server.url,
        "--token",
        token,
        "--domain",
        domain,
        *args,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """A URL for the test database this session created."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings["USER"] or ""
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    host = settings["HOST"] or "127.0.0.1"
    port = settings["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings['NAME']}"


class ServerProcess:
    """`daphne botlnek_site.asgi:application` on the test database."""

    def __init__(
        self, tmp_path: Path, env: dict[str, str] | None = None, port: int = 0
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"daphne-{self.port}.log"
        server_env = {
            **os.environ,
            "BOTLNEK_DATABASE_URL": database_url(),
            "BOTLNEK_DATA_DIR": str(tmp_path),
            **(env or {}),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                daphne_transport.command("127.0.0.1", self.port),
                cwd=ROOT,
                env=server_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_live()

    def _wait_until_live(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/livez", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """`pid` runs (a zombie does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def post(
    server: ServerProcess, token: str, aggregate="2026-11-26", collection="A", **keys
) -> dict:
    """Register a new source in c-inputs through a running server; its answer."""
    response = httpx.post(
        f"{server.url}/api/sources",
        json={
            "domain": DOMAIN,
            "aggregate": aggregate,
            "collection": collection,
            "keys": keys,
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


class Writer(threading.Thread):
    """Posts its sources in order, each until it is registered, failing over to the
    next server on a refused connection or a 5xx (as a proxy or a client would);
    registering is idempotent, so a retry never registers anything twice."""

    def __init__(self, servers, token, items):
        super().__init__()
        self.servers = servers
        self.headers = {"Authorization": f"Bearer {token}"}
        self.items = items
        self.answers: list[dict] = []
        self.failures: list[tuple[int, dict]] = []
        self.transport_errors = 0
        self.done_count = 0
        self.stopped = threading.Event()  # give up on what is left

    def run(self) -> None:
        turn = 0
        with httpx.Client(timeout=30, headers=self.headers) as http:
            for item in self.items:
                while not self.stopped.is_set():
                    server = self.servers[turn % len(self.servers)]
                    turn += 1
                    try:
                        response = http.post(f"{server.url}/api/sources", json=item)
                    except httpx.TransportError:
                        self.transport_errors += 1
                        time.sleep(0.05)
                        continue
                    if response.status_code in (200, 201):
                        self.answers.append(response.json())
                        self.done_count += 1
                        break
                    self.failures.append((response.status_code, response.json()))
                    assert response.status_code >= 500, response.text
                    time.sleep(0.05)


# Websockets


class Subscriber:
    """One connection to /ws/subscribe, driven frame by frame."""

    def __init__(self, server: ServerProcess, token: str | None, **options):
        self.url = server.ws_url + "/ws/subscribe"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.options = options  # for websockets.connect

    async def __aenter__(self) -> "Subscriber":
        self.ws = await websockets.connect(
            self.url, additional_headers=self.headers, **self.options
        )
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def send(self, **frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def subscribe(self, **frame) -> dict:
        """Subscribe (id s1, domain c-inputs unless given); the `subscribed` reply."""
        await self.send(**{"type": "subscribe", "id": "s1", "domain": DOMAIN, **frame})
        reply = await self.next()
        assert reply["type"] == "subscribed", reply
        return reply

    async def next(self, timeout: float = 10) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def versions(self, count: int, timeout: float = 10) -> list[dict]:
        frames = [await self.next(timeout) for _ in range(count)]
        assert all(f["type"] == "version" for f in frames), frames
        return frames


class Follower:
    """A subscriber of a whole domain from position 0 that never lets go: whenever
    its connection ends (a server killed, a hop on purpose) it resumes after the
    last position it saw, on the next server (or a random one, with `rng`).

    Every frame must be the next position: what it sees has no gap and no repeat.
    `hop_every=(low, high)` drops the connection after a random number of frames.
    """

    def __init__(
        self,
        servers: list[ServerProcess],
        token: str,
        *,
        mode: str = "delta",
        rng: random.Random | None = None,
        hop_every: tuple[int, int] | None = None,
        start: int = 0,
        pause: tuple[float, float] = (0.0, 0.1),
        deadline: float = 120,
    ):
        self.servers = servers
        self.headers = {"Authorization": f"Bearer {token}"}
        self.mode = mode
        self.rng = rng or random.Random(start)
        self.random_server = rng is not None
        self.hop_every = hop_every
        self.turn = start
        self.pause = pause
        self.deadline = deadline
        self.seen: list[int] = []
        self.reconnects = 0

    def _server(self) -> ServerProcess:
        if self.random_server:
            return self.rng.choice(self.servers)
        return self.servers[self.turn % len(self.servers)]

    async def follow(self, until: int | Callable[[list[int]], bool]) -> list[int]:
        """Follow until `until` positions were seen (or `until(seen)` is true)."""

        def done() -> bool:
            return (
                len(self.seen) >= until if isinstance(until, int) else until(self.seen)
            )

        give_up = time.monotonic() + self.deadline
        while not done():
            assert time.monotonic() < give_up, f"stuck after {len(self.seen)} frames"
            url = self._server().ws_url + "/ws/subscribe"
            try:
                async with websockets.connect(
                    url, additional_headers=self.headers
                ) as ws:
                    await self._read(ws, done)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake):
                self.turn += 1  # that server is away: the next one
            self.reconnects += 1
            await asyncio.sleep(self.rng.uniform(*self.pause))
        return self.seen

    async def _read(self, ws, done: Callable[[], bool]) -> None:
        after = self.seen[-1] if self.seen else 0
        request = {"type": "subscribe", "id": "s", "domain": DOMAIN}
        await ws.send(
            json.dumps({**request, "mode": self.mode, "after_position": after})
        )
        assert json.loads(await ws.recv())["type"] == "subscribed"
        budget = self.rng.randint(*self.hop_every) if self.hop_every else -1
        while budget and not done():
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 2))
            except TimeoutError:
                continue  # nothing new: ask done() again
            assert frame["position"] == len(self.seen) + 1, (frame, self.seen[-3:])
            assert ("state" in frame) == (self.mode == "full"), frame
            self.seen.append(frame["position"])
            budget -= 1


def manage(database: str, data_dir, *args: str, timeout: float = 120) -> str:
    """`python manage.py ARGS` on a database, as an operator runs it; its stdout."""
    env = {**os.environ, "BOTLNEK_DATABASE_URL": database}
    env["BOTLNEK_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
