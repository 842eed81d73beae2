import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.test import Client

from aggregates import store
from aggregates.models import Domain
from aggregates.tokens import create_token

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    """Tests marked `postgres` run only when the suite runs on PostgreSQL."""
    on_postgres = os.environ.get("BOTLNEK_DATABASE_URL", "").startswith("postgres")
    skip = pytest.mark.skip(reason="needs BOTLNEK_DATABASE_URL=postgres://…")
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # In CI a PostgreSQL run that skips tests has not proven what it claims.
    outcome = yield
    report = outcome.get_result()
    on_postgres = os.environ.get("BOTLNEK_DATABASE_URL", "").startswith("postgres")
    if IN_CI and on_postgres and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI on PostgreSQL: {report.longrepr}"


class ApiClient:
    """Django's test client speaking JSON with a bearer token."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.token = token

    def _headers(self, token):
        token = self.token if token is ... else token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path, token=..., **params):
        return self.client.get(path, params, headers=self._headers(token))

    def post(self, path, json=None, *, token=..., body=None, content_type=None):
        if body is None:
            import json as _json

            body = _json.dumps(json)
        return self.client.generic(
            "POST",
            path,
            body,
            content_type=content_type or "application/json",
            headers=self._headers(token),
        )

    def request(self, method, path, token=...):
        return self.client.generic(method, path, headers=self._headers(token))


@pytest.fixture
def write_token(transactional_db) -> str:
    return create_token(name="writer", scope="write")[1]


@pytest.fixture
def read_token(transactional_db) -> str:
    return create_token(name="reader", scope="read")[1]


@pytest.fixture
def api(write_token) -> ApiClient:
    return ApiClient(write_token)


@pytest.fixture
def domain(transactional_db) -> Domain:
    return store.create_domain("c-inputs", {})[0]


def post_source(api, aggregate="2026-11-26", collection="A", keys=None, **extra):
    body = {
        "domain": "c-inputs",
        "aggregate": aggregate,
        "collection": collection,
        "keys": keys or {},
        **extra,
    }
    return api.post("/api/sources", body)


def post_via_http(server, token, aggregate="2026-11-26", collection="A", **keys):
    """Register a new source in c-inputs through a running server; its answer."""
    response = httpx.post(
        f"{server.url}/api/sources",
        json={
            "domain": "c-inputs",
            "aggregate": aggregate,
            "collection": collection,
            "keys": keys,
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


# A real server process, for tests of what crosses processes and sockets.


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
    def __init__(
        self, tmp_path: Path, env: dict[str, str] | None = None, port: int = 0
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"daphne-{self.port}.log"
        server_env = {
            **os.environ,
            "BOTLNEK_DATABASE_URL": database_url(),
            "BOTLNEK_DATA_DIR": str(tmp_path),
            **(env or {}),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "botlnek_site.asgi:application",
                ],
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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


REDIS_URL = os.environ.get("BOTLNEK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError:
        return False


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis; its absence skips the test, and fails it in CI."""
    if not redis_reachable(REDIS_URL):
        if IN_CI:
            pytest.fail(f"Redis unreachable at {REDIS_URL} in CI")
        pytest.skip(f"needs Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, so it can be stopped and started again."""
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed in CI")
        pytest.skip("needs redis-server")
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]

    class Private:
        url = f"redis://127.0.0.1:{port}/0"

        def start(self):
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("redis-server did not start")

        def stop(self):
            self.process.terminate()
            self.process.wait(timeout=10)

    redis = Private()
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def start_server(transactional_db, tmp_path):
    servers: list[ServerProcess] = []

    def start(port: int = 0, **env: str) -> ServerProcess:
        servers.append(ServerProcess(tmp_path, env, port))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
