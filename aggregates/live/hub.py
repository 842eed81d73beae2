"""The per-process hub: one channel-layer listener, and one Feed per stream someone
in this process listens to (streams.py: a domain's versions, a rule's events).

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
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from aggregates import announcements, db, serving, streams
from aggregates.live import commits

logger = logging.getLogger("botlnek.live")


def domain_group(domain: str) -> str:
    """A channel-layer group name for a domain (keys may hold : @ + =, groups not)."""
    return "botlnek.domain." + hashlib.sha256(domain.encode()).hexdigest()[:40]


# Publishing: registered in AppConfig.ready(); called after commit, on the writer
# thread.


def publish(committed: Sequence[announcements.VersionCommitted]) -> None:
    latest: dict[str, int] = {}
    for version in committed:
        latest[version.domain] = max(latest.get(version.domain, 0), version.position)
    for domain, position in latest.items():
        message = {"type": "domain.changed", "domain": domain, "position": position}
        _send_soon(domain_group(domain), message)


def publish_rule_events(committed: Sequence[announcements.RuleEventsCommitted]) -> None:
    for rule in committed:
        message = {
            "type": "rule.changed",
            "domain": rule.domain,
            "rule": rule.rule,
            "seq": rule.seq,
        }
        _send_soon(domain_group(rule.domain), message)


def _send_soon(group: str, message: dict) -> None:
    """Send without making the writer wait for the layer, when a server loop runs."""
    layer = get_channel_layer()
    loop = serving.server_loop()
    if loop is None:
        if serving.server_stopped():
            # A write that commits while the server shuts down: its loop will not
            # run the send, and waiting for it would hang the shutdown. Every other
            # process heals from the database at its next position check.
            logger.info("server stopping: %s not announced", message)
            return
        if _loop_in_this_thread():
            # Not a server's loop, and this thread cannot wait for the send:
            # subscribers elsewhere heal from the database.
            logger.info("no server loop here: %s not announced", message)
            return
        async_to_sync(layer.group_send)(group, message)  # no server: a command
        return
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    future.add_done_callback(_report)


def _loop_in_this_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _report(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        # Subscribers heal from the database (gap fill, position check).
        logger.warning("notification lost: %s", future.exception())


class Listener(Protocol):
    def offer(self, frame: Any) -> None: ...


class Feed:
    """A stream followed by this process, in order, as the process learns of it:
    each new item read once, and handed to every listener here."""

    def __init__(self, stream: streams.Stream, cursor: int):
        self.stream = stream
        self.cursor = cursor  # everything up to here went to the listeners
        self.target = cursor
        self.listeners: set[Listener] = set()
        self._task: asyncio.Task | None = None

    def poke(self, target: int) -> None:
        self.target = max(self.target, target)
        if self.target > self.cursor and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            if isinstance(self.stream, streams.DomainRules):
                # No items: only that something happened.
                self.cursor = self.target
                for listener in list(self.listeners):
                    listener.offer(None)
                return
            while self.target > self.cursor:
                _, frames = await streams.read_frames(self.stream, self.cursor)
                if not frames:
                    return
                for frame in frames:
                    self.cursor = frame.cursor
                    for listener in list(self.listeners):
                        listener.offer(frame)
        except Exception:
            logger.exception("reading %s failed", self.stream)


class Hub:
    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.feeds: dict[streams.Stream, Feed] = {}
        self.channel: str | None = None
        self._tasks: list[asyncio.Task] = []
        # Joining and leaving a domain's group must not interleave: a leave landing
        # after a new join would leave that domain deaf until the position check.
        self._membership = asyncio.Lock()

    async def listen(self, stream: streams.Stream, listener: Listener) -> None:
        async with self._membership:
            await self._listen(stream, listener)

    async def _listen(self, stream: streams.Stream, listener: Listener) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel("botlnek.hub.")
            self._tasks = [
                asyncio.ensure_future(self._receive()),
                asyncio.ensure_future(self._check_positions()),
            ]
            if connection.vendor == "sqlite":
                name = connection.settings_dict["NAME"]
                self._tasks.append(asyncio.ensure_future(self._watch_commits(name)))
        feed = self.feeds.get(stream)
        if feed is None:
            if not self._domains().get(stream.domain):
                # Join the group before reading where the stream stands: nothing
                # falls between.
                await self.layer.group_add(domain_group(stream.domain), self.channel)
            latest = await db.read(stream.latest)
            feed = self.feeds.setdefault(stream, Feed(stream, latest))
        feed.listeners.add(listener)

    async def unlisten(self, stream: streams.Stream, listener: Listener) -> None:
        async with self._membership:
            feed = self.feeds.get(stream)
            if feed is None:
                return
            feed.listeners.discard(listener)
            if not feed.listeners:
                del self.feeds[stream]
                domain = stream.domain
                if not self._domains().get(domain):
                    await self.layer.group_discard(domain_group(domain), self.channel)

    def _domains(self) -> Counter[str]:
        return Counter(stream.domain for stream in self.feeds)

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
            domain = message.get("domain", "")
            if message.get("type") == "domain.changed":
                self._poke(streams.DomainVersions(domain), int(message["position"]))
            elif message.get("type") == "rule.changed":
                log = streams.RuleLog(domain, message.get("rule", ""))
                self._poke(log, message["seq"])
                activity = self.feeds.get(streams.DomainRules(domain))
                if activity is not None:
                    activity.poke(activity.cursor + 1)

    def _poke(self, stream: streams.Stream, target: int) -> None:
        feed = self.feeds.get(stream)
        if feed is not None:
            feed.poke(int(target))

    async def _check_positions(self) -> None:
        """Catch a lost *last* notification, and re-join groups that expired."""
        interval = settings.BOTLNEK_POSITION_CHECK_SECONDS
        while True:
            await asyncio.sleep(interval)
            if not self.feeds:
                continue
            try:
                for domain in self._domains():
                    await self.layer.group_add(domain_group(domain), self.channel)
                await self._catch_up()
            except Exception as exc:
                logger.warning("position check failed: %s", exc)

    async def _watch_commits(self, path: str) -> None:
        """On SQLite: whatever any process commits is followed within a second,
        with no channel layer between the processes (commits.py)."""
        watcher = commits.of(path)
        seen = None
        while True:
            await asyncio.sleep(commits.WATCH_SECONDS)
            if not self.feeds:
                continue
            try:
                version = await watcher.read()
                if version != seen:
                    seen = version
                    await self._catch_up()
            except Exception as exc:
                logger.warning("watching commits failed: %s", exc)
                await asyncio.sleep(1)

    async def _catch_up(self) -> None:
        """Every stream listened to, moved to where the database has it."""
        latest = await db.read(streams.latest_of, list(self.feeds))
        for stream, target in latest.items():
            self._poke(stream, target)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def hub() -> Hub:
    """This event loop's hub (one per server process)."""
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = Hub()
    return _hubs[loop]
