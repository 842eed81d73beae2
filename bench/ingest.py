"""Ingest benchmark: starts the server as a user would and measures, in one run,
single posts from 16 concurrent clients (wrk) next to a plain-Django anchor served by
the same daphne on the same database (bench/anchor: a bare JSON view, and a view
inserting the same JSON with the ORM), batch ingest, ingest into aggregates already
holding 10,000 and 100,000 sources, and on PostgreSQL one hot domain served by two
daphne processes against one. Writes its table to $TMPDIR/botlnek-bench-ingest.md
(the published figures come from `python -m bench`: bench/results.md).

    python bench/ingest.py [--db sqlite postgres] [--runs 3] [--duration 5]

Needs wrk (Debian: apt-get install wrk); PostgreSQL figures need the server at
$BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/botlnek_bench, which
this script drops and creates).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from aggregates import daphne_transport

ROOT = Path(__file__).resolve().parent.parent
PORT = 8765
URL = f"http://127.0.0.1:{PORT}"
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/botlnek_bench"
)


def manage(env: dict, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def fresh_postgres() -> None:
    import psycopg

    url = urlsplit(POSTGRES_URL)
    name = url.path.lstrip("/")
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def daphne(env: dict, port: int, data_dir: str):
    """A daphne process serving the site on `port`, and its log."""
    log = open(Path(data_dir) / f"daphne-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        daphne_transport.command("127.0.0.1", port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return log, process


class Server:
    """A server started as a user would: migrate, a token, daphne, a domain.

    Its settings add the plain-Django anchor (bench/anchor) to the product's.
    """

    def __init__(
        self,
        db: str,
        data_dir: str,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.env = {
            **os.environ,
            "BOTLNEK_DATA_DIR": data_dir,
            "BOTLNEK_DEBUG": "0",
            "DJANGO_SETTINGS_MODULE": "bench.anchor.settings",
        }
        self.env.pop("BOTLNEK_DATABASE_URL", None)
        self.env.pop("BOTLNEK_REDIS_URL", None)
        self.env.update(env or {})
        if redis_url:
            self.env["BOTLNEK_REDIS_URL"] = redis_url
        if db == "postgres":
            fresh_postgres()
            self.env["BOTLNEK_DATABASE_URL"] = POSTGRES_URL
        manage(self.env, "migrate", "-v0")
        self.token = manage(
            self.env, "token", "create", "--scope", "write", "--name", "bench"
        ).splitlines()[-1]
        self.data_dir = data_dir
        self.log, self.process = daphne(self.env, PORT, data_dir)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(base_url=URL, headers=self.headers, timeout=60)
        try:
            self.wait_until_up(URL, self.process, self.log)
            response = self.http.post("/api/domains", json={"key": "bench"})
            assert response.status_code == 201, response.text
        except BaseException:
            self.stop()  # never leave a daphne behind on the benchmarks' port
            raise

    def wait_until_up(self, url: str, process, log) -> None:
        for _ in range(200):
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited; see {log.name}")
            try:
                httpx.get(f"{url}/livez")
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not answer on {url}; see {log.name}")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def wrk(
    server: Server,
    path: str,
    duration: int,
    aggregate: str | None,
    run: str,
    domain: str = "bench",
    *,
    port: int = PORT,
    threads: int = 2,
    connections: int = 16,
    script: str = "post.lua",
):
    """wrk against `path`: GETs, or with `aggregate` POSTs of new sources
    (bench/post.lua, or another `script` of bench/). Answers (requests/s, p50 ms,
    p99 ms)."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    args.append(f"http://127.0.0.1:{port}{path}")
    env = {
        **os.environ,
        "BENCH_TOKEN": server.token,
        "BENCH_DOMAIN": domain,
        "BENCH_AGGREGATE": aggregate or "",
        "BENCH_RUN": run,
    }
    if aggregate:
        args[1:1] = ["-s", str(ROOT / "bench" / script)]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    text = out.stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad:
        raise RuntimeError(f"{bad.group(1)} failed requests:\n{text}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return rate, _ms(text, "50%"), _ms(text, "99%")


def processes(server: Server, duration: int, run: str) -> tuple[float, float]:
    """Single posts into one aggregate of one domain from two wrk processes of 8
    connections: both against one daphne, then one against each of two daphnes.
    Answers the two total rates."""

    def together(ports: list[int], label: str) -> float:
        with ThreadPoolExecutor(len(ports)) as pool:
            results = pool.map(
                lambda i: wrk(
                    server,
                    "/api/sources",
                    duration,
                    f"hot-{run}",
                    f"{run}-{label}-{i}",
                    port=ports[i],
                    threads=1,
                    connections=8,
                ),
                range(len(ports)),
            )
            return sum(rate for rate, _, _ in results)

    one = together([PORT, PORT], "one")
    log, second = daphne(server.env, PORT + 1, server.data_dir)
    try:
        server.wait_until_up(f"http://127.0.0.1:{PORT + 1}", second, log)
        two = together([PORT, PORT + 1], "two")
    finally:
        second.terminate()
        second.wait(timeout=20)
        log.close()
    return one, two


def _ms(text: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def batches(
    server: Server, aggregate: str, count: int, run: str, size: int = 1000
) -> float:
    """Post `count` batches of `size` new sources; answer sources per second."""
    bodies = [
        json.dumps(
            [
                {
                    "domain": "bench",
                    "aggregate": aggregate,
                    "collection": "AB"[i % 2],
                    "keys": {"run": run, "batch": str(b), "i": str(i)},
                    "attrs": {"path": f"s3://bench/{b}/{i}"},
                }
                for i in range(size)
            ]
        )
        for b in range(count)
    ]
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    for body in bodies:
        response = server.http.post("/api/sources", content=body, headers=headers)
        assert response.status_code == 200, response.text
    return count * size / (time.perf_counter() - started)


def median(rows):
    return tuple(statistics.median(column) for column in zip(*rows, strict=True))


def bench_db(db: str, runs: int, duration: int, sizes: list[int]) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(db, data_dir)
        try:
            warm = min(2, duration)
            wrk(server, "/livez", warm, None, "warm")
            wrk(server, "/anchor/insert", warm, "warm", "warm")
            wrk(server, "/api/sources", warm, "warm", "warm")
            result = {"db": db}
            for size in sizes:
                batches(server, f"big-{size}", size // 1000, "fill")
            # Rounds interleave the figures, so that drift in a noisy machine's
            # speed lands on all of them alike rather than on whichever ran last.
            rounds: dict[str, list] = {}
            for r in range(runs):
                rounds.setdefault("livez", []).append(
                    wrk(server, "/livez", duration, None, "")
                )
                rounds.setdefault("healthz", []).append(
                    wrk(server, "/healthz", duration, None, "")
                )
                rounds.setdefault("django", []).append(
                    wrk(server, "/anchor/hello", duration, None, "")
                )
                rounds.setdefault("orm", []).append(
                    wrk(server, "/anchor/insert", duration, f"orm-{r}", f"o{r}")
                )
                rounds.setdefault("fresh", []).append(
                    wrk(server, "/api/sources", duration, f"fresh-{r}", f"f{r}")
                )
                for size in sizes:
                    rounds.setdefault(f"big-{size}", []).append(
                        wrk(server, "/api/sources", duration, f"big-{size}", f"g{r}")
                    )
                rounds.setdefault("batch", []).append(
                    batches(server, f"batch-{r}", 10, f"b{r}")
                )
                if db == "postgres":
                    rounds.setdefault("processes", []).append(
                        processes(server, duration, f"p{r}")
                    )
            for name, rows in rounds.items():
                result[name] = (
                    statistics.median(rows) if name == "batch" else median(rows)
                )
            return result
        finally:
            server.stop()


def versions() -> str:
    from importlib.metadata import version

    names = ["django", "channels", "daphne", "django-ninja", "psycopg"]
    return ", ".join(f"{n} {version(n)}" for n in names)


def report(results: list[dict], runs: int, duration: int, sizes: list[int]) -> str:
    lines = [
        "# Ingest benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {versions()}. One daphne process, "
        f"`BOTLNEK_DEBUG=0`; wrk -t2 -c16 on the same machine; each figure is the "
        f"median of {runs} runs of {duration} s. Produced by `python bench/ingest.py`.",
        "",
        *table(results, sizes),
    ]
    return "\n".join(lines) + "\n"


def table(results: list[dict], sizes: list[int]) -> list[str]:
    """The figures of bench_db() runs as a markdown table, then the ratios."""
    lines = [
        "| database | what | rate | p50 ms | p99 ms | vs Django view |"
        " vs ORM insert | p99/p50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        view, orm = r["django"][0], r["orm"][0]
        rows = [
            ("plain Django: JSON view", r["django"]),
            ("plain Django: ORM insert", r["orm"]),
            ("our bare `/livez`", r["livez"]),
            ("our `/healthz`", r["healthz"]),
            ("single posts, fresh aggregate", r["fresh"]),
        ]
        rows += [
            (f"single posts, aggregate of {s:,} sources", r[f"big-{s}"]) for s in sizes
        ]
        for name, (rate, p50, p99) in rows:
            lines.append(
                f"| {r['db']} | {name} | {rate:,.0f} req/s | {p50:.1f} | {p99:.1f} | "
                f"{rate / view:.2f}× | {rate / orm:.2f}× | {p99 / p50:.1f} |"
            )
        lines.append(
            f"| {r['db']} | batches of 1,000, one client | {r['batch']:,.0f} sources/s"
            " | | | | | |"
        )
    lines += ["", "Ratios of the big aggregates to the fresh one:", ""]
    for r in results:
        for s in sizes:
            lines.append(
                f"- {r['db']}, {s:,} sources: "
                f"{r[f'big-{s}'][0] / r['fresh'][0]:.2f}× the fresh rate"
            )
    for r in results:
        if "processes" in r:
            one, two = r["processes"]
            lines += [
                "",
                f"One hot domain on {r['db']}, single posts from two wrk processes "
                f"of 8 connections: {one:,.0f} req/s into one daphne, {two:,.0f} "
                f"req/s into two ({two / one:.2f}×).",
            ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        nargs="+",
        default=["sqlite", "postgres"],
        choices=["sqlite", "postgres"],
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument(
        "--out", default=str(Path(tempfile.gettempdir()) / "botlnek-bench-ingest.md")
    )
    args = parser.parse_args()
    results = []
    for db in args.db:
        print(f"benchmarking {db} …", file=sys.stderr, flush=True)
        results.append(bench_db(db, args.runs, args.duration, args.sizes))
    text = report(results, args.runs, args.duration, args.sizes)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
