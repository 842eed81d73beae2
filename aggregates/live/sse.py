"""Server-Sent Events for `GET /api/stream`: the websocket subscription, as text.

A stream waits for its connection as a websocket does: the subscription hands its
events to the response through a small queue, and the response sends them only as
fast as the socket takes them (the daphne seam), so a reader that stops reading
holds its subscription up; the frames that then pile up (BOTLNEK_WS_MAX_PENDING)
end the connection as a slow consumer, and the client resumes with Last-Event-ID.
The server's memory never grows with a reader's delay.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aggregates import metrics, serving
from aggregates.daphne_transport import HttpStream
from aggregates.live.subscription import SubscribeIn, Subscription
from aggregates.streams import Frame, RuleFrame

logger = logging.getLogger("botlnek.live")

KEEP_ALIVE_SECONDS = 15
QUEUED = 16  # events between the subscription and the response


class SseSink:
    """Turns a subscription's versions into SSE events, queued for the response.

    None in the queue ends the stream; the client reconnects with Last-Event-ID
    and loses nothing.
    """

    transport = "sse"

    def __init__(self, connection: HttpStream) -> None:
        self.events: asyncio.Queue[str | None] = asyncio.Queue(QUEUED)
        self.connection = connection
        self.ended = False

    async def subscribed(self, subscription: Subscription, latest: int) -> None:
        pass  # SSE has no such event; the stream itself says so

    async def send_frame(
        self, subscription: Subscription, frame: Frame | RuleFrame
    ) -> None:
        data = await frame.text(subscription.mode)
        kind = subscription.follows.stream.kind
        # Waits while the response cannot send: the subscription's own queue
        # then grows, and past its limit it calls overflow().
        await self.events.put(f"id: {frame.cursor}\nevent: {kind}\ndata: {data}\n\n")

    def is_slow(self) -> bool:
        return self.connection.paused

    def overflow(self) -> None:
        """Too many frames waiting for a reader that does not read: drop it."""
        if self.ended:
            return
        self.ended = True
        logger.warning("dropping an event stream whose reader fell behind")
        metrics.slow_consumer_disconnected(self.transport)
        if not self.connection.abort():
            self.end()

    def end(self) -> None:
        self.ended = True
        with contextlib.suppress(asyncio.QueueFull):  # then `ended` tells
            self.events.put_nowait(None)


class EventStream:
    """One stream's body: the subscription's events as it can take them, with a
    keep-alive comment every KEEP_ALIVE_SECONDS. close() (the response's, or the
    connection's end) stops the subscription and calls `release` once."""

    def __init__(
        self,
        request: SubscribeIn,
        connection: HttpStream,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.sink = SseSink(connection)
        self.subscription = Subscription(self.sink, request)
        self.release = release
        self.closed = False
        connection.when_done(self.close)
        # A stopping server ends its streams; their clients resume elsewhere.
        self.forget = serving.at_stop(self.sink.end)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        subscription, sink = self.subscription, self.sink
        subscription.task = asyncio.ensure_future(subscription.run())
        # A subscription that fails (the database away, say) ends the stream too.
        subscription.task.add_done_callback(lambda task: sink.end())
        try:
            yield "retry: 2000\n: subscribed\n\n"
            while not sink.ended:
                try:
                    event = await asyncio.wait_for(
                        sink.events.get(), KEEP_ALIVE_SECONDS
                    )
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                yield event
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.forget()
        self.release()
        if self.subscription.task is not None:
            self.subscription.task.cancel()
        self._stopping = asyncio.ensure_future(self.subscription.stop())
