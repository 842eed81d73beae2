"""`botlnek watch` end to end: a real server, the CLI as a process, real commands."""

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest

from aggregates.models import Receipt
from tests.toolkit import ROOT, post, wait_for, watch_command

# The command a watcher runs: appends what it saw, then exits with $EXIT (or hangs).
RECORDER = """
import json, os, sys, time
names = ["DOMAIN", "AGGREGATE", "VERSION", "POSITION", "STATE_FILE"]
env = {f"BOTLNEK_{n}": os.environ[f"BOTLNEK_{n}"] for n in names}
state = json.load(open(env["BOTLNEK_STATE_FILE"]))
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"env": env, "state": state}) + "\\n")
if os.environ.get("HANG") == env["BOTLNEK_AGGREGATE"]:
    time.sleep(60)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


class Watch:
    def __init__(self, server, token, tmp_path, *flags, env=None):
        self.runs_file = tmp_path / "runs.jsonl"
        self.state_file = tmp_path / "watch-state.json"
        script = tmp_path / "recorder.py"
        script.write_text(RECORDER)
        self.process = subprocess.Popen(
            watch_command(
                server,
                token,
                "--state-file",
                str(self.state_file),
                "--name",
                "run-c",
                *flags,
                "--",
                sys.executable,
                str(script),
                str(self.runs_file),
            ),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        wait_for(
            lambda: (
                self.process.poll() is not None
                or any("watch: following c-inputs" in line for line in self.stderr)
            ),
            15,
            "watch to subscribe",
        )
        assert self.process.poll() is None, "".join(self.stderr)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def runs(self, count: int, timeout: float = 10) -> list[dict]:
        def recorded() -> list[str]:
            if not self.runs_file.exists():
                return []
            lines = self.runs_file.read_text().splitlines()
            return lines if len(lines) >= count else []

        lines = wait_for(recorded, timeout, f"{count} runs")
        return [json.loads(line) for line in lines]

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=10) == 0  # SIGTERM is a clean stop
        self.reader.join(timeout=10)
        assert "Traceback" not in "".join(self.stderr)


def test_once_runs_exactly_once_for_version_2(start_server, token, tmp_path):
    server = start_server()
    watch = Watch(server, token, tmp_path, "--when", "A >= 1 and B >= 1")
    try:
        post(server, token, "2026-11-26", "A", run="am")
        post(server, token, "2026-11-26", "B")
        post(server, token, "2026-11-26", "A", run="pm")
        # Version 3 satisfies it too, yet the next run is the sentinel's.
        post(server, token, "sentinel", "A")
        post(server, token, "sentinel", "B")
        run, sentinel = watch.runs(2)
    finally:
        watch.stop()
    assert sentinel["env"]["BOTLNEK_AGGREGATE"] == "sentinel"
    assert run["env"] == {
        "BOTLNEK_DOMAIN": "c-inputs",
        "BOTLNEK_AGGREGATE": "2026-11-26",
        "BOTLNEK_VERSION": "2",
        "BOTLNEK_POSITION": "2",
        "BOTLNEK_STATE_FILE": run["env"]["BOTLNEK_STATE_FILE"],
    }
    assert run["state"]["version"] == 2
    assert sorted(run["state"]["collections"]) == ["A", "B"]
    receipt = Receipt.objects.get(aggregate__key="2026-11-26")
    assert (receipt.watcher, receipt.version, receipt.outcome, receipt.exit_code) == (
        "run-c",
        2,
        "success",
        0,
    )
    listed = httpx.get(
        f"{server.url}/api/domains/c-inputs/aggregates/2026-11-26/receipts",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["receipts"]
    assert [(r["watcher"], r["version"]) for r in listed] == [("run-c", 2)]


def test_every_runs_on_each_satisfying_version(start_server, token, tmp_path):
    server = start_server()
    watch = Watch(server, token, tmp_path, "--every", "--when", "A >= 1 and B >= 1")
    try:
        post(server, token, "d1", "A", run="am")
        post(server, token, "d1", "B")
        post(server, token, "d1", "A", run="pm")
        runs = watch.runs(2)
    finally:
        watch.stop()
    assert [r["env"]["BOTLNEK_VERSION"] for r in runs] == ["2", "3"]


def test_restart_fires_what_became_due_once_and_never_twice(
    start_server, token, tmp_path
):
    server = start_server()
    when = ("--when", "A >= 1 and B >= 1")
    watch = Watch(server, token, tmp_path, *when)
    post(server, token, "early", "A")
    post(server, token, "early", "B")
    watch.runs(1)
    watch.stop()
    for aggregate in ("d1", "d2"):  # both become due while the watcher is down
        post(server, token, aggregate, "A")
        post(server, token, aggregate, "B")
    watch = Watch(server, token, tmp_path, *when)
    try:
        runs = watch.runs(3)
    finally:
        watch.stop()
    watch = Watch(server, token, tmp_path, *when)
    try:
        post(server, token, "d1", "A", again="1")  # d1 fired already: no run
        post(server, token, "sentinel", "A")
        post(server, token, "sentinel", "B")
        runs = watch.runs(4)
    finally:
        watch.stop()
    aggregates = [r["env"]["BOTLNEK_AGGREGATE"] for r in runs]
    assert aggregates == ["early", "d1", "d2", "sentinel"]


def test_killed_after_frames_that_ran_nothing_repeats_no_run(
    start_server, token, tmp_path
):
    # The progress is saved at once after a run, and only now and then after
    # frames that ran nothing: those are evaluated again after a kill, to no run.
    server = start_server()
    when = ("--every", "--when", "B >= 1")
    watch = Watch(server, token, tmp_path, *when)
    post(server, token, "d1", "A")
    post(server, token, "d1", "B")
    watch.runs(1)
    for n in range(3):
        post(server, token, "d2", "A", n=str(n))
    watch.process.kill()
    watch.process.wait(timeout=10)
    saved = json.loads(watch.state_file.read_text())["position"]
    assert 2 <= saved <= 5
    watch = Watch(server, token, tmp_path, *when)
    try:
        post(server, token, "sentinel", "B")
        runs = watch.runs(2)
    finally:
        watch.stop()
    assert [
        (r["env"]["BOTLNEK_AGGREGATE"], r["env"]["BOTLNEK_VERSION"]) for r in runs
    ] == [
        ("d1", "2"),
        ("sentinel", "1"),
    ]
    assert json.loads(watch.state_file.read_text())["position"] == 6  # saved at stop


def test_failing_command_is_retried_on_the_next_version(start_server, token, tmp_path):
    server = start_server()
    watch = Watch(server, token, tmp_path, "--when", "A >= 1", env={"EXIT": "3"})
    try:
        post(server, token, "d1", "A", n="1")
        post(server, token, "d1", "A", n="2")
        runs = watch.runs(2)
    finally:
        watch.stop()
    assert [r["env"]["BOTLNEK_VERSION"] for r in runs] == ["1", "2"]
    outcomes = list(Receipt.objects.order_by("id").values_list("outcome", "exit_code"))
    assert outcomes == [("failure", 3), ("failure", 3)]


def test_hung_command_is_killed_at_the_timeout(start_server, token, tmp_path):
    server = start_server()
    watch = Watch(
        server,
        token,
        tmp_path,
        "--when",
        "A >= 1",
        "--timeout",
        "1",
        env={"HANG": "stuck"},
    )
    try:
        post(server, token, "stuck", "A")
        watch.runs(1)
        receipt = wait_for(Receipt.objects.first, 20, "the receipt")
    finally:
        watch.stop()
    assert receipt.outcome == "timeout"
    assert 1 <= receipt.duration_s < 30  # killed, not left to its 60 s


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--when", "A >= and B"], 2, "bad --when: unexpected 'and' at column 6"),
        (["--when", "A and B@-1d"], 2, "B@-1d refers to other aggregates"),
        (["--when", "A >= 1", "--url", "http://127.0.0.1:1"], 1, "cannot reach"),
        (["--when", "A >= 1", "--token", "bk_bogus"], 1, "HTTP 401"),
    ],
)
def test_bad_start_is_one_line_and_nonzero(
    start_server, token, tmp_path, flags, code, message
):
    server = start_server()
    result = subprocess.run(
        watch_command(
            server,
            token,
            "--state-file",
            str(tmp_path / "s.json"),
            *flags,
            "--",
            "true",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == code
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_aggregate_prefix_limits_what_is_watched(start_server, token, tmp_path):
    server = start_server()
    watch = Watch(
        server, token, tmp_path, "--when", "A >= 1", "--aggregate-prefix", "keep-"
    )
    try:
        post(server, token, "skip-1", "A")
        post(server, token, "keep-1", "A")
        post(server, token, "keep-sentinel", "A")
        runs = watch.runs(2)
    finally:
        watch.stop()
    aggregates = [r["env"]["BOTLNEK_AGGREGATE"] for r in runs]
    assert aggregates == ["keep-1", "keep-sentinel"]
