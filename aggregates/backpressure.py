"""Knowing when a websocket's reader has stopped reading.

An ASGI server may make `send` wait while a socket's buffer is full (uvicorn does);
daphne never does, so a stalled reader would make its buffer grow without bound.
Under daphne, the send callable is `partial(server.handle_reply, protocol)`, and the
protocol's Twisted transport tells a registered push producer to pause when its
write buffer is full and to resume once it drained. WritePressure is that producer.
"""

import asyncio
import functools
import logging

logger = logging.getLogger("botlnek.live")


class WritePressure:
    """`await pressure.writable()` returns once the socket can take more."""

    def __init__(self, protocol=None) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.protocol = protocol

    def close(self, code: int, reason: str) -> bool:
        """Close with `code` and `reason`; False when the caller must do it by ASGI.

        Under daphne the ASGI close cannot carry either 1008 or 1013, nor a reason:
        autobahn's public close accepts only 1000 and 3000-4999, and daphne drops
        the reason.
        """
        send_close = getattr(self.protocol, "sendCloseFrame", None)
        if send_close is None:
            return False
        # A reader far behind answers the close late; autobahn's default would
        # then abort the connection, and the frames already queued with it.
        self.protocol.closeHandshakeTimeout = 60
        send_close(code=code, reasonUtf8=reason.encode()[:123], isReply=False)
        return True

    async def writable(self) -> None:
        await self._writable.wait()

    @property
    def max_message_size(self) -> int:
        """The largest message the server will send (0: no limit, or unknown)."""
        return getattr(self.protocol, "maxMessagePayloadSize", 0) or 0

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


def watch(send) -> WritePressure:
    """A WritePressure for the connection behind an ASGI `send`, where it can tell."""
    protocol = send.args[0] if isinstance(send, functools.partial) else None
    pressure = WritePressure(protocol)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "registerProducer"):
        return pressure  # not daphne: nothing to watch (or send waits by itself)
    # daphne upgrades a connection by handing the HTTP channel's transport to the
    # websocket protocol, but the HTTP channel stays registered as the transport's
    # producer; its part is over, so the websocket's watcher takes its place.
    from twisted.web.http import HTTPChannel

    if isinstance(getattr(transport, "producer", None), HTTPChannel):
        transport.unregisterProducer()
    try:
        transport.registerProducer(pressure, True)
    except RuntimeError:
        logger.warning("cannot watch the write buffer of %r", protocol)
    return pressure
