"""What happens after a version commits: the seam between the store and delivery.

The store calls versions_committed() from transaction.on_commit, never before the
commit. Listeners are registered when the app is ready (aggregates.apps); the
database stays the source of truth, so an event here only says "something changed".
"""

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from aggregates import db
from aggregates.live import daphne_transport

logger = logging.getLogger("botlnek.events")


@dataclass(frozen=True)
class VersionCommitted:
    domain: str
    aggregate: str
    version: int
    position: int


Listener = Callable[[Sequence[VersionCommitted]], None]
_listeners: list[Listener] = []


def on_versions_committed(listener: Listener) -> None:
    """Register a listener (once). Listeners run on the writer's thread and must
    not block it."""
    if listener not in _listeners:
        _listeners.append(listener)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Register a listener for the duration of a block (tests capture events so)."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def versions_committed(committed: Sequence[VersionCommitted]) -> None:
    for listener in list(_listeners):
        try:
            listener(committed)
        except Exception:
            # The versions are committed whatever a listener does; subscribers catch
            # up from the database, so a failed notification must not fail the write.
            logger.exception(
                "listener %r failed for %d versions", listener, len(committed)
            )


# The server's event loop, so that listeners running on the writer thread can hand
# work to it instead of blocking the write (see bind_server_loop).
_server_loop: asyncio.AbstractEventLoop | None = None


def server_loop() -> asyncio.AbstractEventLoop | None:
    """The loop serving requests in this process, while it runs."""
    loop = _server_loop
    return loop if loop is not None and loop.is_running() else None


def server_stopped() -> bool:
    """This process served requests, and its loop no longer runs."""
    return _server_loop is not None and not _server_loop.is_running()


_stopping = False


def _stop_taking_requests() -> None:
    global _stopping
    _stopping = True


def _exit_when_done() -> None:
    """The loop has stopped: finish the database work in flight, then exit at once.

    Exiting the usual way would have the interpreter garbage-collect coroutines
    that daphne left suspended, which crashed CPython 3.11 (a segmentation fault
    in asyncio.Queue.get) when requests kept arriving during the shutdown.
    """
    db.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def bind_server_loop(app):
    """Wrap the ASGI application so the loop serving it is known to listeners, and
    so that a stopping server turns new requests away instead of starting them."""

    async def bound(scope, receive, send):
        global _server_loop
        loop = asyncio.get_running_loop()
        if _server_loop is not loop:
            _server_loop = loop
            daphne_transport.when_stopping(
                _stop_taking_requests, stopped=_exit_when_done
            )
        if _stopping and scope["type"] in ("http", "websocket"):
            await _turn_away(scope, send)
            return
        await app(scope, receive, send)

    return bound


async def _turn_away(scope, send) -> None:
    """503 (or a refused handshake): the client retries, on another process."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1012})
        return
    body = b'{"error": "unavailable", "detail": "the server is stopping; retry"}'
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
