"""The per-process hub: one channel-layer listener and one feed per domain.

The channel layer is at-most-once, so it only ever says "domain D has reached
position P"; the database is the source of truth. Each process keeps one Hub: one
layer channel, joined to the group of every domain someone here listens to. On a
poke the hub reads the new versions from the database once and hands the same frame
objects to every local subscription, so the payload of a version is built once per
process, not once per subscriber, and a full state only when someone asked for it.
Subscriptions keep their own cursor and heal any gap from the database.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from aggregates import db, store
from aggregates.live import events

logger = logging.getLogger("botlnek.live")
PAGE = 500


def domain_group(domain: str) -> str:
    """A channel-layer group name for a domain (keys may hold : @ + =, groups not)."""
    return "botlnek.domain." + hashlib.sha256(domain.encode()).hexdigest()[:40]


# Publishing: registered in AppConfig.ready(); called after commit, on the writer
# thread.


def publish(committed: Sequence[events.VersionCommitted]) -> None:
    latest: dict[str, int] = {}
    for version in committed:
        latest[version.domain] = max(latest.get(version.domain, 0), version.position)
    for domain, position in latest.items():
        message = {"type": "domain.changed", "domain": domain, "position": position}
        _send_soon(domain_group(domain), message)


def _send_soon(group: str, message: dict) -> None:
    """Send without making the writer wait for the layer, when a server loop runs."""
    layer = get_channel_layer()
    loop = events.server_loop()
    if loop is None:
        if events.server_stopped():
            # A write that commits while the server shuts down: its loop will not
            # run the send, and waiting for it would hang the shutdown. Every other
            # process heals from the database at its next position check.
            logger.info("server stopping: %s not announced", message)
            return
        async_to_sync(layer.group_send)(group, message)  # no server: a command
        return
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    future.add_done_callback(_report)


def _report(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        # Subscribers heal from the database (gap fill, position check).
        logger.warning("notification lost: %s", future.exception())


# Frames


class Frame:
    """One version as sent to subscribers, its JSON built at most once per mode."""

    __slots__ = ("_full", "aggregate", "body", "position", "version")

    def __init__(self, frame: dict[str, Any]):
        self.aggregate: str = frame["aggregate"]
        self.version: int = frame["version"]
        self.position: int = frame["position"]
        self.body = frame  # with "counts"
        self._full: asyncio.Future | None = None

    def delta_tail(self) -> str:
        # Everything after {"type":…,"subscription":…, — shared by every subscriber.
        return json.dumps(self.body, ensure_ascii=False)[1:]

    async def full_tail(self) -> str:
        # Built on first demand and shared: concurrent subscribers await one build.
        if self._full is None:
            self._full = asyncio.ensure_future(self._build_full())
        return await asyncio.shield(self._full)

    async def _build_full(self) -> str:
        state = await db.read(
            store.state_json_as_of, self.body["domain"], self.aggregate, self.version
        )
        full = {key: value for key, value in self.body.items() if key != "counts"}
        return json.dumps(full, ensure_ascii=False)[1:-1] + ',"state":' + state + "}"

    async def text(self, mode: str, subscription: str | None = None) -> str:
        """The §4 version frame; without `subscription` as SSE sends it."""
        tail = self.delta_tail() if mode == "delta" else await self.full_tail()
        head = '{"type":"version",'
        if subscription is not None:
            head += '"subscription":' + json.dumps(subscription) + ","
        return head + tail


class Listener(Protocol):
    def offer(self, frame: Frame) -> None: ...


class DomainFeed:
    """The versions of one domain as this process learns of them, in order."""

    def __init__(self, domain: str, position: int):
        self.domain = domain
        self.position = position  # every version up to here went to the listeners
        self.target = position
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task | None = None

    def poke(self, position: int) -> None:
        self.target = max(self.target, position)
        if self.target > self.position and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            while self.target > self.position:
                _, rows = await db.read(
                    store.live_frames,
                    self.domain,
                    after_position=self.position,
                    limit=PAGE,
                )
                if not rows:
                    return
                for row in rows:
                    frame = Frame(row)
                    self.position = frame.position
                    for listener in list(self.listeners):
                        listener.offer(frame)
        except Exception:
            logger.exception("reading new versions of %s failed", self.domain)


class Hub:
    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.feeds: dict[str, DomainFeed] = {}
        self.channel: str | None = None
        self._tasks: list[asyncio.Task] = []
        # Joining and leaving a domain's group must not interleave: a leave landing
        # after a new join would leave that domain deaf until the position check.
        self._membership = asyncio.Lock()

    async def listen(self, domain: str, listener: Listener) -> None:
        async with self._membership:
            await self._listen(domain, listener)

    async def _listen(self, domain: str, listener: Listener) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel("botlnek.hub.")
            self._tasks = [
                asyncio.ensure_future(self._receive()),
                asyncio.ensure_future(self._check_positions()),
            ]
        feed = self.feeds.get(domain)
        if feed is None:
            # Join the group before reading the position: nothing falls between.
            await self.layer.group_add(domain_group(domain), self.channel)
            latest = (await db.read(store.latest_positions, [domain])).get(domain, 0)
            feed = self.feeds.setdefault(domain, DomainFeed(domain, latest))
        feed.listeners.add(listener)

    async def unlisten(self, domain: str, listener: Listener) -> None:
        async with self._membership:
            feed = self.feeds.get(domain)
            if feed is None:
                return
            feed.listeners.discard(listener)
            if not feed.listeners:
                del self.feeds[domain]
                await self.layer.group_discard(domain_group(domain), self.channel)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("channel layer receive failed: %s", exc)
                await asyncio.sleep(1)
                continue
            feed = self.feeds.get(message.get("domain", ""))
            if feed is not None and message.get("type") == "domain.changed":
                feed.poke(int(message["position"]))

    async def _check_positions(self) -> None:
        """Catch a lost *last* notification, and re-join groups that expired."""
        interval = settings.BOTLNEK_POSITION_CHECK_SECONDS
        while True:
            await asyncio.sleep(interval)
            if not self.feeds:
                continue
            try:
                latest = await db.read(store.latest_positions, list(self.feeds))
                for domain, feed in list(self.feeds.items()):
                    await self.layer.group_add(domain_group(domain), self.channel)
                    feed.poke(latest.get(domain, 0))
            except Exception as exc:
                logger.warning("position check failed: %s", exc)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def hub() -> Hub:
    """This event loop's hub (one per server process)."""
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = Hub()
    return _hubs[loop]
