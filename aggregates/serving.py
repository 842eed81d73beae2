"""What a serving process does besides answering requests: it knows the event loop
that serves (so work on other threads can hand work to it), runs background work
on it (the rules clock), and stops cleanly.

The background work starts with the server: under daphne, which knows no ASGI
lifespan, by Twisted's "when running" trigger (through the daphne seam); under
another ASGI server, by the lifespan startup message. Nothing starts it in a
process that only imports the application (the tests' in-process client).

Stopping (SIGTERM) answers what was asked: the server stops listening (new
connections are refused, so a proxy tries another process), turns away requests
that still arrive on open connections with a 503, ends its event streams (their
clients resume elsewhere), and lets the requests in flight finish, for up to
STOP_GRACE_SECONDS; only then does daphne cancel what still runs (websockets)
and the process exit. A write that commits is answered; one that is turned away
wrote nothing.
"""

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

from aggregates import daphne_transport, db

logger = logging.getLogger("botlnek.serving")

STOP_GRACE_SECONDS = 10

_server_loop: asyncio.AbstractEventLoop | None = None
_stopping = False
_background: list[Callable[[], Awaitable[None]]] = []
_tasks: list[asyncio.Task] = []
_at_stop: set[Callable[[], None]] = set()
_draining = False  # the daphne seam drains requests before daphne stops


class _InFlight:
    """HTTP requests this process is answering."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def started(self) -> None:
        self.count += 1
        self.idle.clear()

    def finished(self) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


_requests = _InFlight()


def server_loop() -> asyncio.AbstractEventLoop | None:
    """The loop serving requests in this process, while it runs."""
    loop = _server_loop
    return loop if loop is not None and loop.is_running() else None


def server_stopped() -> bool:
    """This process is stopping, and its serving loop no longer runs."""
    return _stopping and (_server_loop is None or not _server_loop.is_running())


def in_background(run: Callable[[], Awaitable[None]]) -> None:
    """Run `run()` on the serving loop for as long as the process serves."""
    _background.append(run)


def at_stop(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` when this process begins to stop (an event stream ends
    itself then); answers a function that forgets it."""
    _at_stop.add(callback)
    return lambda: _at_stop.discard(callback)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop that serves is known."""
    global _server_loop
    if _server_loop is not loop:
        _server_loop = loop
        # The database work in flight finishes before the process ends.
        daphne_transport.finish_when_stopped(db.finish)


def _drain_on_stop(send) -> None:
    """Under daphne, from the first connection on: stopping drains first."""
    global _draining
    _draining = True  # once, whatever the answer: not daphne is not daphne later
    daphne_transport.drain_before_stopping(send, lambda: _drain(send))


async def _drain(send) -> None:
    """Stop taking requests, then wait (a while) for those in flight."""
    global _stopping
    _stopping = True
    daphne_transport.stop_listening(send)
    for callback in list(_at_stop):
        callback()
    try:
        await asyncio.wait_for(_requests.idle.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        logger.warning(
            "stopping with %d requests unanswered after %d s",
            _requests.count,
            STOP_GRACE_SECONDS,
        )
    # The last answers leave Twisted's write buffers on the loop's next turns;
    # daphne's shutdown then closes every connection at once.
    await asyncio.sleep(0.05)


def _start_background(loop: asyncio.AbstractEventLoop) -> None:
    _serve(loop)
    if not _tasks:
        _tasks.extend(loop.create_task(_supervised(run)) for run in _background)
        _tune_garbage_collector()


def _tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full collections off the request path.

    The objects made while starting (Django, the app, the schemas: over 100,000)
    are frozen, out of every later collection. And full collections become ten
    times rarer (the third threshold 10 → 100): a request leaves no cyclic garbage
    (api_handler.py takes care of the one cycle it used to leave), so what they
    walked was requests still in flight, 20-50 ms with the event loop stopped,
    several times a second under load. Measured with 16 writers on SQLite: single
    posts' p99 from ~50 to ~30 ms at the same p50 (17 ms), memory unchanged.
    """
    gc.collect()
    gc.freeze()
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, 100)


async def _supervised(run: Callable[[], Awaitable[None]]) -> None:
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("background work %r failed; restarting it", run)
            await asyncio.sleep(1)


def start_with_server() -> None:
    """Under daphne, start the background work when the server starts, before any
    request arrives (called where the ASGI application is built). Under another
    server, the lifespan protocol's startup starts it."""
    if not daphne_transport.when_running(_start_on_running_loop):
        logger.debug("not under daphne: background work starts with the lifespan")


def _start_on_running_loop() -> None:
    _start_background(asyncio.get_event_loop())


def bind_server_loop(app):
    """Wrap the ASGI application so the loop serving it is known, so that a
    stopping server turns new requests away instead of starting them, and so that
    no client chooses the root path the application is served at."""

    async def bound(scope, receive, send):
        loop = asyncio.get_running_loop()
        if _server_loop is not loop:
            _serve(loop)
        if scope["type"] == "lifespan":
            await _lifespan(loop, receive, send)
            return
        if scope.get("root_path"):
            # daphne takes a root path from the client's Daphne-Root-Path header,
            # which would route /x/metrics past the API's token check to the
            # dashboard's side. Botlnek is served at the root (a proxy that
            # publishes it under a prefix strips the prefix).
            scope = {**scope, "root_path": ""}
        if not _draining:
            _drain_on_stop(send)
        if _stopping and scope["type"] in ("http", "websocket"):
            await _turn_away(scope, send)
            return
        if scope["type"] == "websocket":
            # The server's own send, for the daphne seam: middleware (sessions)
            # wraps the one a consumer gets.
            await app({**scope, daphne_transport.SERVER_SEND: send}, receive, send)
            return
        _requests.started()
        try:
            await app(scope, receive, send)
        finally:
            _requests.finished()

    return bound


async def _lifespan(loop: asyncio.AbstractEventLoop, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _start_background(loop)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _turn_away(scope, send) -> None:
    """503 (or a refused handshake): the client retries, on another process."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1012})
        return
    body = b'{"error": "unavailable", "detail": "the server is stopping; retry"}'
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
