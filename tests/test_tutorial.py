"""docs/tutorial.md, run as written: each fenced block in order, in a scratch
directory, against the real server `manage.py serve` starts, with the outcomes the
page shows checked.

The blocks say what they are: a plain `sh` block is run (bash, `set -e`, the
environment carried to the next block as a terminal would keep it); `title="Terminal
N: …"` is a long-running command, started in the background and stopped at the end;
`title="<file>"` is a file to save; `title="Install"` is skipped (this test runs
inside the installed package: `.venv` is linked to its environment). A `json` or
`text` block shows the output of the run block before it, or, titled `Terminal N`,
of that terminal: every `"key": value` of a `json` block, and every line of a `text`
block (`…` standing for anything), must appear in it. The only changes to the text
are free ports for 8000 and 8001, and the token the server printed for `bk_…`.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.toolkit import ROOT, free_port, wait_for

PAGE = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r'^```(\w+)(?: title="([^"]*)")?\n(.*?)^```', re.S | re.M)
PAIR = re.compile(r'"(\w+)": ("[^"…]*"|-?\d+|true|false|null)')


def blocks() -> list[tuple[str, str, str]]:
    return [
        (lang, title, text) for lang, title, text in BLOCK.findall(PAGE.read_text())
    ]


class Background:
    """A terminal's long-running command and everything it printed."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output += line

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.reader.join(timeout=5)


def shows(expected: str, lang: str, output: str) -> list[str]:
    """What of `expected` (a json or text block) is missing from `output`."""
    if lang == "json":
        wanted = [f'"{key}": {value}' for key, value in PAIR.findall(expected)]
        return [pair for pair in wanted if pair not in output]
    missing = []
    for line in expected.strip().splitlines():
        pattern = ".*?".join(re.escape(part) for part in line.split("…"))
        if not re.search(pattern, output):
            missing.append(line)
    return missing


def test_the_tutorial_runs_as_written(tmp_path):
    if not (Path(sys.prefix) / "bin" / "activate").exists():
        pytest.skip("needs a virtual environment to stand for the tutorial's .venv")
    (tmp_path / ".venv").symlink_to(sys.prefix)
    (tmp_path / "manage.py").symlink_to(ROOT / "manage.py")
    server_port, receiver_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTLNEK_")}
    terminals: dict[str, Background] = {}
    token = None
    last_run, last_output = "", ""
    found = blocks()
    assert [t for lang, t, _ in found if t.startswith("Terminal") and lang == "sh"] == [
        "Terminal 1: the server",
        "Terminal 3: the watcher",
        "Terminal 4: the receiver",
    ]

    def fill(text: str) -> str:
        text = text.replace("8000", str(server_port)).replace(
            "8001", str(receiver_port)
        )
        return text.replace("bk_…", token) if token else text

    def run(command: str) -> str:
        nonlocal env
        saved = tmp_path / ".env-after"
        script = f"set -e\n{command}\nenv -0 > {saved}\n"
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        env = dict(
            item.split("=", 1) for item in saved.read_text().split("\0") if "=" in item
        )
        return done.stdout + done.stderr

    try:
        for lang, title, raw in found:
            text = fill(raw)
            if title == "Install":
                assert "pip install" in text
            elif title.startswith("Terminal") and lang == "sh":
                name = title.split(":")[0]
                terminals[name] = Background(text, tmp_path, env)
                if name == "Terminal 1":
                    server = terminals[name]
                    wait_for(
                        lambda s=server: "Serving on" in s.output, 60, "the server"
                    )
                    token = re.search(r"export BOTLNEK_TOKEN=(bk_\S+)", server.output)[
                        1
                    ]
                    wait_for(
                        lambda: _live(server_port),
                        30,
                        f"the server to answer /livez: {server.output}",
                    )
            elif title:
                if lang in ("json", "text"):  # a terminal's output
                    terminal = terminals[title.split(":")[0]]
                    wait_for(
                        lambda t=terminal, x=text, k=lang: not shows(x, k, t.output),
                        15,
                        f"{title} to show {text!r}; it shows {terminal.output!r}",
                    )
                else:
                    (tmp_path / title).write_text(text)
            elif lang == "sh":
                last_run, last_output = text, run(text)
            elif lang in ("json", "text") and "Serving on" in text:
                missing = shows(text, lang, terminals["Terminal 1"].output)
                assert missing == [], terminals["Terminal 1"].output
            elif lang in ("json", "text"):
                # A read may run again while the rules engine catches up; a write
                # must show what the page says the first time.
                def holds(expected=text, kind=lang, command=last_run):
                    nonlocal last_output
                    if shows(expected, kind, last_output):
                        last_output = run(command)
                    return not shows(expected, kind, last_output)

                if " -X " in last_run or "botlnek post" in last_run:
                    assert shows(text, lang, last_output) == [], last_output
                elif not holds():
                    wait_for(holds, 10, f"{last_run!r} to show {text!r}")
                    assert shows(text, lang, last_output) == [], last_output
        _after_the_page(
            tmp_path, server_port, receiver_port, terminals, env["BOTLNEK_TOKEN"]
        )
    finally:
        for terminal in reversed(terminals.values()):
            terminal.stop()


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).is_success
    except httpx.TransportError:
        return False


def _after_the_page(tmp_path, port, receiver_port, terminals, token):
    """What the page says without a block to show it."""
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    # The third A (the page's last post) was evaluated, and fired nothing: the
    # rule's log still ends at event 1, so neither the watcher nor the webhook
    # has anything more to hear.
    why = f"{base}/api/domains/c-inputs/rules/run-c/aggregates/2026-12-01"
    wait_for(
        lambda: (
            (answer := httpx.get(why, headers=headers).json())["version"] == 4
            and answer["note"] is None
        ),
        10,
        "the rule to evaluate version 4",
    )
    rule = httpx.get(f"{base}/api/domains/c-inputs/rules/run-c", headers=headers)
    assert rule.json()["latest_seq"] == 1
    assert (tmp_path / "c-runs.log").read_text().count("pipeline C runs for") == 1
    received = terminals["Terminal 4"].output
    assert received.count("verified rule.fired run-c 2026-12-01") == 1, received
    # The webhook's delivery was answered 204 by the receiver.
    hooks = httpx.get(f"{base}/api/domains/c-inputs/webhooks", headers=headers).json()
    [hook] = hooks["webhooks"]
    attempts = f"{base}/api/domains/c-inputs/webhooks/{hook['id']}/deliveries"
    deliveries = httpx.get(attempts, headers=headers).json()["deliveries"]
    assert [d["status_code"] for d in deliveries] == [204]
    # Delivered again (a replay, as after a lost answer): the same webhook-id, so
    # the receiver answers it and handles nothing twice.
    replay = f"{base}/api/domains/c-inputs/webhooks/{hook['id']}/replay"
    assert httpx.post(replay, json={"after_seq": 0}, headers=headers).is_success
    wait_for(
        lambda: len(httpx.get(attempts, headers=headers).json()["deliveries"]) == 2,
        15,
        "the replayed delivery",
    )
    statuses = httpx.get(attempts, headers=headers).json()["deliveries"]
    assert [d["status_code"] for d in statuses] == [204, 204]
    assert terminals["Terminal 4"].output.count("verified rule.fired") == 1
    # A call that is not signed with the secret is refused.
    forged = httpx.post(
        f"http://127.0.0.1:{receiver_port}/hooks/botlnek",
        content=b"{}",
        headers={
            "webhook-id": "msg_forged",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl",
        },
    )
    assert forged.status_code == 401
    # The dashboard: the login the server printed opens the domain's page.
    login = re.search(r"admin login \(shown once\): admin / (\S+)", _output(terminals))
    with httpx.Client(base_url=base) as browser:
        page = browser.get("/d/c-inputs/")
        assert page.status_code == 302
        form = browser.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)[1]
        logged_in = browser.post(
            "/accounts/login/",
            data={
                "username": "admin",
                "password": login[1],
                "csrfmiddlewaretoken": csrf,
            },
            headers={"Referer": f"{base}/accounts/login/"},
        )
        assert logged_in.status_code == 302, logged_in.text
        page = browser.get("/d/c-inputs/")
        assert page.status_code == 200
        assert "2026-12-01" in page.text and "run-c" in page.text
        assert "starts pipeline C" in page.text


def _output(terminals) -> str:
    return terminals["Terminal 1"].output
