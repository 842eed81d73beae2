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
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from aggregates import announcements, db, serving, store
from aggregates.errors import NotFound
from aggregates.rules.read import latest_seqs, rule_events

logger = logging.getLogger("botlnek.live")
PAGE = 500


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


# Frames: what a feed hands its listeners


class Frame:
    """One version as sent to subscribers, its JSON built at most once per mode."""

    __slots__ = ("_full", "aggregate", "body", "committed_at", "position", "version")

    def __init__(self, frame: dict[str, Any]):
        self.aggregate: str = frame["aggregate"]
        self.version: int = frame["version"]
        self.position: int = frame["position"]
        self.body = frame  # with "counts"
        # Unix time of the commit, for the commit → send delay (aggregates.metrics).
        self.committed_at = datetime.fromisoformat(frame["at"]).timestamp()
        self._full: asyncio.Future | None = None

    @property
    def cursor(self) -> int:
        return self.position

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


class RuleFrame:
    """One event of a rule as sent to subscribers, with the aggregate's state as of
    the event's version (null once the aggregate was pruned); built once."""

    __slots__ = ("_text", "aggregate", "body", "seq", "version")

    def __init__(self, event: dict[str, Any]):
        self.body = event
        self.seq: int = event["seq"]
        self.aggregate: str = event["aggregate"]
        self.version: int = event["version"]
        self._text: asyncio.Future | None = None

    @property
    def cursor(self) -> int:
        return self.seq

    async def text(self, mode: str = "full", subscription: str | None = None) -> str:
        if self._text is None:
            self._text = asyncio.ensure_future(self._build())
        tail = await asyncio.shield(self._text)
        head = '{"type":"rule_event",'
        if subscription is not None:
            head += '"subscription":' + json.dumps(subscription) + ","
        return head + tail

    async def _build(self) -> str:
        try:
            state = await db.read(
                store.state_json_as_of,
                self.body["domain"],
                self.aggregate,
                self.version,
            )
        except NotFound:
            state = "null"
        return (
            json.dumps(self.body, ensure_ascii=False)[1:-1] + ',"state":' + state + "}"
        )


class Listener(Protocol):
    def offer(self, frame: Any) -> None: ...


# Feeds: one stream of this process, read once from the database and handed to
# every listener here. A feed is named by (kind, domain, rule):
#   ("versions", d, "")  the domain's versions, by position;
#   ("rule", d, r)       rule r's events, by seq;
#   ("rules", d, "")     that some rule of the domain recorded events (no frames).
FeedKey = tuple[str, str, str]


def versions_feed(domain: str) -> FeedKey:
    return ("versions", domain, "")


def rule_feed(domain: str, rule: str) -> FeedKey:
    return ("rule", domain, rule)


def rules_feed(domain: str) -> FeedKey:
    return ("rules", domain, "")


async def _read(key: FeedKey, after: int) -> list:
    kind, domain, rule = key
    if kind == "versions":
        _, rows = await db.read(
            store.live_frames, domain, after_position=after, limit=PAGE
        )
        return [Frame(row) for row in rows]
    if kind == "rule":
        _, events = await db.read(
            rule_events, domain, rule, after_seq=after, limit=PAGE
        )
        return [RuleFrame(event) for event in events]
    return []


async def _latest(keys: list[FeedKey]) -> dict[FeedKey, int]:
    """Where each feed's stream stands in the database now."""
    return await db.read(_latest_now, keys)


def _latest_now(keys: list[FeedKey]) -> dict[FeedKey, int]:
    domains = {domain for kind, domain, _ in keys if kind == "versions"}
    positions = store.latest_positions(domains) if domains else {}
    ruled = {domain for kind, domain, _ in keys if kind != "versions"}
    seqs = latest_seqs(ruled) if ruled else {}
    latest = {}
    for key in keys:
        kind, domain, rule = key
        if kind == "versions":
            latest[key] = positions.get(domain, 0)
        elif kind == "rule":
            latest[key] = seqs.get((domain, rule), 0)
        else:
            latest[key] = sum(seq for (d, _), seq in seqs.items() if d == domain)
    return latest


class Feed:
    """A stream of this process, in order, as the process learns of it."""

    def __init__(self, key: FeedKey, cursor: int):
        self.key = key
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
            if self.key[0] == "rules":  # no frames: only that something happened
                self.cursor = self.target
                for listener in list(self.listeners):
                    listener.offer(None)
                return
            while self.target > self.cursor:
                frames = await _read(self.key, self.cursor)
                if not frames:
                    return
                for frame in frames:
                    self.cursor = frame.cursor
                    for listener in list(self.listeners):
                        listener.offer(frame)
        except Exception:
            logger.exception("reading %s failed", self.key)


class Hub:
    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.feeds: dict[FeedKey, Feed] = {}
        self.channel: str | None = None
        self._tasks: list[asyncio.Task] = []
        # Joining and leaving a domain's group must not interleave: a leave landing
        # after a new join would leave that domain deaf until the position check.
        self._membership = asyncio.Lock()

    async def listen(self, key: FeedKey, listener: Listener) -> None:
        async with self._membership:
            await self._listen(key, listener)

    async def _listen(self, key: FeedKey, listener: Listener) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel("botlnek.hub.")
            self._tasks = [
                asyncio.ensure_future(self._receive()),
                asyncio.ensure_future(self._check_positions()),
            ]
        feed = self.feeds.get(key)
        if feed is None:
            domain = key[1]
            if not self._domains().get(domain):
                # Join the group before reading where the stream stands: nothing
                # falls between.
                await self.layer.group_add(domain_group(domain), self.channel)
            latest = (await _latest([key]))[key]
            feed = self.feeds.setdefault(key, Feed(key, latest))
        feed.listeners.add(listener)

    async def unlisten(self, key: FeedKey, listener: Listener) -> None:
        async with self._membership:
            feed = self.feeds.get(key)
            if feed is None:
                return
            feed.listeners.discard(listener)
            if not feed.listeners:
                del self.feeds[key]
                if not self._domains().get(key[1]):
                    await self.layer.group_discard(domain_group(key[1]), self.channel)

    def _domains(self) -> Counter[str]:
        return Counter(domain for _, domain, _ in self.feeds)

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
                self._poke(versions_feed(domain), int(message["position"]))
            elif message.get("type") == "rule.changed":
                self._poke(rule_feed(domain, message.get("rule", "")), message["seq"])
                activity = self.feeds.get(rules_feed(domain))
                if activity is not None:
                    activity.poke(activity.cursor + 1)

    def _poke(self, key: FeedKey, target: int) -> None:
        feed = self.feeds.get(key)
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
                latest = await _latest(list(self.feeds))
                for domain in self._domains():
                    await self.layer.group_add(domain_group(domain), self.channel)
                for key, target in latest.items():
                    self._poke(key, target)
            except Exception as exc:
                logger.warning("position check failed: %s", exc)


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def hub() -> Hub:
    """This event loop's hub (one per server process)."""
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = Hub()
    return _hubs[loop]
