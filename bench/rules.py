"""Rules benchmark: what 20 rules (and 20 rules across keys) cost single-post
ingest, how soon the clock
records a deadline with 100,000 aggregates waiting, and the why endpoint and the
preview at that size. Servers are started as a user would (bench/ingest.py)."""

import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench.ingest import POSTGRES_URL, Server, wrk

# 20 rules of the kinds users write: both triggers, prefixes, deadlines, age().
# The last fires at every version: its seq tells how far the engine got.
RULES = [
    *(
        {
            "name": f"ready-{n}",
            "when": "A >= 2 and B >= 1",
            "deadline": {"after": "1h", "from": "first_source"},
        }
        for n in range(5)
    ),
    *({"name": f"each-{n}", "when": "A >= 1", "trigger": "every"} for n in range(5)),
    *({"name": f"fresh-{n}", "when": "age(A) < 1h and B >= 1"} for n in range(5)),
    *(
        {
            "name": f"dated-{n}",
            "when": "B >= 2",
            "deadline": {"after": "30h", "from": "key_date"},
            "on_deadline": "fire",
        }
        for n in range(4)
    ),
    {"name": "probe", "when": "A >= 0", "trigger": "every"},
]


# 20 rules across keys (SPEC's pipeline C and its kin), and the probe. Posts go
# into DAY, whose neighbours hold sources already: each post re-evaluates the days
# whose windows cover DAY.
DAY = "2026-11-26"
NEIGHBOURS = [f"2026-11-{day}" for day in range(23, 30)]
WINDOW_RULES = [
    *(
        {
            "name": f"c-{n}",
            "when": "A@-2d..0d >= 1 and B >= 1",
            "fallback": "A@-2d..0d >= 1 and B@-1d >= 1",
            "deadline": {"after": "20h", "from": "key_date"},
        }
        for n in range(8)
    ),
    # Never true: evaluated at every version, its window counts kept up to date.
    *(
        {"name": f"never-{n}", "when": "count(A@-2d..0d) >= 1000000 and B@-1d..0d"}
        for n in range(6)
    ),
    # Fires at each version of DAY: an event, with its inputs, each time.
    *(
        {"name": f"each-{n}", "when": "B and A@-1d..0d", "trigger": "every"}
        for n in range(5)
    ),
    {"name": "probe", "when": "A >= 0", "trigger": "every"},
]


def _create(server: Server, domain: str, rules: list[dict]) -> None:
    response = server.http.post("/api/domains", json={"key": domain})
    assert response.status_code in (200, 201), response.text
    for rule in rules:
        response = server.http.post(f"/api/domains/{domain}/rules", json=rule)
        assert response.status_code == 201, response.text


def _caught_up(server: Server, domain: str, timeout: float = 120) -> float:
    """Seconds until the engine has evaluated every version of the domain."""
    started = time.monotonic()
    latest = server.http.get(f"/api/domains/{domain}").json()["latest_position"]
    while time.monotonic() - started < timeout:
        seq = server.http.get(f"/api/domains/{domain}/rules/probe").json()["latest_seq"]
        if seq >= latest:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"the rules engine did not catch up with {domain}")


def ingest(db: str, runs: int, duration: int) -> dict:
    """Single posts (wrk, 16 writers) into a domain without rules and one with 20,
    interleaved; and how long after each ruled run the engine was done."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(db, data_dir)
        try:
            _create(server, "ruled", RULES)
            _create(server, "windows", WINDOW_RULES)
            neighbours = [
                {"domain": "windows", "aggregate": day, "collection": collection}
                for day in NEIGHBOURS
                for collection in "AB"
            ]
            assert server.http.post("/api/sources", json=neighbours).is_success
            for domain in ("bench", "ruled", "windows"):
                wrk(server, "/api/sources", min(2, duration), "warm", "w", domain)
            plain, ruled, windowed, lag, window_lag = [], [], [], [], []
            for r in range(runs):
                plain.append(
                    wrk(server, "/api/sources", duration, f"p{r}", "p", "bench")
                )
                ruled.append(
                    wrk(server, "/api/sources", duration, f"r{r}", "r", "ruled")
                )
                lag.append(_caught_up(server, "ruled"))
                windowed.append(
                    wrk(server, "/api/sources", duration, DAY, f"w{r}", "windows")
                )
                # Reported, not a failure: how far behind rules across keys fall.
                window_lag.append(_caught_up(server, "windows", timeout=900))
            median = statistics.median
            return {
                "db": db,
                "plain": median(rate for rate, _, _ in plain),
                "ruled": median(rate for rate, _, _ in ruled),
                "ruled_p99": median(p99 for _, _, p99 in ruled),
                "lag": median(lag),
                "windowed": median(rate for rate, _, _ in windowed),
                "windowed_p99": median(p99 for _, _, p99 in windowed),
                "window_lag": median(window_lag),
            }
        finally:
            server.stop()


def waiting(db: str, size: int, requests: int) -> dict:
    """`size` aggregates waiting on a rule, then one more whose deadline passes in
    a few seconds: when is its `late` recorded? And why and preview at that size."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(db, data_dir)
        try:
            _create(server, "waiting", [])
            rule = {
                "name": "b-by-then",
                "when": "B >= 1",
                "deadline": {"after": "1s", "from": "key_date"},
            }
            assert server.http.post("/api/domains/waiting/rules", json=rule).is_success
            started = time.monotonic()
            for first in range(0, size, 1000):
                batch = [
                    {
                        "domain": "waiting",
                        "aggregate": f"2099-01-01-{n}",
                        "collection": "A",
                    }
                    for n in range(first, min(first + 1000, size))
                ]
                assert server.http.post("/api/sources", json=batch).is_success
                if db == "postgres" and first % 10_000 == 0:
                    _analyze()
            statuses = 0
            while statuses < size:  # the engine evaluating them, as they come
                counts = server.http.get("/api/domains/waiting/rules/b-by-then").json()
                statuses = counts["counts"]["waiting"]
                time.sleep(0.2)
            evaluated = time.monotonic() - started
            # One more, due 5 s from now (its key's date, plus the rule's 1 s).
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
            key = f"{due:%Y-%m-%dT%H:%M:%S}Z-probe"
            deadline = due + timedelta(seconds=1)
            probe = {"domain": "waiting", "aggregate": key, "collection": "A"}
            assert server.http.post("/api/sources", json=probe).is_success
            while True:
                events = server.http.get(
                    "/api/domains/waiting/rules/b-by-then/events"
                ).json()["events"]
                if events:
                    break
                time.sleep(0.05)
            recorded = datetime.fromisoformat(events[0]["at"].replace("Z", "+00:00"))
            why_ms = _times(
                server,
                "GET",
                f"/api/domains/waiting/rules/b-by-then/aggregates/{key}",
                requests,
            )
            preview_ms = _times(
                server,
                "POST",
                "/api/domains/waiting/rules/preview",
                requests,
                json={**rule, "name": "what-if", "when": "A >= 1"},
            )
            return {
                "db": db,
                "size": size,
                "evaluated_s": evaluated,
                "delay_s": (recorded - deadline).total_seconds(),
                "event": events[0]["event"],
                "why_ms": why_ms,
                "preview_ms": preview_ms,
            }
        finally:
            server.stop()


def expecting(db: str, years: int, requests: int) -> dict:
    """A daily rule expecting `years` of keys from the past (`start: history`),
    an A posted into every third day: how long until every day is evaluated
    (late at its deadline, then fired by the A its window covers),
    the why of one day and a page of its listing, and the server's CPU while
    idle afterwards (a clock that scanned the keys would show there)."""
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(db, data_dir)
        try:
            _create(server, "expecting", [])
            today = datetime.now(UTC).date()
            first = today - timedelta(days=365 * years)
            days = [first + timedelta(days=n) for n in range((today - first).days)]
            for start in range(0, len(days), 3000):
                batch = [
                    {"domain": "expecting", "aggregate": f"{day}", "collection": "A"}
                    for day in days[start : start + 3000 : 3]
                ]
                assert server.http.post("/api/sources", json=batch).is_success
            rule = {
                "name": "daily",
                "when": "A@-2d..0d >= 1 and B >= 1",
                "fallback": "A@-2d..0d >= 1",
                "deadline": {"after": "20h", "from": "key_date"},
                "expect": {"every": "1d", "key": "%Y-%m-%d", "from": f"{first}"},
                "start": "history",
            }
            started = time.monotonic()
            path = "/api/domains/expecting/rules"
            response = server.http.post(path, json=rule)
            assert response.status_code == 201, response.text
            created_ms = (time.monotonic() - started) * 1000
            expected = len(days) + 1  # today's key too
            while True:
                # Every day is late at its deadline (the As came later: now),
                # then fired by the A in its window; today may still wait.
                counts = server.http.get(f"{path}/daily").json()["counts"]
                if counts["fired"] >= expected - 1:
                    break
                if time.monotonic() - started > 900:
                    raise RuntimeError("the expected keys were not all evaluated")
                time.sleep(0.2)
            evaluated = time.monotonic() - started
            time.sleep(2)  # what is due now is recorded
            idle_cpu = _cpu_seconds(server, 10)
            day = days[len(days) // 2 + 1]  # a day nobody posted to
            why_ms = _times(server, "GET", f"{path}/daily/aggregates/{day}", requests)
            listing_ms = _times(
                server, "GET", f"{path}/daily/aggregates?limit=100", requests
            )
            return {
                "db": db,
                "keys": expected,
                "created_ms": created_ms,
                "evaluated_s": evaluated,
                "counts": counts,
                "idle_cpu_s": idle_cpu,
                "why_ms": why_ms,
                "listing_ms": listing_ms,
            }
        finally:
            server.stop()


def _analyze() -> None:
    """What PostgreSQL's autovacuum does as a table grows (this machine runs it
    off): fresh statistics, without which the write path's cached plans keep
    the seq scans they were made with on an empty table (operations.md)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute("ANALYZE")


def _cpu_seconds(server: Server, seconds: float) -> float:
    """The server process's CPU time over `seconds` of wall time."""

    def used() -> float:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().split(")")[-1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    before = used()
    time.sleep(seconds)
    return used() - before


def _times(server: Server, method: str, path: str, count: int, **kwargs) -> float:
    """Median milliseconds of `count` requests, after two to warm up."""
    took = []
    for n in range(count + 2):
        started = time.perf_counter()
        response = server.http.request(method, path, **kwargs)
        assert response.status_code == 200, response.text
        if n >= 2:
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def table(ingests: list[dict], waits: list[dict], expects: list[dict]) -> list[str]:
    lines = [
        "| database | rules | single posts, no rules | with the rules | ratio"
        " | p99 ms with rules | engine done after the run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ingests:
        lines.append(
            f"| {r['db']} | 20 | {r['plain']:,.0f} req/s | {r['ruled']:,.0f} req/s | "
            f"{r['ruled'] / r['plain']:.2f}× | {r['ruled_p99']:.0f} | "
            f"{r['lag']:.1f} s |"
        )
        if "windowed" in r:
            lines.append(
                f"| {r['db']} | 20 across keys | {r['plain']:,.0f} req/s | "
                f"{r['windowed']:,.0f} req/s | {r['windowed'] / r['plain']:.2f}× | "
                f"{r['windowed_p99']:.0f} | {r['window_lag']:.1f} s |"
            )
    lines += [
        "",
        "| database | aggregates waiting | evaluated in | deadline → recorded | why ms"
        " | preview ms (100 aggregates) |",
        "|---|---|---|---|---|---|",
    ]
    for r in waits:
        lines.append(
            f"| {r['db']} | {r['size']:,} | {r['evaluated_s']:.0f} s | "
            f"{r['delay_s']:.2f} s ({r['event']}) | {r['why_ms']:.1f} | "
            f"{r['preview_ms']:.1f} |"
        )
    lines += [
        "",
        "| database | expected keys | created in | all evaluated in | idle CPU (10 s)"
        " | why ms | listing ms (100) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in expects:
        lines.append(
            f"| {r['db']} | {r['keys']:,} | {r['created_ms']:.0f} ms | "
            f"{r['evaluated_s']:.0f} s | {r['idle_cpu_s']:.2f} s | "
            f"{r['why_ms']:.1f} | {r['listing_ms']:.1f} |"
        )
    return lines
