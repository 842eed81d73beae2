"""The delivery worker: each server process delivers its webhooks from a process of
its own, which it starts, restarts and takes down with it.

Why a process: a post into a domain with ten webhooks makes ten signed POSTs. Made
by the server process, they took its event loop and its GIL from the posts (ingest
fell to a third). In a process of their own they run on another core, and at a
lower CPU priority (NICENESS): on a machine with no core to spare, taking posts
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
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

logger = logging.getLogger("botlnek.webhooks")

NICENESS = 19  # added to the server's: what CPU the posts leave
REPORT_SECONDS = 0.5
STOP_GRACE_SECONDS = 2
_PR_SET_PDEATHSIG = 1  # prctl(2)
_REPORTS_FD = "BOTLNEK_WORKER_REPORTS_FD"
_SERVER_PID = "BOTLNEK_WORKER_SERVER_PID"


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

    def watch(self, domain: str) -> None:
        """A webhook was made in `domain`."""
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
            _REPORTS_FD: str(reports_write),
            _SERVER_PID: str(os.getpid()),
        }
        # Started from the thread of the event loop, which lives as long as the
        # process: the kernel's parent-death signal is tied to the starting thread.
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "aggregates.webhooks.worker"],
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
    from aggregates import metrics

    with open(fd, "rb") as reports:
        for line in reports:
            for domain, outcome, attempts in json.loads(line):
                metrics.webhooks_delivered(domain, outcome, attempts)


worker = WorkerProcess()


# The worker process's side


def main() -> None:
    import django

    django.setup()
    server = int(os.environ[_SERVER_PID])
    _end_with(server)
    os.nice(NICENESS)
    reports = open(int(os.environ[_REPORTS_FD]), "w", buffering=1)  # noqa: SIM115
    holder = f"{socket.gethostname()}:{server}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    asyncio.run(_work(holder, reports))


def _end_with(server: int) -> None:
    """Have the kernel send SIGTERM when the server process ends (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the end of stdin tells
    if os.getppid() != server:
        sys.exit(0)  # it ended before the signal was asked for


async def _work(holder: str, reports) -> None:
    from aggregates.webhooks.delivery import Deliverer

    loop = asyncio.get_running_loop()
    deliverer = Deliverer(holder)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer
    )

    async def listen() -> None:
        while line := await stdin.readline():
            what, domain = json.loads(line)
            if what == "watch":
                deliverer.watch(domain)
            else:
                deliverer.committed(domain)
        stop.set()  # the server is gone

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            _report(deliverer, reports)

    tasks = [
        asyncio.ensure_future(work)
        for work in (deliverer.run(), listen(), report(), stop.wait())
    ]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    started = time.monotonic()
    await deliverer.stop(STOP_GRACE_SECONDS)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _report(deliverer, reports)
    logger.info("delivery worker stopped in %.2f s", time.monotonic() - started)


def _report(deliverer, reports) -> None:
    if deliverer.outcomes:
        counted = [[*key, attempts] for key, attempts in deliverer.outcomes.items()]
        deliverer.outcomes.clear()
        with contextlib.suppress(BrokenPipeError):  # the server is gone
            reports.write(json.dumps(counted) + "\n")


if __name__ == "__main__":
    main()
