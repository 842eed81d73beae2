"""Running ORM work from async code on long-lived worker threads.

Each call runs in one hop to a worker thread. Afterwards a PostgreSQL connection goes
back to the pool, as Django does at the end of a request; a SQLite connection stays
open in its long-lived thread, since reopening it (and rerunning its PRAGMAs) costs
more than the query it served. Writes on SQLite
go through a single thread: one writer at a time, queued in the process, instead of
many threads busy-waiting on SQLite's lock (whose retries are unfair and make p99
explode).
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection, connections

P = ParamSpec("P")
R = TypeVar("R")


@cache
def _readers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="botlnek-read")


@cache
def _writers() -> ThreadPoolExecutor:
    workers = 1 if connection.vendor == "sqlite" else 8
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="botlnek-write")


def finish() -> None:
    """Wait for the database work in flight (a server stopping)."""
    for executor in (_readers(), _writers()):
        executor.shutdown(wait=True)


def _call(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return func(*args, **kwargs)
    finally:
        for conn in connections.all(initialized_only=True):
            if conn.vendor != "sqlite" or conn.in_atomic_block:
                conn.close()


async def read(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a read-only ORM function off the event loop."""
    run = sync_to_async(_call, thread_sensitive=False, executor=_readers())
    return await run(func, *args, **kwargs)


async def write(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a writing ORM function off the event loop, queued behind other writes."""
    run = sync_to_async(_call, thread_sensitive=False, executor=_writers())
    return await run(func, *args, **kwargs)
