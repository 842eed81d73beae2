"""Webhooks benchmark: deliveries per second to one healthy local receiver, commit
→ delivery latency at 50 versions/s, and single-post ingest with 10 webhooks
attached against none. The receiver is a keep-alive HTTP server in this process."""

import json
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.ingest import Server, batches, wrk


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a server under test that stops hangs up mid-request: not news


class Receiver:
    """Answers 200 to every POST and notes when each event arrived."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, int], float] = {}  # (path, position): time
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the deliverer reuses it

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                at = time.monotonic()
                position = json.loads(body)["position"]
                with receiver.lock:
                    receiver.arrived.setdefault((self.path, position), at)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for key in self.arrived if key[0] == path)

    def wait(self, path: str, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.count(path) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: {self.count(path)} of {count} arrived")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _hook(server: Server, domain: str, url: str) -> int:
    response = server.http.post(
        f"/api/domains/{domain}/webhooks", json={"url": url, "events": ["version"]}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def measure(db: str, runs: int, duration: int, backlog: int) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        # The receiver is on loopback: an address webhooks may call only when the
        # operator says so.
        server = Server(db, data_dir, env={"BOTLNEK_WEBHOOK_ALLOWED_HOSTS": "loopback"})
        receiver = Receiver()
        try:
            return {
                "db": db,
                "rate": _rate(server, receiver, backlog),
                **_latency(server, receiver, duration * 4),
                **_ingest(server, receiver, runs, duration),
            }
        finally:
            receiver.stop()
            server.stop()


def _rate(server: Server, receiver: Receiver, backlog: int) -> float:
    """Deliveries per second to one webhook, working through a backlog."""
    webhook = _hook(server, "bench", f"{receiver.url}/rate")
    batches(server, "rate", backlog // 1000, "rate")
    receiver.wait("/rate", 1)
    first = min(at for (path, _), at in receiver.arrived.items() if path == "/rate")
    receiver.wait("/rate", backlog)
    last = max(at for (path, _), at in receiver.arrived.items() if path == "/rate")
    server.http.delete(f"/api/domains/bench/webhooks/{webhook}")  # done with it
    return (backlog - 1) / (last - first)


def _latency(server: Server, receiver: Receiver, seconds: int) -> dict:
    """Commit → delivery at 50 versions/s: from each post's answer to arrival."""
    server.http.post("/api/domains", json={"key": "paced"})
    _hook(server, "paced", f"{receiver.url}/paced")
    answered: dict[int, float] = {}
    for n in range(seconds * 50):
        due = time.monotonic() + 0.02
        response = server.http.post(
            "/api/sources",
            json={
                "domain": "paced",
                "aggregate": f"a{n % 10}",
                "collection": "A",
                "keys": {"n": str(n)},
            },
        )
        answered[response.json()["position"]] = time.monotonic()
        time.sleep(max(0, due - time.monotonic()))
    receiver.wait("/paced", len(answered))
    delays = sorted(
        (receiver.arrived["/paced", position] - at) * 1000
        for position, at in answered.items()
    )
    return {
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
        "paced": len(delays),
    }


def _ingest(server: Server, receiver: Receiver, runs: int, duration: int) -> dict:
    """Single posts (wrk) into a domain with 10 webhooks, and into one with none."""
    server.http.post("/api/domains", json={"key": "hooked"})
    for n in range(10):
        _hook(server, "hooked", f"{receiver.url}/hooked-{n}")
    plain, hooked, delivered, catch_up = [], [], [], []
    for r in range(runs):
        plain.append(wrk(server, "/api/sources", duration, f"p{r}", "p", "bench")[0])
        hooked.append(wrk(server, "/api/sources", duration, f"h{r}", "h", "hooked")[0])
        # Deliveries yield to posts (the worker is niced): some are still to go.
        # They would otherwise go out during the next plain run and slow it down:
        # the comparison would flatter itself.
        posted = round(hooked[-1] * duration) * 10
        behind = _lag(server, "hooked")
        delivered.append(1 - behind / posted)
        catch_up.append(_drain(server, "hooked"))
    return {
        "plain": statistics.median(plain),
        "hooked": statistics.median(hooked),
        "delivered": statistics.median(delivered),
        "catch_up": statistics.median(catch_up),
    }


def _lag(server: Server, domain: str) -> int:
    """Events the webhooks of `domain` have still to deliver, all together."""
    hooks = server.http.get(f"/api/domains/{domain}/webhooks").json()["webhooks"]
    return sum(hook["lag"] for hook in hooks)


def _drain(server: Server, domain: str, timeout: float = 600) -> float:
    """Wait until every webhook of `domain` has delivered everything; answer how
    many seconds that took."""
    started = time.monotonic()
    while _lag(server, domain):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"webhooks of {domain} still behind after {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - started


def table(results: list[dict]) -> list[str]:
    lines = [
        "| database | deliveries/s, one webhook | commit → delivery p50 / p99 at"
        " 50/s | single posts, no webhooks | with 10 | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['db']} | {r['rate']:,.0f} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f}"
            f" ms | {r['plain']:,.0f} req/s | {r['hooked']:,.0f} req/s | "
            f"{r['hooked'] / r['plain']:.2f}× |"
        )
    lines += [
        "",
        "Deliveries during the runs with 10 webhooks (they yield to posts):",
        "",
        "| database | delivered by the end of a run | the rest caught up in |",
        "|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['db']} | {r['delivered']:.0%} | {r['catch_up']:.0f} s |")
    return lines
