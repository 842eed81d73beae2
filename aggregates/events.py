"""What happens after a version commits: the seam between the store and delivery.

The store calls versions_committed() from transaction.on_commit, never before the
commit. Live delivery (websockets, SSE) hangs off this function; the database stays
the source of truth, so a notification here only says "something changed".
"""

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
