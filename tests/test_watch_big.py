"""Both `botlnek watch` forms on an aggregate of 100,000 sources: their frames
come in delta mode, and the state, far over a websocket frame's limit, is fetched
over HTTP into the command's state file only when a command runs."""

import asyncio
import json
import os
import subprocess
import sys
import threading

import httpx

from aggregates.client.http import Client
from aggregates.client.watch import run_with_state
from aggregates.store import NewSource, register_sources
from tests.toolkit import ROOT, Subscriber, post, wait_for, watch_command

SOURCES = 100_000
BIG = "2026-12-03"

# Appends what it was given: the environment, and what the state file holds.
RECORDER = """
import json, os, sys
state = json.load(open(os.environ["BOTLNEK_STATE_FILE"]))
seen = {
    "version": os.environ["BOTLNEK_VERSION"],
    "rule_seq": os.environ.get("BOTLNEK_RULE_SEQ"),
    "state": state and {
        "version": state["version"],
        "counts": {name: len(items) for name, items in state["collections"].items()},
        "versions": len(state["versions"]),
    },
}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(seen) + "\\n")
"""


class Watcher:
    """`botlnek watch` as a process, running RECORDER; its stderr in `.lines`."""

    def __init__(self, server, token, tmp_path, name, *flags):
        self.runs_file = tmp_path / f"{name}.jsonl"
        script = tmp_path / "recorder.py"
        script.write_text(RECORDER)
        self.process = subprocess.Popen(
            watch_command(
                server,
                token,
                "--name",
                name,
                "--state-file",
                str(tmp_path / f"{name}-state.json"),
                *flags,
                "--",
                sys.executable,
                str(script),
                str(self.runs_file),
            ),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(
            lambda: (
                self.process.poll() is not None
                or any("watch: following" in line for line in self.lines)
            ),
            15,
            f"{name} to follow",
        )
        assert self.process.poll() is None, "".join(self.lines)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def runs(self, timeout: float) -> list[dict]:
        def recorded():
            if self.process.poll() is not None:
                raise AssertionError("".join(self.lines))
            if self.runs_file.exists():
                return self.runs_file.read_text().splitlines()

        return [json.loads(line) for line in wait_for(recorded, timeout, "a run")]

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=10) == 0, "".join(self.lines)
        assert "Traceback" not in "".join(self.lines)


def test_both_watch_forms_run_on_an_aggregate_of_100000_sources(
    start_server, token, tmp_path
):
    server = start_server(BOTLNEK_POSITION_CHECK_SECONDS="1")
    created = httpx.post(
        f"{server.url}/api/domains/c-inputs/rules",
        json={"name": "big", "when": "A >= 1 and B >= 1"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    by_rule = Watcher(server, token, tmp_path, "by-rule", "--rule", "big")
    # age() asks for source times, which only the state has: the one fetch
    # happens when the counts before it hold (B arrives last).
    when = "A >= 1 and B >= 1 and age(A) < 1d"
    by_condition = Watcher(server, token, tmp_path, "by-condition", "--when", when)
    try:
        for first in range(0, SOURCES - 1, 10_000):
            register_sources(
                [
                    NewSource("c-inputs", BIG, "A", {"part": str(n)})
                    for n in range(first, min(first + 10_000, SOURCES - 1))
                ]
            )
        post(server, token, BIG, "B")
        (rule_run,) = by_rule.runs(timeout=120)
        (condition_run,) = by_condition.runs(timeout=120)
    finally:
        by_rule.stop()
        by_condition.stop()
    whole = {"version": SOURCES, "counts": {"A": SOURCES - 1, "B": 1}}
    whole["versions"] = SOURCES
    assert rule_run == {"version": str(SOURCES), "rule_seq": "1", "state": whole}
    assert condition_run == {"version": str(SOURCES), "rule_seq": None, "state": whole}
    progress = json.loads((tmp_path / "by-condition-state.json").read_text())
    assert progress == {"position": SOURCES, "fired": {BIG: SOURCES}}

    # In full mode the same event cannot be sent: it is what watch did before.
    async def full_mode() -> dict:
        async with Subscriber(server, token) as subscriber:
            await subscriber.subscribe(rule="big", after_seq=0)
            return await subscriber.next(timeout=60)

    refused = asyncio.run(full_mode())
    assert (refused["type"], refused["error"]) == ("error", "frame_too_large")


def test_a_state_that_cannot_be_fetched_is_a_failed_run(start_server, token, tmp_path):
    server = start_server()
    post(server, token, "d1", "A")
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    frame = {"domain": "c-inputs", "aggregate": "d1", "version": 1, "position": 1}
    lines: list[str] = []

    def run(client: Client, state_file) -> object:
        return asyncio.run(
            run_with_state(
                client, command, frame, {}, state_file, timeout=10, log=lines.append
            )
        )

    refused = run(Client(server.url, "not-a-token"), tmp_path / "refused.json")
    assert (refused.outcome, refused.exit_code) == ("failure", None)
    assert refused.detail.startswith("could not fetch the state: HTTP 401")
    assert lines == [f"watch: d1 v1: {refused.detail}"]
    assert not marker.exists() and not (tmp_path / "refused.json").exists()

    # An aggregate gone since (pruned, say) runs with a state of null.
    gone = run(Client(server.url, token), tmp_path / "gone.json")
    assert gone.outcome == "success" and marker.exists()
    frame["aggregate"] = "pruned-since"
    marker.unlink()
    assert run(Client(server.url, token), tmp_path / "null.json").outcome == "success"
    assert json.loads((tmp_path / "null.json").read_text()) is None
    assert marker.exists()
    assert os.path.getsize(tmp_path / "gone.json") > 0
