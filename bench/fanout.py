"""Fan-out benchmark: one server process, many websocket subscribers.

For each scenario (subscribers x versions/s), layer (in-memory, Redis) and mode
(delta, full) it starts a fresh server, connects the subscribers, posts at the given
rate, and measures for every delivery the time from just before the POST to its
receipt. Writes its table to $TMPDIR/botlnek-bench-fanout.md
(the published figures come from `python -m bench`: bench/results.md).

    python bench/fanout.py [--duration 5] [--runs 1] [--layers memory redis]
        [--modes delta full]
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import URL, Server, versions

SCENARIOS = [(100, 50), (1000, 5)]


async def subscriber(headers, mode, received, ready):
    try:
        await _subscriber(headers, mode, received, ready)
    except (OSError, websockets.WebSocketException) as exc:
        print(f"subscriber failed: {exc!r}", file=sys.stderr)
        ready.release()


async def _subscriber(headers, mode, received, ready):
    async with websockets.connect(
        URL.replace("http", "ws") + "/ws/subscribe",
        additional_headers=headers,
        max_size=None,
        open_timeout=60,
    ) as ws:
        await ws.send(
            json.dumps(
                {"type": "subscribe", "id": "s", "domain": "bench", "mode": mode}
            )
        )
        await ws.recv()  # subscribed
        ready.release()
        while True:
            text = await ws.recv()
            now = time.time()
            # Only the position is needed; skip parsing the whole frame.
            start = text.index('"position": ') + 12
            received.append((int(text[start : text.index(",", start)]), now))


def poster(server, rate, duration, sent):
    client = httpx.Client(base_url=URL, headers=server.headers)
    interval = 1 / rate
    started = time.time()
    for n in range(int(rate * duration)):
        delay = started + n * interval - time.time()
        if delay > 0:
            time.sleep(delay)
        before = time.time()
        response = client.post(
            "/api/sources",
            json={
                "domain": "bench",
                "aggregate": f"agg-{n % 20}",
                "collection": "AB"[n % 2],
                "keys": {"n": str(n)},
                "attrs": {"path": f"s3://bench/{n}"},
            },
        )
        sent[response.json()["position"]] = before
    client.close()


async def scenario(layer, mode, subscribers, rate, duration):
    with tempfile.TemporaryDirectory() as data_dir:
        redis = "redis://127.0.0.1:6379/0" if layer == "redis" else None
        server = Server("sqlite", data_dir, redis)
        try:
            ready = asyncio.Semaphore(0)
            inboxes = [[] for _ in range(subscribers)]
            tasks = []
            for inbox in inboxes:
                tasks.append(
                    asyncio.ensure_future(
                        subscriber(server.headers, mode, inbox, ready)
                    )
                )
                await asyncio.sleep(0.002)
            for _ in range(subscribers):
                await asyncio.wait_for(ready.acquire(), 120)
            sent: dict[int, float] = {}
            thread = threading.Thread(
                target=poster, args=(server, rate, duration, sent)
            )
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.1)
            # Stragglers: wait for every delivery, or 3 s.
            deadline = time.time() + 3
            expected = len(sent) * subscribers
            while time.time() < deadline and sum(map(len, inboxes)) < expected:
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            latencies = [
                (at - sent[position]) * 1000
                for inbox in inboxes
                for position, at in inbox
                if position in sent
            ]
            return {
                "layer": layer,
                "mode": mode,
                "subscribers": subscribers,
                "rate": rate,
                "delivered": len(latencies) / expected if expected else 0,
                "p50": statistics.median(latencies) if latencies else float("nan"),
                "p99": statistics.quantiles(latencies, n=100)[98]
                if len(latencies) > 1
                else float("nan"),
            }
        finally:
            server.stop()


def measure(layer, mode, subscribers, rate, duration, runs=1) -> dict:
    """The scenario `runs` times, each on a fresh server: the median latencies and
    the lowest share delivered (the target is 100% in every run)."""
    rows = [
        asyncio.run(scenario(layer, mode, subscribers, rate, duration))
        for _ in range(runs)
    ]
    return {
        **rows[0],
        "delivered": min(r["delivered"] for r in rows),
        "p50": statistics.median(r["p50"] for r in rows),
        "p99": statistics.median(r["p99"] for r in rows),
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| layer | mode | subscribers × versions/s | delivered | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['mode']} | {r['subscribers']} × {r['rate']} | "
            f"{r['delivered']:.1%} | {r['p50']:.0f} | {r['p99']:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--layers", nargs="+", default=["memory", "redis"])
    parser.add_argument("--modes", nargs="+", default=["delta", "full"])
    parser.add_argument(
        "--out", default=str(Path(tempfile.gettempdir()) / "botlnek-bench-fanout.md")
    )
    args = parser.parse_args()
    rows = []
    for layer in args.layers:
        for mode in args.modes:
            for subscribers, rate in SCENARIOS:
                print(
                    f"{layer} {mode} {subscribers}×{rate}/s …",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(
                    measure(layer, mode, subscribers, rate, args.duration, args.runs)
                )
    runs = f"the median of {args.runs} runs of " if args.runs > 1 else ""
    lines = [
        "# Fan-out benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {versions()}. One daphne process on "
        f"SQLite; all subscribers in one client process on the same machine; "
        f"{runs}{args.duration} s of posting per row; latency from just before the "
        "POST to receipt. Produced by `python bench/fanout.py`.",
        "",
        *table(rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
