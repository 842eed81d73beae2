"""Every benchmark in one run, and one report with the targets marked met or missed.

    python -m bench [--quick] [--only ingest fanout reads rules webhooks intakes]
                    [--out FILE]

Runs ingest on SQLite and PostgreSQL (bench/ingest.py), the fan-out scenarios on
the in-memory and Redis layers in delta and full mode (bench/fanout.py), the read
benchmarks (bench/reads.py), the rules' (bench/rules.py), the webhooks'
(bench/webhooks.py) and the intakes' (bench/intakes.py); shows progress on
stderr; prints the report and writes it to bench/results.md. --quick shrinks
every size and runs everything once: a smoke test whose figures mean nothing,
written to a temporary file unless --out says otherwise. Needs what the parts
need: wrk, PostgreSQL at $BENCH_POSTGRES_URL (dropped and created), Redis on
127.0.0.1:6379.
"""

import argparse
import os
import platform
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from bench import fanout, ingest, intakes, reads, rules, webhooks
from bench.ingest import ROOT, versions

SECTIONS = ("ingest", "fanout", "reads", "rules", "webhooks", "intakes")
LAYERS = ("memory", "redis")
MODES = ("delta", "full")


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    runs: int  # runs behind each ingest and fan-out median
    duration: int  # seconds of each wrk run, and of posting in each fan-out run
    ingest_sizes: tuple[int, ...]  # aggregates ingested into besides a fresh one
    fanout: tuple[tuple[int, int, int], ...]  # subscribers, versions/s, p99 target ms
    frame_sizes: tuple[int, ...]
    frame_runs: int  # builds behind each frame median
    dashboard_big: int
    api_big: int
    requests: int  # timed GETs behind each read median
    rules_waiting: int  # aggregates a rule waits for when its clock is timed
    expect_years: int  # years of daily keys a rule expects from the past
    webhook_backlog: int  # versions one webhook works through, for its rate
    intake_events: int  # events read and mapped in process, for their cost


FULL = Plan(
    runs=3,
    duration=5,
    ingest_sizes=(10_000, 100_000),
    fanout=((100, 50, 100), (1000, 5, 300), (1000, 20, 300)),
    frame_sizes=tuple(reads.FRAME_SIZES),
    frame_runs=5,
    dashboard_big=100_000,
    api_big=10_000,
    requests=20,
    rules_waiting=100_000,
    expect_years=10,
    webhook_backlog=5_000,
    intake_events=10_000,
)
QUICK = Plan(
    runs=1,
    duration=1,
    ingest_sizes=(1_000,),
    fanout=((20, 10, 100),),
    frame_sizes=(10, 1_000),
    frame_runs=1,
    dashboard_big=1_000,
    api_big=1_000,
    requests=5,
    rules_waiting=2_000,
    expect_years=1,
    webhook_backlog=1_000,
    intake_events=1_000,
)


# A step: the report section its figures go to, its name, and what measures them.
Step = tuple[str, str, Callable[[], object]]


def steps(plan: Plan, only: set[str]) -> list[Step]:
    found: list[Step] = []
    if "ingest" in only:
        for db in ("sqlite", "postgres"):
            measure = partial(
                ingest.bench_db, db, plan.runs, plan.duration, list(plan.ingest_sizes)
            )
            found.append(("ingest", f"ingest on {db}", measure))
    if "fanout" in only:
        for layer in LAYERS:
            for mode in MODES:
                for subscribers, rate, _ in plan.fanout:
                    measure = partial(
                        fanout.measure,
                        layer,
                        mode,
                        subscribers,
                        rate,
                        plan.duration,
                        plan.runs,
                    )
                    name = f"fan-out {layer} {mode} {subscribers}×{rate}/s"
                    found.append(("fanout", name, measure))
    if "rules" in only:
        for db in ("sqlite", "postgres"):
            measure = partial(rules.ingest, db, plan.runs, plan.duration)
            found.append(("rules_ingest", f"20 rules on {db}", measure))
            measure = partial(rules.waiting, db, plan.rules_waiting, plan.requests)
            found.append(("rules_waiting", f"rules clock on {db}", measure))
            measure = partial(rules.expecting, db, plan.expect_years, plan.requests)
            found.append(("rules_expect", f"expected keys on {db}", measure))
    if "webhooks" in only:
        for db in ("sqlite", "postgres"):
            measure = partial(
                webhooks.measure, db, plan.runs, plan.duration, plan.webhook_backlog
            )
            found.append(("webhooks", f"webhooks on {db}", measure))
    if "intakes" in only:
        for db in ("sqlite", "postgres"):
            measure = partial(intakes.measure, db, plan.runs, plan.duration)
            found.append(("intakes", f"intakes on {db}", measure))
        measure = partial(intakes.rendering, plan.intake_events, 5)
        found.append(("intake_costs", "an event read and mapped", measure))
    if "reads" in only:
        measure = partial(reads.frames, list(plan.frame_sizes), plan.frame_runs)
        found.append(("frames", "frames by aggregate size", measure))
        measure = partial(reads.pages, plan.dashboard_big, plan.api_big, plan.requests)
        found.append(("pages", "dashboard page and API read", measure))
    return found


class Progress:
    """One line on stderr: a bar, step k/n, its name, its time and the total time,
    redrawn every second when stderr is a terminal."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.name = ""
        self.started = self.step_started = time.monotonic()
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        if sys.stderr.isatty():
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(1):
            self.draw()

    def draw(self) -> None:
        now = time.monotonic()
        filled = 20 * self.done // self.total
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] "
            f"{min(self.done + 1, self.total)}/{self.total} {self.name}  "
            f"{_clock(now - self.step_started)} (total {_clock(now - self.started)})"
        )
        with self._lock:
            sys.stderr.write("\r" + line.ljust(self._width))
            sys.stderr.flush()
            self._width = len(line)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.name, self.step_started = name, time.monotonic()
        self.draw()
        try:
            yield
        finally:
            self.done += 1

    def say(self, text: str) -> None:
        """Text on lines of its own; the bar is drawn again below it."""
        with self._lock:
            sys.stderr.write("\r" + " " * self._width + "\r" + text.rstrip() + "\n")
            self._width = 0

    def close(self) -> None:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join()
        self.name = "done"
        self.draw()
        sys.stderr.write("\n")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def run(plan: Plan, only: set[str]) -> tuple[dict[str, list], list[str]]:
    """Every step in turn; a step that fails is reported and the others still run."""
    todo = steps(plan, only)
    results: dict[str, list] = {}
    failures: list[str] = []
    progress = Progress(len(todo))
    for section, name, measure in todo:
        with progress.step(name):
            try:
                results.setdefault(section, []).append(measure())
            except Exception as exc:
                progress.say(f"{name} failed:\n{traceback.format_exc()}")
                detail = (str(exc).splitlines() or [""])[0]
                failures.append(f"{name}: {type(exc).__name__}: {detail}")
    progress.close()
    return results, failures


# The report


def machine() -> str:
    cpu, ram = "CPU unknown", "RAM unknown"
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
        found = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram = f"{int(found.group(1)) / 1024**2:.1f} GiB RAM" if found else ram
    except OSError:  # not Linux
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {cpu}, {ram}, {system}"


def targets(plan: Plan, results: dict[str, list]) -> list[tuple[str, str, bool]]:
    """The service levels: (target, measured, met)."""
    rows = []
    for r in results.get("ingest", []):
        db, single = r["db"], r["fresh"][0]
        floor = 10_000 if db == "sqlite" else 5_000
        rows.append(
            (
                f"batch ingest on {db} ≥ {floor:,} sources/s",
                f"{r['batch']:,.0f} sources/s",
                r["batch"] >= floor,
            )
        )
        view, orm = r["django"][0], r["orm"][0]
        rows.append(
            (
                f"single posts on {db} ≥ 1.0× a bare Django JSON view",
                f"{single / view:.2f}× ({single:,.0f} against {view:,.0f} req/s)",
                single >= view,
            )
        )
        rows.append(
            (
                f"single posts on {db} ≥ 2× a Django view inserting with the ORM",
                f"{single / orm:.2f}× ({single:,.0f} against {orm:,.0f} req/s)",
                single >= 2 * orm,
            )
        )
        posts = [r["fresh"], *(r[f"big-{size}"] for size in plan.ingest_sizes)]
        spread = max(p99 / p50 for _, p50, p99 in posts)
        rows.append(
            (
                f"single posts on {db}, 16 writers: p99 ≤ 3× p50",
                f"{spread:.1f}× (the worst single-post row)",
                spread <= 3,
            )
        )
        big = max(plan.ingest_sizes)
        ratio = r[f"big-{big}"][0] / single
        rows.append(
            (
                f"single posts on {db} into a {big:,}-source aggregate ≥ 0.8× "
                "into a fresh one",
                f"{ratio:.2f}×",
                ratio >= 0.8,
            )
        )
    limits = {(subscribers, rate): ms for subscribers, rate, ms in plan.fanout}
    for r in results.get("fanout", []):
        limit = limits[r["subscribers"], r["rate"]]
        rows.append(
            (
                f"fan-out ({r['layer']} layer, {r['mode']} mode) to "
                f"{r['subscribers']:,} subscribers at {r['rate']}/s: 100% delivered, "
                f"commit → receipt p99 ≤ {limit} ms",
                f"{r['delivered']:.1%}, p99 {r['p99']:.0f} ms",
                r["delivered"] == 1 and r["p99"] <= limit,
            )
        )
    for r in results.get("rules_ingest", []):
        for key, what in (("ruled", "20 rules"), ("windowed", "20 rules across keys")):
            ratio = r[key] / r["plain"]
            rows.append(
                (
                    f"single posts on {r['db']} into a domain with {what} ≥ 0.8× "
                    "one with none",
                    f"{ratio:.2f}× ({r[key]:,.0f} against {r['plain']:,.0f} req/s)",
                    ratio >= 0.8,
                )
            )
    for r in results.get("rules_waiting", []):
        rows.append(
            (
                f"a deadline on {r['db']} recorded within 5 s, {r['size']:,} "
                "aggregates waiting",
                f"{r['delay_s']:.2f} s after it",
                0 <= r["delay_s"] <= 5,
            )
        )
    for r in results.get("rules_expect", []):
        rows.append(
            (
                f"the why of one day on {r['db']} ≤ 50 ms, a rule expecting "
                f"{r['keys']:,} daily keys",
                f"{r['why_ms']:.1f} ms",
                r["why_ms"] <= 50,
            )
        )
    for r in results.get("webhooks", []):
        rows.append(
            (
                f"one webhook on {r['db']} ≥ 300 deliveries/s",
                f"{r['rate']:,.0f}/s",
                r["rate"] >= 300,
            )
        )
        rows.append(
            (
                f"webhooks on {r['db']} at 50 versions/s: commit → delivery p99 ≤ 1 s",
                f"p99 {r['p99_ms']:.0f} ms",
                r["p99_ms"] <= 1000,
            )
        )
        ratio = r["hooked"] / r["plain"]
        rows.append(
            (
                f"single posts on {r['db']} with 10 webhooks ≥ 0.8× with none",
                f"{ratio:.2f}× ({r['hooked']:,.0f} against {r['plain']:,.0f} req/s)",
                ratio >= 0.8,
            )
        )
    for r in results.get("intakes", []):
        plain, events = r["sources"][0], r["events"][0]
        rows.append(
            (
                f"single CloudEvents to an intake on {r['db']} (binary mode, 16 "
                "writers) ≥ 0.8× single posts to /api/sources",
                f"{events / plain:.2f}× ({events:,.0f} against {plain:,.0f} req/s)",
                events >= 0.8 * plain,
            )
        )
        ratio = r["event_batches"] / r["source_batches"]
        rows.append(
            (
                f"batches of 1,000 CloudEvents to an intake on {r['db']} ≥ 0.5× "
                "batches of 1,000 sources",
                f"{ratio:.2f}× ({r['event_batches']:,.0f} against "
                f"{r['source_batches']:,.0f} per s)",
                ratio >= 0.5,
            )
        )
    for figures in results.get("pages", []):
        page = figures["dashboard"]
        rows.append(
            (
                f"dashboard aggregate page at {page['big']:,} versions ≤ 2× "
                f"one at {page['small']:,}",
                f"{page['ratio']:.2f}× ({page['big_ms']:.1f} ms against "
                f"{page['small_ms']:.1f} ms)",
                page["ratio"] <= 2,
            )
        )
    return rows


def report(
    plan: Plan,
    results: dict[str, list],
    failures: list[str],
    started: datetime,
    elapsed: float,
    command: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC by `{command}`, taking {_clock(elapsed)}.",
        "",
        f"- Machine: {machine()}.",
        f"- Python {platform.python_version()}, {versions()}.",
        "- Every figure is a median of several runs (how many: under each section); "
        "every ratio compares figures measured in the same run.",
    ]
    if plan == QUICK:
        lines += [
            "",
            "**Quick run**: tiny sizes and one run of each, to show that the "
            "benchmarks work end to end. Its figures mean nothing.",
        ]
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(
            f"| {target} | {measured} | {'met' if met else '**missed**'} |"
            for target, measured, met in targets(plan, results)
        ),
    ]
    if "ingest" in results:
        lines += [
            "",
            "## Ingest",
            "",
            f"One daphne process, `BOTLNEK_DEBUG=0`; wrk -t2 -c16 on the same "
            f"machine; each figure the median of {plan.runs} runs of {plan.duration} s,"
            " the runs of all rows interleaved. A single post registers one new "
            "source; batches are 10 posts of 1,000 sources from one client. The "
            "plain-Django anchor (bench/anchor) is served by the same daphne: a "
            "JSON view, and a view inserting the same JSON body with the ORM in a "
            "transaction, both through Django's own handler and middleware.",
            "",
            *ingest.table(results["ingest"], list(plan.ingest_sizes)),
        ]
    if "fanout" in results:
        lines += [
            "",
            "## Fan-out",
            "",
            f"A fresh daphne process on SQLite per run; all subscribers in one "
            f"client process on the same machine; {plan.duration} s of posting per "
            "run; latency from just before the POST to receipt. p50 and p99 are the "
            f"medians of {plan.runs} runs, delivered the lowest of them.",
            "",
            *fanout.table(results["fanout"]),
        ]
    if "frames" in results:
        lines += [
            "",
            "## Notification frames by aggregate size",
            "",
            "In the benchmark's process, on a temporary SQLite database: the frame of "
            "an aggregate's latest version built as the hub builds it after a poke "
            "(`store.live_frames` reads the version, `streams.Frame(row).text(mode, "
            "subscription)` renders it; full mode reads the state with "
            "`store.aggregate_state_json`), afresh each time. Median of "
            f"{plan.frame_runs} "
            "builds; bytes of the UTF-8 text.",
            "",
            *reads.frames_table(results["frames"][0]),
        ]
    if "pages" in results:
        lines += [
            "",
            "## Dashboard page and API read",
            "",
            "One daphne process on SQLite with `BOTLNEK_PUBLIC_DASHBOARD=1`; "
            "aggregates filled through the API in batches of 1,000. Each time is the "
            f"median of {plan.requests} GETs after 3 warm-up ones, interleaved "
            "between the two aggregates; the dashboard requested without a token or "
            "login, as an anonymous browser, the API with a bearer token.",
            "",
            *reads.pages_table(results["pages"][0]),
        ]
    if any(
        name in results for name in ("rules_ingest", "rules_waiting", "rules_expect")
    ):
        lines += [
            "",
            "## Rules",
            "",
            "One daphne process per database. Ingest: wrk -t2 -c16 single posts into "
            "a domain without rules, one with 20 (both triggers, prefixes, "
            "deadlines, `age()`), and one with 20 across keys (windows "
            "`A@-2d..0d`, `B@-1d..0d`, a fallback; posts into one day whose "
            "neighbours hold sources), the runs interleaved, each figure the median of "
            f"{plan.runs} runs of {plan.duration} s; then how long the engine took "
            "after the run to have evaluated every version. Clock: aggregates "
            "posted in batches of 1,000, each waiting for a B under a rule with a "
            "deadline; then one more whose deadline passes 5 s later, and the time "
            "from that deadline to its recorded `late`; why and preview (100 "
            f"aggregates) are medians of {plan.requests} requests. Expected keys: "
            f"a daily rule created with `start: history` and `from` "
            f"{plan.expect_years} years back, an A posted into every third day "
            "beforehand; the time until every day is evaluated (late at its "
            "deadline, then fired by the A its window covers), the server's CPU "
            "seconds over the next 10 idle seconds (a clock scanning the keys would "
            "show there), and medians of the why of a day nobody posted to and of "
            "a 100-row listing.",
            "",
            *rules.table(
                results.get("rules_ingest", []),
                results.get("rules_waiting", []),
                results.get("rules_expect", []),
            ),
        ]
    if "webhooks" in results:
        lines += [
            "",
            "## Webhooks",
            "",
            "One daphne process per database; the receiver a keep-alive HTTP server "
            "in the benchmark's process answering 200. Rate: one webhook working "
            f"through {plan.webhook_backlog:,} versions posted in batches, from its "
            "first delivery to its last. Latency: single posts at 50/s for "
            f"{plan.duration * 4} s, from each post's answer to the receipt of its "
            "event. Ingest: wrk -t2 -c16 single posts into a domain with 10 "
            "webhooks and into one with none, interleaved, each the median of "
            f"{plan.runs} runs of {plan.duration} s; after each run with webhooks, "
            "the share of its deliveries already made, and the time the rest took "
            "(the benchmark waits for them before the next run).",
            "",
            *webhooks.table(results["webhooks"]),
        ]
    if "intakes" in results or "intake_costs" in results:
        lines += [
            "",
            "## Intakes",
            "",
            "One daphne process per database, `BOTLNEK_DEBUG=0`; an intake with "
            "three templates (aggregate, collection, one attr) and CloudEvents' "
            "default keys. Single: wrk -t2 -c16, each request a new CloudEvent in "
            "binary mode (bench/intake.lua) against each a new source "
            "(bench/post.lua), the runs interleaved, each figure the median of "
            f"{plan.runs} runs of {plan.duration} s. Batches: 10 posts of 1,000 "
            "CloudEvents (batch mode) against 10 posts of 1,000 sources, one "
            f"client, the median of {plan.runs}. Costs: {plan.intake_events:,} "
            "events read and mapped in the benchmark's process, the median of 5.",
            "",
            *intakes.table(results.get("intakes", []), results.get("intake_costs", [])),
        ]
    if failures:
        lines += ["", "## Failed steps", "", *(f"- {f}" for f in failures)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one run each: a smoke test of every benchmark",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=SECTIONS,
        metavar="PART",
        help="run only these: ingest, fanout, reads, rules, webhooks, intakes "
        "(default: all)",
    )
    parser.add_argument(
        "--out",
        help="where to write the report (default bench/results.md; with --quick "
        "a file in the temporary directory)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    default = Path(tempfile.gettempdir()) / "botlnek-bench-quick.md"
    out = Path(args.out or (default if args.quick else ROOT / "bench" / "results.md"))
    started, clock = datetime.now(UTC), time.monotonic()
    results, failures = run(plan, set(args.only))
    command = "python -m bench " + " ".join(sys.argv[1:])
    text = report(
        plan, results, failures, started, time.monotonic() - clock, command.strip()
    )
    print(text)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
