"""Read benchmarks: what serving a big aggregate costs, against a small one.

- frames(): the size of one version frame in full and in delta mode, and the time
  to build it on the hub's code path (read the new version, build its frame, render
  its text), in this process, for aggregates of 10 to 100,000 sources;
- dashboard(): the time of the dashboard's aggregate page at 100,000 versions
  against 10 versions, served by a real server;
- api_read(): the time and size of GET /api/domains/{d}/aggregates/{a} at 10,000
  sources against 10.

Each figure is a median of several runs; ratios come from the same run.

    python bench/reads.py [--runs 5] [--requests 20] [--quick]
"""

import argparse
import asyncio
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import URL, Server, batches

FRAME_SIZES = [10, 1_000, 10_000, 100_000]
BATCH = 1000

# Frames, in process


_django_ready = False


def setup_django() -> None:
    """Django in this process, on its own SQLite database in a temporary directory
    (once per process: settings cannot be loaded twice)."""
    global _django_ready
    if _django_ready:
        return
    import django
    from django.core.management import call_command

    data_dir = tempfile.mkdtemp(prefix="botlnek-bench-")
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    # Read by the settings module during setup only; servers started later by this
    # process set their own.
    os.environ["BOTLNEK_DATA_DIR"] = data_dir
    os.environ["BOTLNEK_DEBUG"] = "0"
    os.environ.pop("BOTLNEK_DATABASE_URL", None)
    os.environ.pop("BOTLNEK_REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botlnek_site.settings")
    django.setup()
    call_command("migrate", verbosity=0)
    _django_ready = True


def _fill_in_process(domain: str, aggregate: str, size: int) -> int:
    """Register `size` sources through the write path; answer the last position."""
    from aggregates import store

    last = 0
    for start in range(0, size, BATCH):
        registered = store.register_sources(
            [
                store.NewSource(
                    domain=domain,
                    aggregate=aggregate,
                    collection="AB"[i % 2],
                    keys={"i": str(i)},
                    attrs={"path": f"s3://bench/{aggregate}/{i}"},
                )
                for i in range(start, min(start + BATCH, size))
            ]
        )
        last = registered[-1].position
    return last


async def _build(domain: str, position: int, mode: str) -> tuple[float, str]:
    """One frame as the hub builds it after a poke: seconds taken, and its text."""
    from aggregates import db, store
    from aggregates.streams import Frame

    started = time.perf_counter()
    _, rows = await db.read(
        store.live_frames, domain, after_position=position - 1, limit=1
    )
    text = await Frame(rows[0]).text(mode, "s1")
    return time.perf_counter() - started, text


async def _time_frames(domain: str, last: dict[int, int], runs: int) -> list[dict]:
    for position in last.values():  # warm up: first queries, first imports
        for mode in ("delta", "full"):
            await _build(domain, position, mode)
    seconds: dict[tuple[int, str], list[float]] = {}
    texts: dict[tuple[int, str], str] = {}
    # Rounds interleave the sizes, so drift in the machine's speed hits all alike.
    for _ in range(runs):
        for size, position in last.items():
            for mode in ("delta", "full"):
                took, texts[size, mode] = await _build(domain, position, mode)
                seconds.setdefault((size, mode), []).append(took)
    return [
        {
            "sources": size,
            **{
                f"{mode}_{figure}": value
                for mode in ("delta", "full")
                for figure, value in (
                    ("bytes", len(texts[size, mode].encode())),
                    ("ms", statistics.median(seconds[size, mode]) * 1000),
                )
            },
        }
        for size in last
    ]


def frames(sizes: list[int] = FRAME_SIZES, runs: int = 5) -> list[dict]:
    """Per aggregate size: bytes and build time (median ms) of the frame of its
    latest version, in delta and in full mode."""
    setup_django()
    from aggregates import store

    domain = f"frames-{time.time_ns()}"  # a second call in this process starts afresh
    store.create_domain(domain, {})
    last = {size: _fill_in_process(domain, f"size-{size}", size) for size in sizes}
    return asyncio.run(_time_frames(domain, last, runs))


def frames_table(rows: list[dict]) -> list[str]:
    lines = [
        "| sources | delta frame | delta build ms | full frame | full build ms |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sources']:,} | {r['delta_bytes']:,} B | {r['delta_ms']:.2f} | "
            f"{r['full_bytes']:,} B | {r['full_ms']:.1f} |"
        )
    small, big = rows[0], rows[-1]
    lines += [
        "",
        f"Delta build time at {big['sources']:,} sources: "
        f"{big['delta_ms'] / small['delta_ms']:.2f}× that at {small['sources']:,} "
        "(flat is the aim); full build time: "
        f"{big['full_ms'] / small['full_ms']:.0f}× (it carries the whole state).",
    ]
    return lines


# Dashboard and API, from a real server


class ReadServer:
    """A server (SQLite, public dashboard) holding aggregates filled through the API
    in batches of 1,000, one aggregate per size, filled when first asked for."""

    def __init__(self, server: Server):
        self.server = server
        self.browser = httpx.Client(base_url=URL, timeout=60)  # no token, no login
        self.sizes: set[int] = set()

    def aggregate(self, size: int) -> str:
        key = f"size-{size}"
        if size not in self.sizes:
            if size > BATCH and size % BATCH:
                raise ValueError(f"{size} is not a multiple of {BATCH}")
            batch = min(size, BATCH)
            batches(self.server, key, size // batch, "fill", size=batch)
            self.sizes.add(size)
        return key


@contextmanager
def read_server() -> Iterator[ReadServer]:
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server("sqlite", data_dir, env={"BOTLNEK_PUBLIC_DASHBOARD": "1"})
        reads = ReadServer(server)
        try:
            yield reads
        finally:
            reads.browser.close()
            server.stop()


def _time_gets(
    client: httpx.Client, paths: dict[int, str], requests: int
) -> dict[int, tuple[float, int]]:
    """Per path: median ms and body bytes, the requests interleaved across paths."""
    for path in paths.values():
        for _ in range(3):  # warm up
            client.get(path)
    seconds: dict[int, list[float]] = {size: [] for size in paths}
    body: dict[int, int] = {}
    for _ in range(requests):
        for size, path in paths.items():
            started = time.perf_counter()
            response = client.get(path)
            seconds[size].append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path}: {response.status_code}")
            body[size] = len(response.content)
    return {
        size: (statistics.median(seconds[size]) * 1000, body[size]) for size in paths
    }


def dashboard(
    reads: ReadServer | None = None,
    *,
    small: int = 10,
    big: int = 100_000,
    requests: int = 20,
) -> dict:
    """GET /d/bench/<aggregate>/ of a `big`-version aggregate against a `small` one."""
    if reads is None:
        with read_server() as reads:
            return dashboard(reads, small=small, big=big, requests=requests)
    paths = {n: f"/d/bench/{reads.aggregate(n)}/" for n in (small, big)}
    timed = _time_gets(reads.browser, paths, requests)
    return _compare(timed, small, big)


def api_read(
    reads: ReadServer | None = None,
    *,
    small: int = 10,
    big: int = 10_000,
    requests: int = 20,
) -> dict:
    """GET /api/domains/bench/aggregates/<aggregate> at `big` sources against
    `small`."""
    if reads is None:
        with read_server() as reads:
            return api_read(reads, small=small, big=big, requests=requests)
    paths = {
        n: f"/api/domains/bench/aggregates/{reads.aggregate(n)}" for n in (small, big)
    }
    timed = _time_gets(reads.server.http, paths, requests)
    return _compare(timed, small, big)


def _compare(timed: dict[int, tuple[float, int]], small: int, big: int) -> dict:
    (small_ms, small_bytes), (big_ms, big_bytes) = timed[small], timed[big]
    return {
        "small": small,
        "big": big,
        "small_ms": small_ms,
        "big_ms": big_ms,
        "small_bytes": small_bytes,
        "big_bytes": big_bytes,
        "ratio": big_ms / small_ms,
        # Time per source, big against small: below 1 when a fixed cost dominates.
        "per_source_ratio": (big_ms / big) / (small_ms / small),
    }


def pages(
    dashboard_big: int = 100_000, api_big: int = 10_000, requests: int = 20
) -> dict:
    """dashboard() and api_read() on one server, filled once."""
    with read_server() as reads:
        return {
            "dashboard": dashboard(reads, big=dashboard_big, requests=requests),
            "api": api_read(reads, big=api_big, requests=requests),
        }


def pages_table(figures: dict) -> list[str]:
    lines = [
        "| what | sources | median ms | bytes | µs per source | time vs small |"
        " time per source vs small |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("dashboard page `/d/bench/<aggregate>/`", "dashboard"),
        ("API `GET /api/domains/bench/aggregates/<aggregate>`", "api"),
    ):
        r = figures[key]
        for size in ("small", "big"):
            ms = r[f"{size}_ms"]
            ratios = (
                f"{r['ratio']:.2f}× | {r['per_source_ratio']:.3f}×"
                if size == "big"
                else " | "
            )
            lines.append(
                f"| {name} | {r[size]:,} | {ms:.1f} | {r[f'{size}_bytes']:,} | "
                f"{ms * 1000 / r[size]:,.1f} | {ratios} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="frame builds per size")
    parser.add_argument("--requests", type=int, default=20, help="timed GETs each")
    parser.add_argument(
        "--quick", action="store_true", help="aggregates of at most 1,000 sources"
    )
    args = parser.parse_args()
    sizes = [10, 1_000] if args.quick else FRAME_SIZES
    print("frames …", file=sys.stderr, flush=True)
    frame_rows = frames(sizes, args.runs)
    print("dashboard and API …", file=sys.stderr, flush=True)
    big = {"dashboard_big": 1_000, "api_big": 1_000} if args.quick else {}
    figures = pages(requests=args.requests, **big)
    lines = [
        "## Frames: size and build time by aggregate size",
        "",
        *frames_table(frame_rows),
        "",
        "## Dashboard page and API read",
        "",
        *pages_table(figures),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
