"""What happens after a version commits: the seam between the store and delivery.

The store calls versions_committed() from transaction.on_commit, never before the
commit. Live delivery (websockets, SSE) hangs off this function; the database stays
the source of truth, so a notification here only says "something changed".
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger("botlnek.events")


@dataclass(frozen=True)
class VersionCommitted:
    domain: str
    aggregate: str
    version: int
    position: int


Listener = Callable[[Sequence[VersionCommitted]], None]
_listeners: list[Listener] = []


def on_versions_committed(listener: Listener) -> Listener:
    """Register a listener; usable as a decorator. Listeners must not block."""
    _listeners.append(listener)
    return listener


def versions_committed(committed: Sequence[VersionCommitted]) -> None:
    for listener in _listeners:
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
    loop = _server_loop
    return loop if loop is not None and loop.is_running() else None


def bind_server_loop(app):
    """Wrap the ASGI application so the loop serving it is known to listeners."""

    async def bound(scope, receive, send):
        global _server_loop
        loop = asyncio.get_running_loop()
        if _server_loop is not loop:
            _server_loop = loop
        await app(scope, receive, send)

    return bound
