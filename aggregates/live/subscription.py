"""A subscription, whatever carries it: replay, gap healing, no duplicates.

A subscription follows a stream — a domain's versions by position, or a rule's
events by seq. It joins the stream's feed first, says `subscribed`, replays from
the database in pages after its cursor, then takes live frames, dropping any at or
below its cursor and reading any gap from the database before going on. Its sink
(a websocket, an SSE response) only sends what it is handed.
"""

import asyncio
from typing import Any, Literal, Protocol

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aggregates import db, metrics, store, streams
from aggregates.live import hub
from aggregates.schemas import DomainKey, Key


class SubscribeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["subscribe"]
    id: str = Field(min_length=1, max_length=100)
    domain: DomainKey
    aggregate: Key | None = None
    after_position: int | None = Field(None, ge=0)
    after_version: int | None = Field(None, ge=0)
    mode: Literal["full", "delta"] = "full"
    rule: Key | None = None
    after_seq: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_cursor(self):
        if self.rule is not None:
            versions = (self.aggregate, self.after_position, self.after_version)
            if any(value is not None for value in versions):
                raise ValueError(
                    "a rule subscription takes after_seq, not aggregate, "
                    "after_position or after_version"
                )
            return self
        if self.after_seq is not None:
            raise ValueError("after_seq needs a rule")
        if self.after_position is not None and self.after_version is not None:
            raise ValueError("give at most one of after_position and after_version")
        if self.after_version is not None and self.aggregate is None:
            raise ValueError("after_version needs an aggregate")
        return self


class Ended(Exception):
    """Raised by a sink that ended the subscription (and told its client why)."""


class Sink(Protocol):
    """Where a subscription's frames go: a websocket, or an SSE response."""

    transport: str  # "websocket" or "sse", as the metrics name it

    async def subscribed(self, subscription: "Subscription", latest: int) -> None: ...

    async def send_frame(self, subscription: "Subscription", frame: Any) -> None: ...

    def is_slow(self) -> bool: ...

    def overflow(self) -> None: ...


class Versions:
    """A domain's versions (of one aggregate, if asked), by position."""

    def __init__(self, request: SubscribeIn):
        self.request = request
        self.domain = request.domain
        self.after_version = request.after_version or 0
        # The feed carries the whole domain; a replay reads only what is wanted.
        self.feed = streams.DomainVersions(request.domain)
        self.stream = streams.DomainVersions(request.domain, request.aggregate)

    async def start(self, latest: int) -> int:
        request = self.request
        if request.after_position is not None:
            return request.after_position
        if request.after_version:
            position = await db.read(
                store.position_of_version,
                self.domain,
                request.aggregate,
                request.after_version,
            )
            return position or 0  # a version not there yet: replay what there is
        if request.after_version == 0:
            return 0
        return latest  # live only

    def wants(self, frame: streams.Frame) -> bool:
        aggregate = self.stream.aggregate
        if aggregate is not None and frame.aggregate != aggregate:
            return False
        return frame.version > self.after_version


class RuleEvents:
    """A rule's events, by seq."""

    def __init__(self, request: SubscribeIn):
        self.after_seq = request.after_seq
        self.feed = self.stream = streams.RuleLog(request.domain, request.rule)

    async def start(self, latest: int) -> int:
        return latest if self.after_seq is None else self.after_seq

    def wants(self, frame: streams.RuleFrame) -> bool:
        return True


class Subscription:
    """Replays a stream from the database after its cursor, then follows it live:
    no gap (a gap is read from the database) and no duplicate (a frame at or
    below the cursor is dropped)."""

    def __init__(self, sink: Sink, request: SubscribeIn):
        self.sink = sink
        self.id = request.id
        self.mode = request.mode
        self.follows = RuleEvents(request) if request.rule else Versions(request)
        self.cursor = 0  # the stream's cursor up to which everything was handled
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        # While replaying, live frames are not kept, only the highest cursor:
        # a long replay must not pile them up (the database has them anyway).
        self.replaying = True
        self.seen = 0
        self.series = metrics.LiveSeries(sink.transport, self.follows.stream.kind)

    def offer(self, frame) -> None:
        if self.replaying:
            self.seen = max(self.seen, frame.cursor)
            return
        self.queue.put_nowait(frame)
        if self.queue.qsize() <= settings.BOTLNEK_WS_MAX_PENDING:
            return
        if self.sink.is_slow():
            self.sink.overflow()
            return
        # A burst, not a slow reader: keep only the newest frame; the run loop
        # then reads the gap before it from the database.
        while self.queue.qsize() > 1:
            self.queue.get_nowait()

    async def run(self) -> None:
        await hub.hub().listen(self.follows.feed, self)
        latest = await db.read(self.follows.stream.latest)
        await self.sink.subscribed(self, latest)
        self.cursor = await self.follows.start(latest)
        await self._fill(up_to=None)
        self.replaying = False
        if self.seen > self.cursor:  # announced during the replay
            await self._fill(up_to=self.seen)
        while True:
            frame = await self.queue.get()
            if frame.cursor <= self.cursor:
                continue
            if frame.cursor > self.cursor + 1:
                await self._fill(up_to=frame.cursor)  # a notification went missing
                continue
            await self._deliver(frame)
            self.cursor = frame.cursor

    async def _fill(self, up_to: int | None) -> None:
        """Send everything after the cursor (up to `up_to`) from the database."""
        while True:
            stream = self.follows.stream
            latest, frames = await streams.read_frames(stream, self.cursor, up_to)
            for frame in frames:
                await self._deliver(frame)
                self.cursor = frame.cursor
            if len(frames) < streams.PAGE:
                # Everything up to `latest` had committed before the rows were read.
                reached = latest if up_to is None else min(latest, up_to)
                self.cursor = max(self.cursor, reached)
                return

    async def _deliver(self, frame) -> None:
        if self.follows.wants(frame):
            await self.sink.send_frame(self, frame)
            # A replayed version's delay says how far back the client resumed.
            live = not self.replaying and isinstance(frame, streams.Frame)
            self.series.sent(frame.committed_at if live else None)

    async def stop(self) -> None:
        self.series.close()
        if self.task is not None:
            self.task.cancel()
        await hub.hub().unlisten(self.follows.feed, self)
