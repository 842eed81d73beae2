"""A bounded soak: writers and 200+ subscribers with random disconnects on two server
processes (PostgreSQL + Redis). Memory stays flat; every subscriber's sequence equals
the database's. BOTLNEK_SOAK_SECONDS sets the writing time (default 90); the memory
report goes to test-artifacts/soak.md."""

import asyncio
import os
import random
import statistics
import threading
import time

import httpx
import pytest

from aggregates.models import Version
from tests.toolkit import ROOT, Follower

SECONDS = float(os.environ.get("BOTLNEK_SOAK_SECONDS", "90"))
SUBSCRIBERS = 240
WRITERS = 4
VERSIONS_PER_SECOND = 10
REPORT = ROOT / "test-artifacts" / "soak.md"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Run:
    def __init__(self, servers, token):
        self.servers = servers
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stop_writing = threading.Event()
        self.written = 0
        self.lock = threading.Lock()
        self.samples: list[tuple[float, list[float]]] = []

    def write(self, n: int) -> None:
        rng = random.Random(n)
        pause = WRITERS / VERSIONS_PER_SECOND
        with httpx.Client(timeout=30, headers=self.headers) as http:
            i = 0
            while not self.stop_writing.is_set():
                source = {
                    "domain": "c-inputs",
                    "aggregate": f"day-{rng.randrange(40)}",
                    "collection": rng.choice("AB"),
                    "keys": {"writer": str(n), "i": str(i)},
                    "attrs": {"path": f"s3://bucket/{n}/{i}", "rows": i},
                }
                server = self.servers[i % len(self.servers)]
                response = http.post(f"{server.url}/api/sources", json=source)
                assert response.status_code == 201, response.text
                with self.lock:
                    self.written += 1
                i += 1
                time.sleep(pause * rng.uniform(0.5, 1.5))

    def sample_memory(self, started: float) -> None:
        while not self.stop_writing.wait(2):
            pids = [server.process.pid for server in self.servers]
            self.samples.append((time.monotonic() - started, list(map(rss_mib, pids))))

    def follower(self, n: int) -> Follower:
        """Follows the domain, dropping the connection at random and resuming on a
        random server; half in full mode, half in delta."""
        return Follower(
            self.servers,
            self.token,
            mode="delta" if n % 2 else "full",
            rng=random.Random(1000 + n),
            hop_every=(10, 400),
            pause=(0, 0.5),
            deadline=SECONDS + 120,
        )


@pytest.mark.postgres
def test_soak_memory_stays_flat_and_every_subscriber_has_everything(
    start_server, token, redis_url
):
    REPORT.unlink(missing_ok=True)  # never show an older run's report
    servers = [start_server(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    run = Run(servers, token)

    async def scenario():
        total = asyncio.get_running_loop().create_future()

        def everything(seen: list[int]) -> bool:
            return total.done() and len(seen) >= total.result()

        followers = [run.follower(n) for n in range(SUBSCRIBERS)]
        subscribers = [
            asyncio.ensure_future(follower.follow(everything)) for follower in followers
        ]
        started = time.monotonic()
        threads = [threading.Thread(target=run.write, args=(n,)) for n in range(4)]
        threads.append(threading.Thread(target=run.sample_memory, args=(started,)))
        for thread in threads:
            thread.start()
        await asyncio.sleep(SECONDS)
        run.stop_writing.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        total.set_result(run.written)
        return followers, await asyncio.gather(*subscribers)

    followers, results = asyncio.run(scenario())
    frames = sum(len(seen) for seen in results)
    reconnects = sum(follower.reconnects for follower in followers)
    in_database = list(
        Version.objects.order_by("position").values_list("position", flat=True)
    )
    assert len(in_database) == run.written
    for seen in results:
        assert seen == in_database

    # Flat: the last third of the run uses no more memory than the middle third
    # (the first third is warm-up: caches, pools and buffers filling).
    third = len(run.samples) // 3
    middle = [sample for _, sample in run.samples[third : 2 * third]]
    last = [sample for _, sample in run.samples[2 * third :]]
    lines = [
        "# Soak: memory of the server processes",
        "",
        f"{SECONDS:g} s of writing at ~{VERSIONS_PER_SECOND}/s by {WRITERS} writers "
        f"through 2 daphne processes (PostgreSQL + Redis); {SUBSCRIBERS} subscribers "
        f"(half full, half delta) dropping their connection every 10-400 frames and "
        f"resuming on a random process: {run.written} versions, {frames} frames "
        f"received, {reconnects} reconnects, every sequence equal to the "
        "database's.",
        "",
        "| process | middle third median RSS (MiB) | last third median | growth |",
        "|---|---|---|---|",
    ]
    growths = []
    for index in range(len(servers)):
        before = statistics.median(sample[index] for sample in middle)
        after = statistics.median(sample[index] for sample in last)
        growths.append(after - before)
        lines.append(
            f"| {index + 1} | {before:.1f} | {after:.1f} | {after - before:+.1f} |"
        )
    lines += ["", "Samples (seconds: MiB per process):", ""]
    lines += [
        f"- {at:5.1f}: {', '.join(f'{m:.1f}' for m in mib)}" for at, mib in run.samples
    ]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    for growth in growths:
        assert growth < 10, REPORT.read_text()
