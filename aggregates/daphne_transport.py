"""The daphne seam: a connection's write buffer, close frames ASGI cannot send,
and the server's lifecycle (its start, its shutdown, its exit).

Why it exists: daphne's ASGI `send` never waits, so a reader that stops reading
(a websocket's, or a Server-Sent Events stream's) would make its socket's buffer
(and the server's memory) grow without bound; ASGI's close cannot carry what a
slow or limited subscriber must be told (autobahn accepts only 1000 and 3000-4999
from daphne, and daphne drops the reason); daphne cancels every request the
moment it is told to stop; and daphne, knowing no ASGI lifespan, says nothing of
its start or end. Under daphne this module therefore reaches past ASGI.
It touches exactly:

- daphne (pinned >=4.2,<4.3): the `send` it hands the application is
  `functools.partial(Server.handle_reply, protocol)`, where `protocol` is its
  `WebSocketProtocol`, or for HTTP its `WebRequest` (a `twisted.web.http.Request`);
  `Server.kill_all_applications`, which daphne registers as a "before shutdown"
  trigger of Twisted's reactor;
- autobahn (pinned <27): `protocol.sendCloseFrame(code=, reasonUtf8=, isReply=)`,
  `protocol.closeHandshakeTimeout` and `protocol.maxMessagePayloadSize`;
- Twisted (pinned <27): `protocol.transport.registerProducer(producer, True)`,
  `unregisterProducer()` and `.producer`, and `twisted.web.http.HTTPChannel`,
  which daphne leaves registered as the producer after the upgrade; for HTTP,
  `Request.registerProducer(producer, True)`, `unregisterProducer()`, `.producer`
  and `.channel.transport.abortConnection()`; and the reactor's
  `callWhenRunning`, `getReaders`, `addSystemEventTrigger` and
  `removeSystemEventTrigger`, whose trigger ids are
  `(event, (phase, callable, args, kwargs))`.

attach(send) answers a WritePressure for a websocket, HttpStream(send) one for a
streamed HTTP response. Under another ASGI server there is nothing to attach to:
such a server's `send` waits by itself (uvicorn does) and close codes pass through
ASGI. Under daphne, a protocol missing any of the above raises SeamError — the
connection fails loudly instead of running unbounded. when_running() and
finish_when_stopped() tie the server's background work (the rules clock, the
delivery worker) to daphne's reactor; they answer False in a process not serving
under daphne, and raise SeamError under a daphne whose reactor lacks them, rather
than leave that work unstarted in silence. tests/test_daphne_seam.py attaches to
the real classes of the installed versions, and runs a real reactor.
"""

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable


def command(host: str, port: int, *options: str) -> list[str]:
    """The command line that serves Botlnek with daphne on `host`:`port` (the
    `serve` command runs it; so do the tests and the benchmarks)."""
    return [
        sys.executable,
        "-m",
        "daphne",
        *options,
        "-b",
        host,
        "-p",
        str(port),
        "botlnek_site.asgi:application",
    ]


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


# The scope key under which the application's entry (aggregates.serving) keeps the
# server's own `send` of a websocket: middleware such as sessions wraps the `send`
# a consumer gets, which the seam would not recognize.
SERVER_SEND = "botlnek.server_send"

_PROTOCOL_NEEDS = ("sendCloseFrame", "closeHandshakeTimeout", "maxMessagePayloadSize")
_TRANSPORT_NEEDS = ("registerProducer", "unregisterProducer", "producer")


def attach(send, scope: dict | None = None) -> WritePressure:
    """A WritePressure for the websocket behind this ASGI `send` (or behind the
    server's own send kept in its `scope`)."""
    send = (scope or {}).get(SERVER_SEND, send)
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
            "aggregates.daphne_transport supports"
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


_REQUEST_NEEDS = ("registerProducer", "unregisterProducer", "producer", "channel")


class HttpStream:
    """A streamed HTTP response's connection (Server-Sent Events): `await
    writable()` returns once its socket can take more, `paused` says it cannot,
    abort() drops the connection. Until attach(), and under another ASGI server,
    it never waits and cannot abort."""

    def __init__(self, send) -> None:
        self._send = send
        self._request = None
        self._pressure = WritePressure()
        self._done: list[Callable[[], None]] = []

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the response is over, however it ended (the
        client gone while the body waited to be sent included)."""
        self._done.append(callback)

    def attach(self) -> None:
        """Watch the write buffer (the response is about to stream)."""
        if self._request is not None or not _is_daphnes(self._send):
            return
        request = self._send.args[0]
        missing = [name for name in _REQUEST_NEEDS if not hasattr(request, name)]
        transport = getattr(getattr(request, "channel", None), "transport", None)
        if not hasattr(transport, "abortConnection"):
            missing.append("channel.transport.abortConnection")
        if missing:
            raise SeamError(
                f"daphne's HTTP request {type(request).__name__} lacks "
                f"{', '.join(missing)}: this daphne/Twisted is not one "
                "aggregates.daphne_transport supports"
            )
        request.registerProducer(self._pressure, True)
        self._request = request

    def detach(self) -> None:
        """The response is over (or the connection gone): stop watching, and call
        back whoever asked."""
        try:
            self._unregister()
        finally:
            done, self._done = self._done, []
            for callback in done:
                callback()

    def _unregister(self) -> None:
        request, self._request = self._request, None
        if request is None or request.producer is not self._pressure:
            return
        if getattr(request, "channel", None) is None:
            request.producer = None  # the connection is gone, and its channel
        else:
            request.unregisterProducer()

    async def writable(self) -> None:
        await self._pressure.writable()

    @property
    def paused(self) -> bool:
        return self._pressure.paused

    def abort(self) -> bool:
        """Drop the connection at once (what is buffered for it is dropped too);
        False when that is not possible here."""
        channel = getattr(self._request, "channel", None)
        if channel is None or channel.transport is None:
            return False
        channel.transport.abortConnection()
        return True

    def paced(self, send):
        """`send`, waiting before each part of the body while the socket is full."""

        async def paced_send(message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    await self.writable()
                else:  # the last part: Twisted wants its producer gone first
                    self._unregister()
            await send(message)

        return paced_send


# The server's lifecycle: what runs when daphne's reactor starts and once it stopped.

_REACTOR_NEEDS = (
    "callWhenRunning",
    "addSystemEventTrigger",
    "removeSystemEventTrigger",
    "getReaders",
)

# CPython 3.11 before 3.11.8 can crash (a segmentation fault) while the interpreter
# finalizes if an asyncio future is still referenced then (python/cpython#113566,
# fixed in 3.11.8): seen here as a crash in asyncio.Queue.get when daphne, told to
# stop while requests kept arriving, left coroutines suspended. There, a stopped
# server exits at once, without finalizing, once its work is finished.
EXIT_AT_ONCE = sys.version_info < (3, 11, 8)


def _daphnes_reactor():
    """The reactor daphne runs on, in a process serving under daphne; None in any
    other process. A daphne whose reactor lacks what this seam uses raises."""
    if "daphne.server" not in sys.modules:
        return None
    reactor = sys.modules.get("twisted.internet.reactor")
    missing = [name for name in _REACTOR_NEEDS if not hasattr(reactor, name)]
    if missing:
        raise SeamError(
            f"daphne runs, but Twisted's reactor ({type(reactor).__name__}) lacks "
            f"{', '.join(missing)}: this daphne/Twisted is not one "
            "aggregates.daphne_transport supports"
        )
    return reactor


def when_running(callback: Callable[[], None]) -> bool:
    """Under daphne, call `callback` once its reactor (and so its event loop) runs
    (Twisted's callWhenRunning), and answer True; elsewhere, False (another ASGI
    server says so by the lifespan protocol)."""
    reactor = _daphnes_reactor()
    if reactor is None:
        return False
    reactor.callWhenRunning(callback)
    return True


def finish_when_stopped(finish: Callable[[], None]) -> bool:
    """Under daphne, call `finish` once its loop has stopped (Twisted's "after
    shutdown" trigger), then, where EXIT_AT_ONCE, end the process at once; answer
    True. Elsewhere, False."""
    reactor = _daphnes_reactor()
    if reactor is None:
        return False
    reactor.addSystemEventTrigger("after", "shutdown", _finish_then_exit, finish)
    return True


def _finish_then_exit(finish: Callable[[], None]) -> None:
    finish()
    if EXIT_AT_ONCE:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def drain_before_stopping(send, drain: Callable[[], Awaitable[None]]) -> bool:
    """Under daphne (this `send` is its), have its shutdown await `drain()` before
    it cancels whatever still runs; False elsewhere.

    daphne's own "before shutdown" trigger, Server.kill_all_applications, cancels
    every request the moment the server is told to stop: an answer being computed
    is lost, though its write may commit. It is taken out and run after `drain()`
    instead, by a trigger whose Deferred holds the shutdown until then.
    """
    if not _is_daphnes(send):
        return False
    from twisted.internet import defer

    server = send.func.__self__
    reactor = _daphnes_reactor()
    kill = server.kill_all_applications
    try:
        reactor.removeSystemEventTrigger(("shutdown", ("before", kill, (), {})))
    except (KeyError, ValueError) as exc:
        raise SeamError(
            "daphne's shutdown trigger Server.kill_all_applications is not "
            "registered as aggregates.daphne_transport expects"
        ) from exc

    async def drain_then_kill() -> None:
        try:
            await drain()
        finally:
            killed = kill()
            if isinstance(killed, defer.Deferred):
                await killed.asFuture(asyncio.get_running_loop())

    def before_shutdown() -> defer.Deferred:
        return defer.Deferred.fromFuture(asyncio.ensure_future(drain_then_kill()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True


def stop_listening(send) -> None:
    """Under daphne, close the ports it listens on: new connections are refused
    (a proxy sends them to another process); those open stay."""
    if not _is_daphnes(send):
        return
    from twisted.internet.tcp import Port

    server = send.func.__self__
    for reader in _daphnes_reactor().getReaders():
        if isinstance(reader, Port) and reader.factory is server.http_factory:
            reader.stopListening()


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
