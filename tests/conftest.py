"""Fixtures: personas (tokens), the c-inputs domain, real servers, Redis.

The helpers they build on are in tests/toolkit.py.
"""

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from aggregates import store
from aggregates.models import Domain
from aggregates.tokens import create_token
from tests.toolkit import (
    ERRORS_SEEN,
    IN_CI,
    ROOT,
    ApiClient,
    ServerProcess,
    free_port,
)


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


# Wording a person should never read in an error: the framework's, not ours.
FRAMEWORK_WORDING = re.compile(
    r"Input should|^body |^frame |^query |Value error|pydantic|_type\b|literal_error"
)


def pytest_sessionfinish(session, exitstatus):
    """Every error message the API answered in this run, in a table
    (test-artifacts/error-messages.md); the run fails if one is in the
    framework's words instead of ours."""
    seen = ERRORS_SEEN.seen
    if not seen:
        return
    rows = sorted(seen.items())
    lines = [
        "# Error messages the API answered in this test run",
        "",
        "| status | error | message | first seen on |",
        "|---|---|---|---|",
        *(
            f"| {status} | {error} | {_cell(message)} | {where} |"
            for (status, error, message), where in rows
        ),
    ]
    out = ROOT / "test-artifacts" / "error-messages.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    wrong = [m for (_, _, m), _ in rows if FRAMEWORK_WORDING.search(m)]
    if wrong:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"error messages in the framework's words ({out}):")
        for message in wrong:
            reporter.write_line(f"  {message}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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


@pytest.fixture
def token(domain, write_token) -> str:
    """A write token for every domain, with c-inputs there to write into."""
    return write_token


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
