"""The daphne seam: a websocket's write buffer, and close frames ASGI cannot send.

Why it exists: daphne's ASGI `send` never waits, so a reader that stops reading
would make its socket's buffer (and the server's memory) grow without bound; and
ASGI's close cannot carry what a slow or limited subscriber must be told (autobahn
accepts only 1000 and 3000-4999 from daphne, and daphne drops the reason). Under
daphne this module therefore reaches past ASGI. It touches exactly:

- daphne (pinned >=4.2,<4.3): the `send` it hands the application is
  `functools.partial(Server.handle_reply, protocol)`, where `protocol` is its
  `WebSocketProtocol`;
- autobahn (pinned <27): `protocol.sendCloseFrame(code=, reasonUtf8=, isReply=)`,
  `protocol.closeHandshakeTimeout` and `protocol.maxMessagePayloadSize`;
- Twisted (pinned <27): `protocol.transport.registerProducer(producer, True)`,
  `unregisterProducer()` and `.producer`, and `twisted.web.http.HTTPChannel`,
  which daphne leaves registered as the producer after the upgrade.

attach(send) answers a WritePressure. Under another ASGI server there is nothing to
attach to: such a server's `send` waits by itself (uvicorn does) and close codes
pass through ASGI. Under daphne, a protocol missing any of the above raises
SeamError — the connection fails loudly instead of running unbounded.
tests/test_daphne_seam.py attaches to the real classes of the installed versions.
"""

import asyncio
import functools
import sys
from collections.abc import Callable


class SeamError(RuntimeError):
    """daphne, autobahn or Twisted no longer offer what this module relies on."""


class WritePressure:
    """`await pressure.writable()` returns once the socket can take more.

    Registered as the transport's Twisted IPushProducer: Twisted pauses it when
    the socket's write buffer is full and resumes it once the buffer drained.
    """

    def __init__(self, protocol=None) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.protocol = protocol

    def close(self, code: int, reason: str) -> bool:
        """Close with `code` and `reason`; False when the caller must do it by ASGI
        (not under daphne)."""
        if self.protocol is None:
            return False
        # A reader far behind answers the close late; autobahn's default would
        # then abort the connection, and the frames already queued with it.
        self.protocol.closeHandshakeTimeout = 60
        self.protocol.sendCloseFrame(
            code=code, reasonUtf8=reason.encode()[:123], isReply=False
        )
        return True

    async def writable(self) -> None:
        await self._writable.wait()

    @property
    def max_message_size(self) -> int:
        """The largest message the server will send (0: no limit, or unknown)."""
        if self.protocol is None:
            return 0
        return self.protocol.maxMessagePayloadSize or 0

    @property
    def paused(self) -> bool:
        """The socket's buffer is full: its reader is not keeping up."""
        return not self._writable.is_set()

    # Twisted's IPushProducer, called on the reactor's (= the event loop's) thread.
    def pauseProducing(self) -> None:
        self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        self._writable.set()


_PROTOCOL_NEEDS = ("sendCloseFrame", "closeHandshakeTimeout", "maxMessagePayloadSize")
_TRANSPORT_NEEDS = ("registerProducer", "unregisterProducer", "producer")


def attach(send) -> WritePressure:
    """A WritePressure for the websocket behind this ASGI `send`."""
    if not _is_daphnes(send):
        return WritePressure()
    protocol = send.args[0]
    transport = getattr(protocol, "transport", None)
    missing = [name for name in _PROTOCOL_NEEDS if not hasattr(protocol, name)]
    missing += [
        f"transport.{name}" for name in _TRANSPORT_NEEDS if not hasattr(transport, name)
    ]
    if missing:
        raise SeamError(
            f"daphne's websocket protocol {type(protocol).__name__} lacks "
            f"{', '.join(missing)}: this daphne/autobahn/Twisted is not one "
            "aggregates.live.daphne_transport supports"
        )
    pressure = WritePressure(protocol)
    # daphne upgrades a connection by handing the HTTP channel's transport to the
    # websocket protocol, but the HTTP channel stays registered as the transport's
    # producer; its part is over, so the websocket's watcher takes its place.
    from twisted.web.http import HTTPChannel

    if isinstance(transport.producer, HTTPChannel):
        transport.unregisterProducer()
    try:
        transport.registerProducer(pressure, True)
    except RuntimeError as exc:  # another producer is registered
        raise SeamError(
            f"cannot watch the write buffer of {protocol!r}: {exc}"
        ) from exc
    return pressure


def when_running(callback: Callable[[], None]) -> None:
    """Under daphne, call `callback` once its reactor (and so its event loop) runs
    (Twisted's callWhenRunning); elsewhere, nothing."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and "daphne.server" in sys.modules:
        reactor.callWhenRunning(callback)


def when_stopping(callback: Callable[[], None], *, stopped: Callable[[], None]) -> None:
    """Under daphne, call `callback` when it begins to shut down (Twisted's "before
    shutdown" trigger, while the event loop still serves) and `stopped` once its
    loop has stopped (the "after shutdown" trigger); elsewhere, nothing."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and "daphne.server" in sys.modules:
        reactor.addSystemEventTrigger("before", "shutdown", callback)
        reactor.addSystemEventTrigger("after", "shutdown", stopped)


def _is_daphnes(send) -> bool:
    # Looked up, not imported: importing daphne.server installs Twisted's reactor,
    # which no process but daphne's own should do. Serving under daphne imported it.
    server = sys.modules.get("daphne.server")
    return (
        server is not None
        and isinstance(send, functools.partial)
        and getattr(send.func, "__func__", None) is server.Server.handle_reply
        and len(send.args) == 1
    )
