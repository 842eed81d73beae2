"""`botlnek watch --rule`: the thin executor of a rule the server evaluates.

It runs CMD for each `fired` event of the rule, in seq order, retrying a failing
CMD with backoff, then posts one receipt carrying the rule and the event's seq.
Events come in delta mode (no state in the frame, whatever the aggregate's size);
the state as of the event's version is fetched over HTTP for each run.
It keeps no local state: it resumes after the highest seq that has a receipt
under its name, so a watcher restarted anywhere neither skips nor repeats a
firing (a crash between CMD's end and its receipt can repeat that one run).

Two watchers of the same name never run the same event: only the holder of the
name's lease on the server runs anything (`POST …/rules/{r}/leases`, renewed
every third of its life). Another one waits, and takes over when the holder
stops renewing — it died, or lost the server for longer than the lease.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregates.client.http import BotlnekError, Client
from aggregates.client.watch import Run, run_with_state

LEASE_SECONDS = 30


class LeaseLost(Exception):
    """Another watcher of this name holds the lease now."""


class RuleWatcher:
    def __init__(
        self,
        client: Client,
        *,
        domain: str,
        rule: str,
        command: list[str],
        name: str = "watch",
        timeout: float | None = None,
        retries: int = 3,
        from_start: bool = False,
        backoff: float = 1.0,
        lease_seconds: int = LEASE_SECONDS,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ):
        self.client = client
        self.domain = domain
        self.rule = rule
        self.command = command
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.from_start = from_start
        self.backoff = backoff
        self.lease_seconds = lease_seconds
        self.log = log
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.path = f"/api/domains/{domain}/rules/{rule}"
        self.lost = asyncio.Event()

    async def run(self) -> None:
        """Watch until SIGTERM or SIGINT, which end it between two events."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                if not await self._take_lease(stop):
                    return
                renewing = asyncio.ensure_future(self._renew())
                try:
                    await self._follow(stop)
                finally:
                    renewing.cancel()
                if stopping.is_set():
                    return
                self.log(f"watch: lost the lease of {self.name!r}; standing by")
        finally:
            stop.cancel()
            await asyncio.to_thread(self._release)

    async def _take_lease(self, stop: asyncio.Future) -> bool:
        """Wait until this watcher holds the name's lease; False if stopped first."""
        waiting = False
        while not stop.done():
            held, lease = await asyncio.to_thread(self._lease)
            if held:
                self.lost.clear()
                return True
            if not waiting:
                self.log(
                    f"watch: {self.name!r} is held by {lease['holder']} until "
                    f"{lease['expires_at']}; standing by"
                )
                waiting = True
            await asyncio.wait({stop}, timeout=min(5, self.lease_seconds / 3))
        return False

    def _lease(self) -> tuple[bool, dict[str, Any]]:
        body = {"watcher": self.name, "holder": self.holder}
        body["seconds"] = self.lease_seconds
        try:
            return True, self.client.request("POST", f"{self.path}/leases", body)
        except BotlnekError as exc:
            if exc.status == 409:
                return False, exc.body
            raise

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held, _ = await asyncio.to_thread(self._lease)
            except BotlnekError as exc:
                self.log(f"watch: could not renew the lease: {exc}")
                continue  # it may still be ours: the next renewal tells
            if not held:
                self.lost.set()
                return

    def _release(self) -> None:
        path = f"{self.path}/leases/{self.name}?holder={self.holder}"
        with contextlib.suppress(BotlnekError):  # else it expires by itself
            self.client.request("DELETE", path)

    def resume_after(self) -> int:
        """The highest seq with a receipt of this name; without any, the rule's
        latest seq (only new events), or 0 with --from-start."""
        receipts = self.client.request(
            "GET", f"{self.path}/receipts?watcher={self.name}&limit=1"
        )["receipts"]
        if receipts:
            return receipts[0]["seq"]
        if self.from_start:
            return 0
        return self.client.request("GET", self.path)["latest_seq"]

    async def _follow(self, stop: asyncio.Future) -> None:
        after = await asyncio.to_thread(self.resume_after)
        events = self.client.subscribe_rule(
            self.domain,
            self.rule,
            after_seq=after,
            mode="delta",
            on_subscribed=lambda latest: self.log(
                f"watch: following rule {self.rule} of {self.domain} after seq "
                f"{after} (latest {latest})"
            ),
        )
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            while True:
                following = asyncio.ensure_future(anext(events))
                await asyncio.wait(
                    {following, stop, lost}, return_when=asyncio.FIRST_COMPLETED
                )
                if not following.done():
                    following.cancel()
                    await asyncio.gather(following, return_exceptions=True)
                    return
                await self.handle(following.result())
                if self.lost.is_set():
                    return  # another watcher takes it from here
        finally:
            lost.cancel()
            await events.aclose()

    async def handle(self, event: dict[str, Any]) -> None:
        if event["event"] != "fired":
            return
        environment = {
            "BOTLNEK_RULE": self.rule,
            "BOTLNEK_RULE_SEQ": str(event["seq"]),
            "BOTLNEK_REASON": event["reason"] or "",
            "BOTLNEK_LATE": "1" if event["late"] else "0",
            # What the rule used: per reference, the aggregates and versions.
            "BOTLNEK_INPUTS": json.dumps(event.get("inputs") or {}),
        }
        attempt = 0
        while True:
            # Every try has the state afresh, whatever the last one did to it.
            with tempfile.TemporaryDirectory(prefix="botlnek-") as directory:
                run = await run_with_state(
                    self.client,
                    self.command,
                    event,
                    environment,
                    Path(directory) / "state.json",
                    timeout=self.timeout,
                    log=self.log,
                )
            self.log(
                f"watch: {event['aggregate']} v{event['version']} (seq {event['seq']})"
                f": {run.outcome} (exit {run.exit_code}, {run.duration_s:.1f} s)"
            )
            if run.outcome == "success" or attempt >= self.retries:
                break
            attempt += 1
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        await asyncio.to_thread(self.record, event, run)

    def record(self, event: dict[str, Any], run: Run) -> None:
        """The receipt is where a restarted watcher resumes: insist a little."""
        receipt = {
            "watcher": self.name,
            "domain": event["domain"],
            "aggregate": event["aggregate"],
            "version": event["version"],
            "outcome": run.outcome,
            "exit_code": run.exit_code,
            "duration_s": round(run.duration_s, 3),
            "detail": run.detail,
            "rule": self.rule,
            "seq": event["seq"],
        }
        error = None
        # One key for every try: a try whose answer was lost, then retried, is
        # still one receipt (the server answers the retry with the first answer).
        key = uuid.uuid4().hex
        for attempt in range(5):
            try:
                self.client.request(
                    "POST", "/api/receipts", receipt, idempotency_key=key
                )
                return
            except BotlnekError as exc:
                if exc.status is not None and exc.status < 500 and exc.status != 429:
                    self.log(f"botlnek: warning: the receipt was refused: {exc}")
                    return
                error = exc
            time.sleep(min(2**attempt, 10))
        self.log(f"botlnek: warning: could not record the receipt: {error}")
