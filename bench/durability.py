"""What SQLite's `synchronous=FULL` (the default) costs against `NORMAL`: single
posts from 16 concurrent clients (wrk) and batches of 1,000, on a server started
as a user would, the two settings interleaved run by run. Writes
bench/results-durability.md.

    python -m bench.durability [--runs 3] [--duration 5]

With FULL, SQLite syncs the write-ahead log at every commit: an acknowledged
version survives a power cut. With NORMAL it syncs only at checkpoints, and the
last commits before a power cut (or an OS crash) can vanish; their positions and
seqs are then given again to other versions. Group commit (posts that arrive
together share one commit) is what should keep FULL's price low.
"""

import argparse
import platform
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.ingest import ROOT, Server, batches, median, versions, wrk

SETTINGS = ("full", "normal")


def measure(runs: int, duration: int) -> dict[str, dict]:
    rounds: dict[str, dict[str, list]] = {
        s: {"posts": [], "batch": []} for s in SETTINGS
    }
    for run in range(runs):
        for setting in SETTINGS:
            with tempfile.TemporaryDirectory() as data_dir:
                server = Server(
                    "sqlite", data_dir, env={"BOTLNEK_SQLITE_SYNCHRONOUS": setting}
                )
                try:
                    wrk(server, "/api/sources", min(2, duration), "warm", "warm")
                    rounds[setting]["posts"].append(
                        wrk(server, "/api/sources", duration, f"r{run}", f"r{run}")
                    )
                    rounds[setting]["batch"].append(
                        batches(server, f"batch-{run}", 10, f"b{run}")
                    )
                finally:
                    server.stop()
    return {
        setting: {
            "posts": median(found["posts"]),
            "batch": statistics.median(found["batch"]),
        }
        for setting, found in rounds.items()
    }


def report(results: dict[str, dict], runs: int, duration: int) -> str:
    full, normal = results["full"], results["normal"]
    lines = [
        "# SQLite durability: synchronous=FULL against NORMAL",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.durability"
        f" --runs {runs} --duration {duration}`.",
        "",
        f"- Python {platform.python_version()}, {versions()}.",
        f"- One daphne process on SQLite per run, started fresh; wrk -t2 -c16 single"
        f" posts for {duration} s, then 10 batches of 1,000 sources; the two settings"
        f" interleaved, each figure the median of {runs} runs.",
        "",
        "| `BOTLNEK_SQLITE_SYNCHRONOUS` | single posts | p50 / p99 | batches |",
        "|---|---|---|---|",
    ]
    for name, found in (("full (default)", full), ("normal", normal)):
        rate, p50, p99 = found["posts"]
        lines.append(
            f"| {name} | {rate:,.0f} req/s | {p50:.1f} / {p99:.1f} ms |"
            f" {found['batch']:,.0f} sources/s |"
        )
    lines += [
        "",
        f"FULL keeps {full['posts'][0] / normal['posts'][0]:.2f}× the single-post rate"
        f" and {full['batch'] / normal['batch']:.2f}× the batch rate of NORMAL.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results-durability.md"
    )
    args = parser.parse_args()
    text = report(measure(args.runs, args.duration), args.runs, args.duration)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
