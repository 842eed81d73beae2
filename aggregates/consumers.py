"""`/ws/subscribe` (SPEC §4): many subscriptions per connection, no loss on resume.

A subscription joins its domain's feed first, says `subscribed`, replays from the
database in pages after its cursor, then takes live frames, dropping any at or below
its cursor and reading any gap from the database before going on.
"""

import asyncio
import json
import logging
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from aggregates import backpressure, db, limits, live, store, views
from aggregates.schemas import DomainKey, Key

logger = logging.getLogger("botlnek.live")


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

    async def version(
        self, subscription: "Subscription", frame: live.Frame
    ) -> None: ...

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
        self.queue: asyncio.Queue[live.Frame] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        # While replaying, live frames are not kept, only the highest position:
        # a long replay must not pile them up (the database has them anyway).
        self.replaying = True
        self.seen = 0

    def offer(self, frame: live.Frame) -> None:
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
        await live.hub().listen(self.domain, self)
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
                limit=live.PAGE,
                aggregate=self.aggregate,
                up_to=up_to,
            )
            for row in rows:
                await self._deliver(live.Frame(row))
                self.cursor = row["position"]
            if len(rows) < live.PAGE:
                # Everything up to `latest` had committed before the rows were read.
                reached = latest if up_to is None else min(latest, up_to)
                self.cursor = max(self.cursor, reached)
                return

    async def _deliver(self, frame: live.Frame) -> None:
        if self.aggregate is not None and frame.aggregate != self.aggregate:
            return
        if frame.version <= self.after_version:
            return
        await self.sink.version(self, frame)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await live.hub().unlisten(self.domain, self)


class SubscribeConsumer(AsyncWebsocketConsumer):
    # No layer channel per socket (an alias that names no layer gives None): the
    # process's hub feeds every subscription, and a channel per socket would cost a
    # Redis subscription per connection (1,000 of them outlast daphne's 5 s
    # handshake timeout).
    channel_layer_alias = "botlnek-sockets-are-fed-by-the-hub"

    async def connect(self) -> None:
        self.token = self.scope.get("api_token")
        user = self.scope.get("user")
        if self.token is None and not (user is not None and user.is_authenticated):
            await self.close()
            return
        self.subscriptions: dict[str, Subscription] = {}
        self.closing = False
        self.pressure = backpressure.watch(self.base_send)
        await self.accept()
        self.counted = self.token is not None and limits.sockets().open(self.token.pk)
        if self.token is not None and not self.counted:
            self.closing = True
            limit = limits.sockets().limit
            reason = f"this token already has {limit} open connections on this server"
            if not self.pressure.close(1008, reason):
                await self.close(code=1008, reason=reason)

    async def disconnect(self, code: int) -> None:
        # Called twice after an overflow (by overflow(), then by the close): the
        # token's place is given back once, and before anything that could fail.
        if getattr(self, "counted", False):
            self.counted = False
            limits.sockets().close(self.token.pk)
        for subscription in list(getattr(self, "subscriptions", {}).values()):
            await subscription.stop()

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(data, ensure_ascii=False))

    async def subscribed(self, subscription: Subscription, position: int) -> None:
        await self.send_json(
            {"type": "subscribed", "id": subscription.id, "position": position}
        )

    def is_slow(self) -> bool:
        return self.pressure.paused

    async def version(self, subscription: Subscription, frame: live.Frame) -> None:
        # A reader that stopped reading holds this up; frames then pile up in the
        # subscription's queue until overflow() ends the connection.
        await self.pressure.writable()
        text = await frame.text(subscription.mode, subscription.id)
        limit = self.pressure.max_message_size
        if limit and len(text.encode()) > limit:
            # The server would refuse to send it; say why instead of failing
            # silently, and end this subscription: resuming could not get past it.
            detail = (
                f"version {frame.version} of {frame.aggregate!r} makes a frame over "
                f"this server's {limit}-byte limit: subscribe in delta mode, or run "
                "daphne with a larger --websocket_max_message_size"
            )
            await self.error("frame_too_large", detail, subscription.id)
            self.subscriptions.pop(subscription.id, None)
            self._ended = asyncio.ensure_future(subscription.stop())
            raise asyncio.CancelledError
        await self.send(text_data=text)

    async def error(self, code: str, detail: str, id: Any = None) -> None:
        frame = {"type": "error", "error": code, "detail": detail}
        if isinstance(id, str):
            frame["id"] = id
        await self.send_json(frame)

    async def receive(self, text_data: str | None = None, bytes_data=None) -> None:
        if self.closing:
            return  # refused or overloaded: the close is on its way
        try:
            message = json.loads(text_data if text_data is not None else bytes_data)
        except (ValueError, TypeError, RecursionError):
            await self.error("invalid_json", "a frame must be one JSON object")
            return
        if not isinstance(message, dict):
            await self.error("invalid", "a frame must be one JSON object")
            return
        kind = message.get("type")
        if kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            await self._unsubscribe(message)
        else:
            await self.error(
                "invalid",
                "type must be 'subscribe' or 'unsubscribe'",
                message.get("id"),
            )

    async def _subscribe(self, message: dict) -> None:
        try:
            request = SubscribeIn.model_validate(message)
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "frame"
            detail = f"{where}: {first['msg'].removeprefix('Value error, ')}"
            await self.error("invalid", detail, message.get("id"))
            return
        if request.id in self.subscriptions:
            await self.error(
                "invalid", f"subscription {request.id!r} exists", request.id
            )
            return
        if self.token is not None and not self.token.can_read(request.domain):
            detail = f"this token may not read domain {request.domain!r}"
            await self.error("forbidden", detail, request.id)
            return
        if not await db.read(store.latest_positions, [request.domain]):
            detail = f"domain {request.domain!r} does not exist"
            await self.error("not_found", detail, request.id)
            return
        subscription = Subscription(self, request)
        self.subscriptions[request.id] = subscription
        subscription.task = asyncio.ensure_future(self._run(subscription))

    async def _run(self, subscription: Subscription) -> None:
        try:
            await subscription.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("subscription %s failed", subscription.id)
            # The client resumes from its last position on a new connection.
            await self.close(code=1011)

    async def _unsubscribe(self, message: dict) -> None:
        subscription = self.subscriptions.pop(str(message.get("id")), None)
        if subscription is None:
            await self.error("not_found", "no such subscription", message.get("id"))
            return
        await subscription.stop()

    def overflow(self) -> None:
        """Too many frames waiting: drop the connection rather than grow memory."""
        if not self.closing:
            self.closing = True
            logger.warning("closing a subscriber that fell behind (1013)")
            reason = "too many pending frames; resume from your last position"
            # Stop taking frames at once; what was sent stays for the reader.
            self._stopping = asyncio.ensure_future(self.disconnect(1013))
            if not self.pressure.close(1013, reason):
                self._closing = asyncio.ensure_future(
                    self.close(code=1013, reason=reason)
                )


class DashboardConsumer(AsyncWebsocketConsumer):
    """Pushes a dashboard page's live parts, re-rendered, whenever its domain moves.

    The first push goes out as soon as the socket opens, so whatever was committed
    between rendering the page and opening the socket shows up too.
    """

    channel_layer_alias = SubscribeConsumer.channel_layer_alias
    RENDER_EVERY = 0.25  # seconds: at most four renders a second per page

    async def connect(self) -> None:
        user = self.scope.get("user")
        public = settings.BOTLNEK_PUBLIC_DASHBOARD
        if not (public or (user is not None and user.is_authenticated)):
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.page = query.get("page", ["home"])[0]
        self.domain = query.get("domain", [""])[0]
        self.aggregate = query.get("aggregate", [""])[0]
        self.prefix = query.get("prefix", [""])[0]
        if self.page == "home":
            self.domains = list(await db.read(store.latest_positions_all))
        else:
            self.domains = [self.domain]
        await self.accept()
        self.dirty = asyncio.Event()
        self.dirty.set()
        for domain in self.domains:
            await live.hub().listen(domain, self)
        self.renderer = asyncio.ensure_future(self._render())

    def offer(self, frame: live.Frame) -> None:
        if self.page != "aggregate" or frame.aggregate == self.aggregate:
            self.dirty.set()

    async def _render(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                html = await db.read(
                    views.live_fragment,
                    self.page,
                    self.domain,
                    self.aggregate,
                    self.prefix,
                )
            except store.NotFound:
                await self.close(code=4404)
                return
            await self.send(text_data=html)
            await asyncio.sleep(self.RENDER_EVERY)

    async def disconnect(self, code: int) -> None:
        renderer = getattr(self, "renderer", None)
        if renderer is not None:
            renderer.cancel()
        for domain in getattr(self, "domains", []):
            await live.hub().unlisten(domain, self)
