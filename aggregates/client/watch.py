"""`botlnek watch`: run a command for each aggregate whose state satisfies a
condition, once (the first time) or on every version, and survive restarts.

Frames are handled one at a time, in position order, and the watcher's progress
(the last position handled and which aggregates fired) is saved atomically after
each one. A restart resumes after the saved position: a trigger that became due
while the watcher was down fires then, and none fires twice — except that a crash
between a command finishing and the save runs that command once more.
"""

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregates.client.http import BotlnekError, Client
from aggregates.conditions import ConditionError, Facts, parse


@dataclass
class Progress:
    position: int
    fired: dict[str, int] = field(default_factory=dict)  # aggregate → version

    @classmethod
    def load(cls, path: Path) -> "Progress | None":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BotlnekError(f"cannot read the state file {path}: {exc}") from None
        return cls(int(data["position"]), dict(data.get("fired", {})))

    def save(self, path: Path) -> None:
        """Write-then-rename, so a crash leaves the old file or the new, whole."""
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(
            json.dumps({"position": self.position, "fired": self.fired})
        )
        os.replace(temporary, path)


@dataclass
class Run:
    outcome: str  # success | failure | timeout
    exit_code: int | None
    duration_s: float


class Watcher:
    def __init__(
        self,
        client: Client,
        *,
        domain: str,
        when: str,
        command: list[str],
        every: bool = False,
        state_file: Path,
        from_start: bool = False,
        name: str = "watch",
        timeout: float | None = None,
        aggregate_prefix: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ):
        self.client = client
        self.domain = domain
        self.condition = parse(when)  # raises ConditionError before anything runs
        if self.condition.neighbours:
            ref = self.condition.neighbours[0]
            raise ConditionError(
                f"{ref.key} refers to other aggregates, and watch sees one "
                "aggregate's frames at a time: define a rule (POST "
                f"/api/domains/{domain}/rules) and run watch --rule",
                when.index("@") + 1,
            )
        self.command = command
        self.every = every
        self.state_file = state_file
        self.from_start = from_start
        self.name = name
        self.timeout = timeout
        self.prefix = aggregate_prefix
        self.clock = clock
        self.log = log

    def start_position(self) -> Progress:
        progress = Progress.load(self.state_file)
        if progress is not None:
            return progress  # --from-start is ignored with a state file
        if self.from_start:
            progress = Progress(0)
        else:
            domain = self.client.request("GET", f"/api/domains/{self.domain}")
            progress = Progress(domain["latest_position"])
        progress.save(self.state_file)  # a restart now resumes from here
        return progress

    async def run(self) -> None:
        """Watch until SIGTERM or SIGINT, which end it between two frames."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        progress = await asyncio.to_thread(self.start_position)
        frames = self.client.subscribe(
            self.domain,
            after_position=progress.position,
            mode="full",
            on_subscribed=lambda latest: self.log(
                f"watch: following {self.domain} from position {progress.position}"
                f" (latest {latest})"
            ),
        )
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(frames))
                await asyncio.wait(
                    {following, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                if not following.done():
                    following.cancel()
                    # Let the generator finish unwinding before it is closed.
                    await asyncio.gather(following, return_exceptions=True)
                    return
                frame = following.result()
                # A frame once started is finished and saved, signal or not.
                await self.handle(frame, progress)
                progress.position = frame["position"]
                progress.save(self.state_file)
        finally:
            stop.cancel()
            await frames.aclose()

    async def handle(self, frame: dict[str, Any], progress: Progress) -> None:
        aggregate = frame["aggregate"]
        if not aggregate.startswith(self.prefix):
            return
        if not self.every and aggregate in progress.fired:
            return
        if not self.condition(Facts.from_state(frame["state"], self.clock())):
            return
        run = await self.run_command(frame)
        self.log(
            f"watch: {aggregate} v{frame['version']}: {run.outcome}"
            f" (exit {run.exit_code}, {run.duration_s:.1f} s)"
        )
        if run.outcome == "success" and not self.every:
            progress.fired[aggregate] = frame["version"]
        await asyncio.to_thread(self.record, frame, run)

    async def run_command(self, frame: dict[str, Any]) -> Run:
        return await run_command(
            self.command, frame, {}, timeout=self.timeout, log=self.log
        )

    def record(self, frame: dict[str, Any], run: Run) -> None:
        receipt = {
            "watcher": self.name,
            "domain": frame["domain"],
            "aggregate": frame["aggregate"],
            "version": frame["version"],
            "outcome": run.outcome,
            "exit_code": run.exit_code,
            "duration_s": round(run.duration_s, 3),
        }
        try:
            # Best effort, and never worth holding up the next frame: no waiting
            # out a rate limit here.
            self.client.request("POST", "/api/receipts", receipt, rate_limit_retries=0)
        except BotlnekError as exc:
            self.log(f"botlnek: warning: could not record the receipt: {exc}")


async def run_command(
    command: list[str],
    frame: dict[str, Any],
    extra_env: dict[str, str],
    *,
    timeout: float | None,
    log: Callable[[str], None],
) -> Run:
    """Run `command` for a frame: its facts in the environment, the aggregate's
    state in a file; killed with what it started after `timeout` seconds."""
    with tempfile.NamedTemporaryFile(
        "w", prefix="botlnek-state-", suffix=".json", delete=False
    ) as state:
        json.dump(frame["state"], state)
    env = {
        **os.environ,
        "BOTLNEK_DOMAIN": frame["domain"],
        "BOTLNEK_AGGREGATE": frame["aggregate"],
        "BOTLNEK_VERSION": str(frame["version"]),
        "BOTLNEK_POSITION": str(frame["position"]),
        "BOTLNEK_STATE_FILE": state.name,
        **extra_env,
    }
    started = time.monotonic()
    try:
        # Its own process group, so a timeout ends whatever the command started.
        process = await asyncio.create_subprocess_exec(
            *command, env=env, start_new_session=True
        )
        try:
            code = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return Run("timeout", None, time.monotonic() - started)
    except OSError as exc:
        log(f"watch: cannot run {command[0]}: {exc}")
        return Run("failure", None, time.monotonic() - started)
    finally:
        os.unlink(state.name)
    outcome = "success" if code == 0 else "failure"
    return Run(outcome, code, time.monotonic() - started)
