"""Server-Sent Events for `GET /api/stream`: the websocket subscription, as text."""

import asyncio
from collections.abc import AsyncIterator

from django.conf import settings

from aggregates import metrics
from aggregates.live.hub import Frame
from aggregates.live.subscription import SubscribeIn, Subscription

KEEP_ALIVE_SECONDS = 15


class SseSink:
    """Turns a subscription's versions into SSE events, queued for the response.

    None in the queue ends the stream; the client reconnects with Last-Event-ID
    and loses nothing.
    """

    transport = "sse"

    def __init__(self) -> None:
        self.events: asyncio.Queue[str | None] = asyncio.Queue()
        self.ended = False

    async def subscribed(self, subscription: Subscription, latest: int) -> None:
        pass  # SSE has no such event; the stream itself says so

    async def version(self, subscription: Subscription, frame: Frame) -> None:
        data = await frame.text(subscription.mode)
        kind = subscription.stream.kind
        self.events.put_nowait(f"id: {frame.cursor}\nevent: {kind}\ndata: {data}\n\n")
        if self.events.qsize() > settings.BOTLNEK_WS_MAX_PENDING and not self.ended:
            # A reader this far behind: end rather than buffer.
            metrics.slow_consumer_disconnected(self.transport)
            self.overflow()

    def is_slow(self) -> bool:
        return False  # its own queue is bounded by version()

    def overflow(self) -> None:
        self.ended = True
        self.events.put_nowait(None)


async def event_stream(request: SubscribeIn) -> AsyncIterator[str]:
    sink = SseSink()
    subscription = Subscription(sink, request)
    subscription.task = asyncio.ensure_future(subscription.run())
    # A subscription that fails (the database away, say) ends the stream too.
    subscription.task.add_done_callback(lambda task: sink.overflow())
    try:
        yield "retry: 2000\n: subscribed\n\n"
        while True:
            try:
                event = await asyncio.wait_for(sink.events.get(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:
                return
            yield event
    finally:
        await subscription.stop()
