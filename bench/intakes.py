"""Intakes benchmark: events through an intake against plain sources, on one
server — single CloudEvents in binary mode from 16 writers (wrk, bench/intake.lua)
against single posts to /api/sources (bench/post.lua), and batches of 1,000
CloudEvents (batch mode) against batches of 1,000 sources — and, in this process,
what reading an event and rendering its templates cost."""

import json
import statistics
import tempfile
import time

from bench.ingest import Server, batches, wrk
from bench.reads import setup_django

INTAKE = {
    "name": "bench-a",
    "aggregate": "{{ data.partition }}",
    "collection": "{{ data.pipeline }}",
    "attrs": {"path": "{{ data.path }}"},
}
EVENTS = "/api/domains/bench/intakes/bench-a/events"
BATCH = "application/cloudevents-batch+json"


def measure(db: str, runs: int, duration: int) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(db, data_dir)
        try:
            created = server.http.post("/api/domains/bench/intakes", json=INTAKE)
            assert created.status_code == 201, created.text
            warm = min(2, duration)
            wrk(server, "/api/sources", warm, "warm", "warm")
            wrk(server, EVENTS, warm, "warm", "warm-e", script="intake.lua")
            rounds: dict[str, list] = {}
            # Interleaved, so that a noisy machine's drift lands on every row alike.
            for r in range(runs):
                rounds.setdefault("sources", []).append(
                    wrk(server, "/api/sources", duration, f"s{r}", f"s{r}")
                )
                rounds.setdefault("events", []).append(
                    wrk(
                        server,
                        EVENTS,
                        duration,
                        f"e{r}",
                        f"e{r}",
                        script="intake.lua",
                    )
                )
                rounds.setdefault("source_batches", []).append(
                    batches(server, f"batch-{r}", 10, f"b{r}")
                )
                rounds.setdefault("event_batches", []).append(
                    event_batches(server, f"ebatch-{r}", 10, f"eb{r}")
                )
            counted = server.http.get("/api/domains/bench/intakes/bench-a").json()
            assert counted["refused"] == 0, counted["last_refusal"]
            result = {
                "db": db,
                **{
                    name: tuple(map(statistics.median, zip(*rows, strict=True)))
                    for name, rows in rounds.items()
                    if name in ("sources", "events")
                },
                **{
                    name: statistics.median(rows)
                    for name, rows in rounds.items()
                    if name.endswith("batches")
                },
            }
            return result
        finally:
            server.stop()


def event_batches(
    server: Server, aggregate: str, count: int, run: str, size: int = 1000
) -> float:
    """Post `count` CloudEvents batches of `size` new events; answer events per
    second."""
    bodies = [
        json.dumps(
            [
                {
                    "specversion": "1.0",
                    "id": f"{run}-{b}-{i}",
                    "source": "//bench/pipeline",
                    "type": "com.example.pipeline.finished",
                    "data": {
                        "partition": aggregate,
                        "pipeline": "AB"[i % 2],
                        "path": f"s3://bench/{b}/{i}",
                    },
                }
                for i in range(size)
            ]
        )
        for b in range(count)
    ]
    headers = {"Content-Type": BATCH}
    started = time.perf_counter()
    for body in bodies:
        response = server.http.post(EVENTS, content=body, headers=headers)
        assert response.status_code == 200, response.text
        statuses = {result["status"] for result in response.json()["results"]}
        assert statuses == {201}, statuses
    return count * size / (time.perf_counter() - started)


def rendering(events: int, runs: int) -> dict:
    """Microseconds per event, in this process: reading a binary-mode CloudEvent
    (the SDK's parsing and checks), and mapping it to a source (the templates)."""
    setup_django()
    from aggregates.intakes import events as reading
    from aggregates.intakes.definition import IntakeIn, Mapping

    mapping = Mapping.of("bench", IntakeIn(**INTAKE).fields())
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//bench/pipeline",
        "ce-type": "com.example.pipeline.finished",
    }
    body = b'{"partition": "2026-12-01", "pipeline": "A", "path": "s3://bench/1"}'
    read_us, map_us = [], []
    for _ in range(runs):
        started = time.perf_counter()
        read = [reading.read("application/json", headers, body) for _ in range(events)]
        middle = time.perf_counter()
        visible = reading.visible_headers(headers)
        for one in read:
            mapping.sources(one, visible)
        ended = time.perf_counter()
        read_us.append((middle - started) / events * 1e6)
        map_us.append((ended - middle) / events * 1e6)
    return {"read_us": statistics.median(read_us), "map_us": statistics.median(map_us)}


def table(results: list[dict], costs: list[dict]) -> list[str]:
    lines = [
        "| database | single posts to /api/sources | single events to an intake "
        "| ratio | p99/p50 events | batches of 1,000 sources | batches of 1,000 "
        "CloudEvents | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (plain, _, _), (events, p50, p99) = r["sources"], r["events"]
        lines.append(
            f"| {r['db']} | {plain:,.0f} req/s | {events:,.0f} req/s | "
            f"{events / plain:.2f}× | {p99 / p50:.1f} | "
            f"{r['source_batches']:,.0f} sources/s | "
            f"{r['event_batches']:,.0f} events/s | "
            f"{r['event_batches'] / r['source_batches']:.2f}× |"
        )
    for cost in costs:
        lines += [
            "",
            f"Per event, in one process: reading a binary-mode CloudEvent (the "
            f"SDK's parsing and checks) {cost['read_us']:.0f} µs; rendering the "
            f"intake's three templates and checking the source "
            f"{cost['map_us']:.0f} µs.",
        ]
    return lines
