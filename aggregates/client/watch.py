"""`botlnek watch`: run a command for each aggregate whose state satisfies a
condition, once (the first time) or on every version, and survive restarts.

Frames are handled one at a time, in position order, and the watcher's progress
(the last position handled and which aggregates fired) is saved atomically after
each frame that ran a command, else at least every SAVE_EVERY seconds and when it
stops. A restart resumes after the saved position: a trigger that became due
while the watcher was down fires then, and none fires twice — except that a crash
between a command finishing and the save runs that command once more. Frames
that ran nothing since the last save are evaluated again after a crash: their
counts give the same answer (an age() is asked at the new time).

It subscribes in delta mode: a frame carries the aggregate's counts, never its
state, so an aggregate of any size goes through. The state is fetched over HTTP
only when it is needed — for a command about to run, or to evaluate a condition
that asks an age() — and streamed into the command's state file.
"""

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


# Tries of a state fetch that failed in a way that may pass (no answer, or a 5xx).
FETCH_TRIES = 3
# Seconds between two saves of the progress while frames run nothing (a frame
# that ran a command is saved at once).
SAVE_EVERY = 1.0


@dataclass
class Run:
    outcome: str  # success | failure | timeout
    exit_code: int | None
    duration_s: float
    detail: str = ""


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
            mode="delta",
            on_subscribed=lambda latest: self.log(
                f"watch: following {self.domain} from position {progress.position}"
                f" (latest {latest})"
            ),
        )
        stop = asyncio.ensure_future(stopping.wait())
        saved_at = time.monotonic()
        # Where the state of the frame in hand goes, when it is fetched.
        scratch = tempfile.TemporaryDirectory(prefix="botlnek-watch-")
        self.fetched_state = Path(scratch.name) / "state.json"
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
                ran = await self.handle(frame, progress)
                progress.position = frame["position"]
                if ran or time.monotonic() - saved_at >= SAVE_EVERY:
                    progress.save(self.state_file)
                    saved_at = time.monotonic()
        finally:
            stop.cancel()
            progress.save(self.state_file)
            await frames.aclose()
            scratch.cleanup()

    async def handle(self, frame: dict[str, Any], progress: Progress) -> bool:
        """Run the command if the frame calls for it; whether it did."""
        aggregate = frame["aggregate"]
        if not aggregate.startswith(self.prefix):
            return False
        if not self.every and aggregate in progress.fired:
            return False
        run = await self.evaluate_and_run(frame)
        if run is None:
            return False
        self.log(
            f"watch: {aggregate} v{frame['version']}: {run.outcome}"
            f" (exit {run.exit_code}, {run.duration_s:.1f} s)"
        )
        if run.outcome == "success" and not self.every:
            progress.fired[aggregate] = frame["version"]
        await asyncio.to_thread(self.record, frame, run)
        return True

    async def evaluate_and_run(self, frame: dict[str, Any]) -> Run | None:
        """The command's run if the condition holds for this version, else None."""
        state_file = self.fetched_state
        now = self.clock()
        started = time.monotonic()
        try:
            try:
                holds = self.condition(Facts(frame["counts"], NO_SOURCE_TIMES, now))
            except StateNeeded:
                newest = await asyncio.to_thread(self.source_times, frame, state_file)
                holds = self.condition(Facts(frame["counts"], newest, now))
            if not holds:
                return None
            return await run_with_state(
                self.client,
                self.command,
                frame,
                {},
                state_file,
                timeout=self.timeout,
                log=self.log,
            )
        except BotlnekError as exc:
            return fetch_failed(frame, exc, started, self.log)
        finally:
            state_file.unlink(missing_ok=True)

    def source_times(
        self, frame: dict[str, Any], state_file: Path
    ) -> dict[str, datetime]:
        """Each collection's newest source time, from the state as of the frame's
        version (fetched into `state_file`, where the command finds it)."""
        fetch_state(self.client, frame, state_file)
        state = json.loads(state_file.read_bytes())
        if state is None:  # pruned since: no source times, ages are infinite
            return {}
        return Facts.from_state(state).newest

    def record(self, frame: dict[str, Any], run: Run) -> None:
        receipt = {
            "watcher": self.name,
            "domain": frame["domain"],
            "aggregate": frame["aggregate"],
            "version": frame["version"],
            "outcome": run.outcome,
            "exit_code": run.exit_code,
            "duration_s": round(run.duration_s, 3),
            "detail": run.detail,
        }
        try:
            # Best effort, and never worth holding up the next frame: no waiting
            # out a rate limit here.
            self.client.request("POST", "/api/receipts", receipt, rate_limit_retries=0)
        except BotlnekError as exc:
            self.log(f"botlnek: warning: could not record the receipt: {exc}")


class StateNeeded(Exception):
    """A condition asked an age(): source times are in the state only."""


class NoSourceTimes(Mapping[str, datetime]):
    """The newest source times of facts made from a delta frame's counts: any
    question about them raises StateNeeded."""

    def __getitem__(self, collection: str) -> datetime:
        raise StateNeeded

    def __iter__(self) -> Iterator[str]:
        raise StateNeeded

    def __len__(self) -> int:
        raise StateNeeded


NO_SOURCE_TIMES = NoSourceTimes()


def fetch_state(client: Client, frame: dict[str, Any], destination: Path) -> None:
    """Write the aggregate's state as of the frame's version into `destination`,
    streamed: JSON null for a key with no version (a rule's expected key nobody
    posted to) or once the aggregate is gone (pruned, or its domain deleted). A
    failure that may pass is tried again, FETCH_TRIES times in all. Blocking."""
    if frame["version"] == 0:
        destination.write_text("null")
        return
    path = (
        f"/api/domains/{quote(frame['domain'], safe='')}/aggregates/"
        f"{quote(frame['aggregate'], safe='')}?version={frame['version']}"
    )
    for attempt in range(FETCH_TRIES):
        try:
            client.download(path, destination)
            return
        except BotlnekError as exc:
            if exc.status == 404:
                destination.write_text("null")
                return
            lasting = exc.status is not None and exc.status < 500
            if lasting or attempt == FETCH_TRIES - 1:
                raise
        time.sleep(2**attempt)


def fetch_failed(
    frame: dict[str, Any],
    exc: BotlnekError,
    started: float,
    log: Callable[[str], None],
) -> Run:
    """A run that could not start for want of the state: a failure, like any."""
    detail = f"could not fetch the state: {exc}"
    log(f"watch: {frame['aggregate']} v{frame['version']}: {detail}")
    return Run("failure", None, time.monotonic() - started, detail)


async def run_with_state(
    client: Client,
    command: list[str],
    frame: dict[str, Any],
    extra_env: dict[str, str],
    state_file: Path,
    *,
    timeout: float | None,
    log: Callable[[str], None],
) -> Run:
    """Run `command` for a frame: its facts in the environment, the aggregate's
    state as of its version in `state_file` (fetched first unless it is there
    already); killed with what it started after `timeout` seconds."""
    if not state_file.exists():
        started = time.monotonic()
        try:
            await asyncio.to_thread(fetch_state, client, frame, state_file)
        except BotlnekError as exc:
            return fetch_failed(frame, exc, started, log)
    env = {
        **os.environ,
        "BOTLNEK_DOMAIN": frame["domain"],
        "BOTLNEK_AGGREGATE": frame["aggregate"],
        "BOTLNEK_VERSION": str(frame["version"]),
        "BOTLNEK_POSITION": str(frame["position"]),
        "BOTLNEK_STATE_FILE": str(state_file),
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
        return Run("failure", None, time.monotonic() - started, str(exc))
    outcome = "success" if code == 0 else "failure"
    return Run(outcome, code, time.monotonic() - started)
