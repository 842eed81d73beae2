"""The delivery worker: each server process delivers its webhooks from a process of
its own, which it starts, restarts and takes down with it.

Why a process: a post into a domain with ten webhooks makes ten signed POSTs. Made
by the server process, they took its event loop and its GIL from the posts (ingest
fell to a third). In a process of their own they run on another core, and at a
lower CPU priority (process.NICENESS): on a machine with no core to spare, taking posts
comes first and the deliveries catch up afterwards, from their cursors in the
database, where nothing is lost.

    server process ── after each commit, the domain's key ──▶ worker's stdin
    server process ◀── attempts by (domain, outcome), for /metrics ── report pipe

Neither side ever waits for the other: a full pipe drops the wake-up (the worker
looks for work every TICK_SECONDS anyway). The worker stops when the server goes:
on Linux the kernel sends it SIGTERM when the server process ends, however it
ends; elsewhere, the end of its stdin says the same. It then lets each webhook
finish the attempt in flight and save, gives its leases up, and exits.
"""

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading

from aggregates import metrics
from aggregates.webhooks.process import REPORTS_FD, SERVER_PID

logger = logging.getLogger("botlnek.webhooks")


class WorkerProcess:
    """The server process's side: starts the worker and keeps it running, forwards
    commits to it, and counts its reports in /metrics."""

    def __init__(self) -> None:
        self.stdin: int | None = None  # the worker's stdin, while it runs
        self.lock = threading.Lock()  # no write to it once it is closed

    def committed(self, committed) -> None:
        """A listener of the commit events (on the writer's thread)."""
        for domain in {item.domain for item in committed}:
            self._tell("committed", domain)

    def webhooks_changed(self, domains) -> None:
        """A listener of webhooks_changed (after commit, on the writer's thread)."""
        for domain in set(domains):
            self._tell("watch", domain)

    def _tell(self, what: str, domain: str) -> None:
        line = json.dumps([what, domain]).encode() + b"\n"
        with self.lock:
            if self.stdin is None:
                return
            # A line < PIPE_BUF is written whole or not at all; not at all when
            # the worker is busy or gone (it looks for work every tick anyway).
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self.stdin, line)

    async def run(self) -> None:
        """Run the worker until the server stops (background work of the server
        process: when the worker dies, this ends with an error and is restarted)."""
        reports_read, reports_write = os.pipe()
        env = {
            **os.environ,
            # The server's own imports, whatever started it.
            "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path),
            REPORTS_FD: str(reports_write),
            SERVER_PID: str(os.getpid()),
        }
        # Started from the thread of the event loop, which lives as long as the
        # process: the kernel's parent-death signal is tied to the starting thread.
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "aggregates.webhooks.process"],
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(reports_write,),
            )
        except OSError:
            os.close(reports_read)
            raise
        finally:
            os.close(reports_write)
        os.set_blocking(process.stdin.fileno(), False)
        with self.lock:
            self.stdin = process.stdin.fileno()
        reader = threading.Thread(
            target=_count_reports,
            args=(reports_read,),
            name="botlnek-delivery-reports",
            daemon=True,
        )
        reader.start()
        try:
            while process.poll() is None:
                await asyncio.sleep(1)
        finally:
            with self.lock:
                self.stdin = None
                process.stdin.close()
            if process.poll() is None:
                process.terminate()
        raise RuntimeError(f"the delivery worker exited with {process.returncode}")


def _count_reports(fd: int) -> None:
    with open(fd, "rb") as reports:
        for line in reports:
            for domain, outcome, attempts in json.loads(line):
                metrics.webhooks_delivered(domain, outcome, attempts)


worker = WorkerProcess()
