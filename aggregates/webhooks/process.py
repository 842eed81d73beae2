"""The delivery worker process (`python -m aggregates.webhooks.process`, started
by aggregates.webhooks.worker): the deliverer on an event loop of its own, woken
by the server's lines on stdin, reporting attempts on a pipe, until the server
goes."""

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid

import django

logger = logging.getLogger("botlnek.webhooks")

NICENESS = 19  # added to the server's: what CPU the posts leave
REPORT_SECONDS = 0.5
STOP_GRACE_SECONDS = 2
# Environment variables by which the server hands the worker its report pipe and
# its own pid.
REPORTS_FD = "BOTLNEK_WORKER_REPORTS_FD"
SERVER_PID = "BOTLNEK_WORKER_SERVER_PID"
_PR_SET_PDEATHSIG = 1  # prctl(2)


def main() -> None:

    django.setup()
    server = int(os.environ[SERVER_PID])
    _end_with(server)
    os.nice(NICENESS)
    reports = open(int(os.environ[REPORTS_FD]), "w", buffering=1)  # noqa: SIM115
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
    # This module is the process's entry: Django is set up (in main) before
    # anything that imports a model.
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
