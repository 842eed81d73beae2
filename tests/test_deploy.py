"""The deployment in deploy/: Debian's nginx, running deploy/nginx.conf as shipped
(only its ports changed), in front of two server processes on PostgreSQL and
Redis. Through the proxy: requests keep their Host and scheme, bodies over 1 MiB
are refused in the API's shape, posts reach both processes, a websocket subscriber
and an SSE stream get every version as it is committed, and when the process
serving them is killed they resume through nginx with nothing lost or repeated."""

import asyncio
import json
import os
import pwd
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from aggregates.client import Client
from aggregates.models import Version
from tests.toolkit import IN_CI, ROOT, ServerProcess, Writer, free_port, wait_for

NGINX = Path("/usr/sbin/nginx")
DEPLOY = ROOT / "deploy"
HOST = "botlnek.test"

# Around deploy/nginx.conf (which lives in nginx's http context): what Debian's
# /etc/nginx/nginx.conf provides, with every path under the test's directory.
MAIN_CONF = """\
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
daemon off;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/botlnek.conf;
}}
"""


def render_site(listen: int, upstreams: list[int]) -> str:
    """deploy/nginx.conf with the test's ports; each replaced line must exist."""
    text = (DEPLOY / "nginx.conf").read_text()
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{listen};",
        "server 127.0.0.1:8001 ": f"server 127.0.0.1:{upstreams[0]} ",
        "server 127.0.0.1:8002 ": f"server 127.0.0.1:{upstreams[1]} ",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf has no single {old!r}"
        text = text.replace(old, new)
    return text


class Nginx:
    """`nginx` in the foreground on a rendered copy of deploy/nginx.conf."""

    def __init__(self, prefix: Path, backends: list[ServerProcess]):
        prefix.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (prefix / "botlnek.conf").write_text(
            render_site(self.port, [backend.port for backend in backends])
        )
        # As root, nginx's workers would switch to `nobody`, who cannot enter
        # pytest's private temporary directories.
        user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else ""
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(MAIN_CONF.format(user=user, prefix=prefix))
        command = [str(NGINX), "-e", "stderr", "-p", str(prefix), "-c", str(self.conf)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.log_path = prefix / "nginx.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._live, 20, "nginx to answer /livez")

    def _live(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(f"{self.url}/livez", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.process.terminate()  # fast shutdown: open streams are cut
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session
            self.process.wait()


@pytest.fixture
def nginx(tmp_path):
    if not NGINX.exists():
        if IN_CI:
            pytest.fail(f"{NGINX} is not installed in CI (.ci/run installs it)")
        pytest.skip(f"needs Debian's nginx at {NGINX}")
    started: list[Nginx] = []

    def start(backends: list[ServerProcess]) -> Nginx:
        started.append(Nginx(tmp_path / "nginx", backends))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def requests_logged(backend: ServerProcess, method: str, path: str) -> list[str]:
    """The process's request log lines (one JSON line per request) for a path."""
    needle = f'"method": "{method}", "path": "{path}"'
    return [line for line in backend.log().splitlines() if needle in line]


def source(n: int) -> dict:
    return {
        "domain": "c-inputs",
        "aggregate": f"agg-{n % 5}",
        "collection": "AB"[n % 2],
        "keys": {"n": str(n)},
    }


@pytest.mark.postgres
def test_nginx_passes_host_and_scheme_and_refuses_large_bodies(
    start_server, token, redis_url, nginx
):
    secure = {
        "BOTLNEK_REDIS_URL": redis_url,
        "BOTLNEK_ALLOWED_HOSTS": HOST,
        "BOTLNEK_HTTPS": "1",
        "BOTLNEK_BEHIND_PROXY": "1",
        "BOTLNEK_SECRET_KEY": "k" * 50,
    }
    backends = [start_server(**secure) for _ in range(2)]
    proxy = nginx(backends)
    login = "/accounts/login/"

    # A client may claim https; nginx says what it really was, so the page
    # redirects to https, on the host the client asked for (which the app allows:
    # nginx's own upstream name would be a 400).
    for _ in backends:
        response = httpx.get(
            proxy.url + login, headers={"Host": HOST, "X-Forwarded-Proto": "https"}
        )
        assert response.status_code == 301, response.text
        assert response.headers["location"] == f"https://{HOST}{login}"
    # The same claim straight to a process is believed: the header is what counts.
    direct = httpx.get(
        backends[0].url + login, headers={"Host": HOST, "X-Forwarded-Proto": "https"}
    )
    assert direct.status_code == 200

    # 1 MiB is let through to the API; one byte more is refused by nginx, in the
    # API's error shape, without reaching a process.
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps(source(1)).encode()
    largest = body + b" " * (1024 * 1024 - len(body))
    response = httpx.post(f"{proxy.url}/api/sources", content=largest, headers=auth)
    assert response.status_code == 201, response.text
    too_large = largest + b" "
    response = httpx.post(f"{proxy.url}/api/sources", content=too_large, headers=auth)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    posts = [requests_logged(b, "POST", "/api/sources") for b in backends]
    assert sum(len(lines) for lines in posts) == 1, posts

    # Metrics are scraped per process, never through the proxy.
    response = httpx.get(f"{proxy.url}/metrics", headers=auth)
    assert response.status_code == 404 and "directly" in response.json()["detail"]
    assert httpx.get(f"{backends[0].url}/metrics", headers=auth).status_code == 200

    # With no process left, the proxy answers in the API's error shape too.
    for backend in backends:
        backend.stop()
    response = httpx.get(f"{proxy.url}/api/domains", headers=auth)
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"


def read_sse(response: httpx.Response, seen: list[int]):
    """Append each event's id to `seen` as it arrives, yielding after each."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "id" in fields:
            assert fields["event"] == "version", fields
            seen.append(int(fields["id"]))
            yield
        fields = {}


class SseFollower(threading.Thread):
    """An event stream through nginx that resumes with Last-Event-ID whenever it
    ends, until it has seen `total` events (or gives up after `deadline` s)."""

    def __init__(self, url: str, token: str, total: int, deadline: float = 90):
        super().__init__(daemon=True)
        self.url = f"{url}/api/stream"
        self.token = token
        self.total = total
        self.give_up = time.monotonic() + deadline
        self.seen: list[int] = []
        self.connections = 0
        self.open = threading.Event()  # its first stream was answered
        self.stopped = threading.Event()  # the test is over: give up

    def run(self) -> None:
        params = {"domain": "c-inputs", "mode": "delta", "after_position": 0}
        while len(self.seen) < self.total and time.monotonic() < self.give_up:
            if self.stopped.is_set():
                return
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.seen:
                headers["Last-Event-ID"] = str(self.seen[-1])
            self.connections += 1
            try:
                with httpx.stream(
                    "GET", self.url, params=params, headers=headers, timeout=30
                ) as response:
                    assert response.status_code == 200, response.read()
                    self.open.set()
                    for _ in read_sse(response, self.seen):
                        if len(self.seen) >= self.total:
                            return
            except httpx.TransportError:
                # The process behind it died: resume through nginx, after a pause
                # (as an EventSource does) so a refused connection does not spin.
                self.stopped.wait(0.2)


@pytest.mark.postgres
def test_two_processes_behind_nginx_deliver_everything_across_a_killed_process(
    start_server, token, redis_url, nginx
):
    # Unbuffered output, so daphne's access log shows which process holds the
    # websocket as soon as it is open.
    env = {"BOTLNEK_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    backends = [start_server(**env) for _ in range(2)]
    proxy = nginx(backends)
    through_nginx = [SimpleNamespace(url=proxy.url)]  # what Writer posts to
    total, kill_at = 90, 30
    items = [source(n) for n in range(1, total + 1)]
    ws_seen: list[int] = []
    subscribed: list[int] = []
    doomed: list[ServerProcess] = []
    sse_connections_mid_way: list[int] = []
    sse = SseFollower(proxy.url, token, total)
    sse.start()

    def write() -> None:
        # The two streams open first, so each process holds one (least_conn) and
        # the posts then alternate between them.
        wait_for(lambda: subscribed and sse.open.is_set(), 20, "both streams open")
        first = Writer(through_nginx, token, items[:kill_at])
        first.run()
        # Both streams are live mid-way, and posts went to both processes.
        wait_for(lambda: len(ws_seen) == len(sse.seen) == kill_at, 30, "streams")
        sse_connections_mid_way.append(sse.connections)
        for backend in backends:
            wait_for(
                lambda b=backend: requests_logged(b, "POST", "/api/sources"),
                what=f"a post through nginx logged by {backend.url}",
            )
        (holder,) = [b for b in backends if "WSCONNECT /ws/subscribe" in b.log()]
        holder.process.kill()  # SIGKILL: its sockets are cut, nothing is cleaned up
        holder.process.wait()
        doomed.append(holder)
        # Posts go on through nginx, which sends them to the survivor.
        rest = Writer(through_nginx, token, items[kill_at:])
        rest.run()
        writers.extend([first, rest])

    writers: list[Writer] = []

    async def subscribe() -> None:
        client = Client(proxy.url, token)
        stream = client.subscribe(
            "c-inputs", after_position=0, mode="delta", on_subscribed=subscribed.append
        )
        try:
            async for frame in stream:
                ws_seen.append(frame["position"])
                if len(ws_seen) == total:
                    return
        finally:
            await stream.aclose()

    async def scenario() -> None:
        # Either side failing ends the test at once.
        both = asyncio.gather(subscribe(), asyncio.to_thread(write))
        await asyncio.wait_for(both, 120)

    try:
        asyncio.run(scenario())
        sse.join(timeout=60)
    finally:
        sse.stopped.set()

    assert doomed and doomed[0].process.returncode == -signal.SIGKILL
    assert [len(w.answers) for w in writers] == [kill_at, total - kill_at]
    in_database = list(
        Version.objects.order_by("position").values_list("position", flat=True)
    )
    assert in_database == list(range(1, total + 1))
    # Every position once, in order, on both transports, across the kill: the
    # websocket client resumed through nginx (subscribed twice or more) ...
    assert ws_seen == in_database
    assert len(subscribed) >= 2
    # ... and so did the event stream whenever its process was the one killed.
    assert not sse.is_alive()
    assert sse.seen == in_database
    if requests_logged(doomed[0], "GET", "/api/stream"):
        assert sse.connections >= 2
    # Unbuffered: its first stream carried every event up to the kill while it
    # stayed open (an event held back in nginx would have arrived only at its end).
    assert sse_connections_mid_way == [1]


def test_environment_example_passes_the_deployment_checks(tmp_path):
    """deploy/botlnek.env.example names every setting, and with its placeholders
    filled in, Django's deployment checks find nothing to report."""
    example = (DEPLOY / "botlnek.env.example").read_text()
    values = dict(
        line.split("=", 1)
        for line in example.splitlines()
        if line.strip() and not line.startswith("#")
    )
    read = set(
        re.findall(
            r'"(BOTLNEK_[A-Z_]+)"', (ROOT / "botlnek_site/settings.py").read_text()
        )
    )
    assert read <= set(values), read - set(values)

    values = {
        k: v.replace("CHANGE-ME", secrets.token_urlsafe(50)) for k, v in values.items()
    }
    values["BOTLNEK_DATA_DIR"] = str(tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BOTLNEK_")},
        **values,
    }
    check = subprocess.run(
        [sys.executable, "-m", "django", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout, check.stdout
