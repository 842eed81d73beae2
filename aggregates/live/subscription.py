"""A subscription, whatever carries it: replay, gap healing, no duplicates.

A subscription joins its domain's feed first, says `subscribed`, replays from the
database in pages after its cursor, then takes live frames, dropping any at or below
its cursor and reading any gap from the database before going on. Its sink (a
websocket, an SSE response) only sends what it is handed.
"""

import asyncio
from typing import Literal, Protocol

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aggregates import db, store
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

    @model_validator(mode="after")
    def _one_cursor(self):
        if self.after_position is not None and self.after_version is not None:
            raise ValueError("give at most one of after_position and after_version")
        if self.after_version is not None and self.aggregate is None:
            raise ValueError("after_version needs an aggregate")
        return self


class Sink(Protocol):
    """Where a subscription's frames go: a websocket, or an SSE response."""

    async def subscribed(self, subscription: "Subscription", position: int) -> None: ...

    async def version(self, subscription: "Subscription", frame: hub.Frame) -> None: ...

    def is_slow(self) -> bool: ...

    def overflow(self) -> None: ...


class Subscription:
    def __init__(self, sink: Sink, request: SubscribeIn):
        self.sink = sink
        self.id = request.id
        self.domain = request.domain
        self.aggregate = request.aggregate
        self.mode = request.mode
        self.request = request
        self.after_version = request.after_version or 0
        self.cursor = 0  # the domain position up to which everything was handled
        self.queue: asyncio.Queue[hub.Frame] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        # While replaying, live frames are not kept, only the highest position:
        # a long replay must not pile them up (the database has them anyway).
        self.replaying = True
        self.seen = 0

    def offer(self, frame: hub.Frame) -> None:
        if self.replaying:
            self.seen = max(self.seen, frame.position)
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
        await hub.hub().listen(self.domain, self)
        latest = (await db.read(store.latest_positions, [self.domain]))[self.domain]
        await self.sink.subscribed(self, latest)
        self.cursor = await self._start(latest)
        await self._fill(up_to=None)
        self.replaying = False
        if self.seen > self.cursor:  # announced during the replay
            await self._fill(up_to=self.seen)
        while True:
            frame = await self.queue.get()
            if frame.position <= self.cursor:
                continue
            if frame.position > self.cursor + 1:
                await self._fill(up_to=frame.position)  # a notification went missing
                continue
            await self._deliver(frame)
            self.cursor = frame.position

    async def _start(self, latest: int) -> int:
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

    async def _fill(self, up_to: int | None) -> None:
        """Send every version after the cursor (up to `up_to`) from the database."""
        while True:
            latest, rows = await db.read(
                store.live_frames,
                self.domain,
                after_position=self.cursor,
                limit=hub.PAGE,
                aggregate=self.aggregate,
                up_to=up_to,
            )
            for row in rows:
                await self._deliver(hub.Frame(row))
                self.cursor = row["position"]
            if len(rows) < hub.PAGE:
                # Everything up to `latest` had committed before the rows were read.
                reached = latest if up_to is None else min(latest, up_to)
                self.cursor = max(self.cursor, reached)
                return

    async def _deliver(self, frame: hub.Frame) -> None:
        if self.aggregate is not None and frame.aggregate != self.aggregate:
            return
        if frame.version <= self.after_version:
            return
        await self.sink.version(self, frame)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await hub.hub().unlisten(self.domain, self)
