"""Streams: how anything follows what was committed, in order, from a cursor.

A stream is numbered without gaps, and is read from the database, the source of
truth:

    DomainVersions(domain)  a domain's versions, by position (optionally only one
                            aggregate's)
    RuleLog(domain, rule)   a rule's events, by seq
    DomainRules(domain)     that some rule of the domain recorded events (the sum of
                            its rules' seqs; no items: the dashboard re-renders)

Each answers latest() — where it stands: everything at or below has committed —
and read(after, limit, up_to) — that, then the items after a cursor, in order, as
the JSON the API, websockets, Server-Sent Events and webhooks send. Both run
ORM queries: call them through aggregates.db. Frame and RuleFrame are an item as
live delivery sends it, encoded once however many subscribers it has; event_id()
names an item for webhook receivers.

Who follows which, each keeping its own cursor:

    live/hub.py  Feed            each stream someone in this process listens to,
                                 read once for all of them
    live/subscription.py         a client's subscription: replays after its
                                 cursor, then takes the Feed's items, healing gaps
    webhooks/delivery.py         a webhook's durable cursor (DomainVersions or
                                 RuleLog)
    rules/engine.py              each rule's durable cursor over its domain's
                                 versions (DomainVersions.facts: what rules see)

Commits say that a stream moved (aggregates.announcements, then the channel layer
between processes); a follower that missed it finds out from latest() on a clock.
Runner is that shape once: a task per key with work, started after a commit and
whenever its clock's look finds work. The rules engine (a key per domain) and the
deliverer (a key per webhook) run on it.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from django.db import DatabaseError

from aggregates import db, serving, store
from aggregates.errors import NotFound
from aggregates.models import Rule, RuleEvent, Version
from aggregates.values import isoformat

logger = logging.getLogger("botlnek.streams")

PAGE = 500  # items read at a time by live delivery


@dataclass(frozen=True)
class DomainVersions:
    """A domain's versions, by position; only one aggregate's if `aggregate`."""

    domain: str
    aggregate: str | None = None

    kind: ClassVar[str] = "version"

    def latest(self) -> int:
        return store.latest_positions([self.domain]).get(self.domain, 0)

    def read(
        self, after: int, limit: int, up_to: int | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """The latest position, then the version frames (with `counts`) after
        `after`, up to `up_to`."""
        return store.live_frames(
            self.domain,
            after_position=after,
            limit=limit,
            aggregate=self.aggregate,
            up_to=up_to,
        )

    @staticmethod
    def cursor(item: dict[str, Any]) -> int:
        return item["position"]

    @staticmethod
    def event_id(domain_id: int, item: dict[str, Any]) -> str:
        return f"msg_v{domain_id}_{item['position']}"

    def facts(self, domain_id: int, after: int, limit: int) -> list[tuple]:
        """For the rules engine: the versions after `after` as rules see them —
        (position, aggregate id, aggregate key, its first version's time, number,
        commit time, collection, counts) — in position order."""
        return list(
            Version.objects.filter(domain_id=domain_id, position__gt=after)
            .order_by("position")
            .values_list(
                "position",
                "aggregate_id",
                "aggregate__key",
                "aggregate__created_at",
                "number",
                "at",
                "source__collection",
                "counts",
            )[:limit]
        )


@dataclass(frozen=True)
class RuleLog:
    """A rule's events, by seq."""

    domain: str
    rule: str

    kind: ClassVar[str] = "rule_event"

    def latest(self) -> int:
        return get_rule(self.domain, self.rule).latest_seq

    def read(
        self, after: int, limit: int, up_to: int | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """The rule's latest seq, then its events after `after` (up to `up_to`)."""
        found = get_rule(self.domain, self.rule)
        events = RuleEvent.objects.filter(rule=found, seq__gt=after).order_by("seq")
        if up_to is not None:
            events = events.filter(seq__lte=up_to)
        return found.latest_seq, [
            event_json(event, self.rule, self.domain) for event in events[:limit]
        ]

    @staticmethod
    def cursor(item: dict[str, Any]) -> int:
        return item["seq"]

    @staticmethod
    def event_id(rule_id: int, item: dict[str, Any]) -> str:
        return f"msg_r{rule_id}_{item['seq']}"


@dataclass(frozen=True)
class DomainRules:
    """That some rule of a domain recorded events: it moves, and has no items."""

    domain: str

    kind: ClassVar[str] = "rules"

    def latest(self) -> int:
        return sum(
            Rule.objects.filter(domain__key=self.domain).values_list(
                "latest_seq", flat=True
            )
        )

    def read(self, after: int, limit: int, up_to: int | None = None):
        return self.latest(), []


Stream = DomainVersions | RuleLog | DomainRules


def latest_of(streams: Iterable[Stream]) -> dict[Stream, int]:
    """Where each stream stands now, in two queries whatever their number."""
    streams = list(streams)
    domains = {s.domain for s in streams if isinstance(s, DomainVersions)}
    positions = store.latest_positions(domains) if domains else {}
    ruled = {s.domain for s in streams if not isinstance(s, DomainVersions)}
    rows = Rule.objects.filter(domain__key__in=ruled).values_list(
        "domain__key", "name", "latest_seq"
    )
    seqs = {(domain, name): seq for domain, name, seq in rows} if ruled else {}
    latest: dict[Stream, int] = {}
    for stream in streams:
        if isinstance(stream, DomainVersions):
            latest[stream] = positions.get(stream.domain, 0)
        elif isinstance(stream, RuleLog):
            latest[stream] = seqs.get((stream.domain, stream.rule), 0)
        else:
            latest[stream] = sum(
                seq for (domain, _), seq in seqs.items() if domain == stream.domain
            )
    return latest


def get_rule(domain: str, name: str) -> Rule:
    try:
        return Rule.objects.select_related("domain").get(domain__key=domain, name=name)
    except Rule.DoesNotExist:
        store.get_domain(domain)
        raise NotFound(f"rule {name!r} does not exist in domain {domain!r}") from None


def event_json(event: RuleEvent, rule: str, domain: str) -> dict[str, Any]:
    return {
        "rule": rule,
        "seq": event.seq,
        "domain": domain,
        "aggregate": event.aggregate,
        "event": event.event,
        "reason": event.reason or None,
        "version": event.version,
        "position": event.position,
        "at": isoformat(event.at),
        "late": event.late,
        "inputs": event.inputs,
    }


# Items as live delivery sends them


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
        """The version frame; without `subscription` as SSE sends it."""
        tail = self.delta_tail() if mode == "delta" else await self.full_tail()
        head = '{"type":"version",'
        if subscription is not None:
            head += '"subscription":' + json.dumps(subscription) + ","
        return head + tail


class RuleFrame:
    """One event of a rule as sent to subscribers: in full mode with the
    aggregate's state as of the event's version (null once the aggregate was
    pruned), in delta mode without it; each built at most once."""

    __slots__ = ("_full", "aggregate", "body", "seq", "version")

    def __init__(self, event: dict[str, Any]):
        self.body = event
        self.seq: int = event["seq"]
        self.aggregate: str = event["aggregate"]
        self.version: int = event["version"]
        self._full: asyncio.Future | None = None

    @property
    def cursor(self) -> int:
        return self.seq

    async def text(self, mode: str = "full", subscription: str | None = None) -> str:
        if mode == "delta":
            tail = json.dumps(self.body, ensure_ascii=False)[1:]
        else:
            if self._full is None:
                self._full = asyncio.ensure_future(self._build_full())
            tail = await asyncio.shield(self._full)
        head = '{"type":"rule_event",'
        if subscription is not None:
            head += '"subscription":' + json.dumps(subscription) + ","
        return head + tail

    async def _build_full(self) -> str:
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


async def read_frames(
    stream: Stream, after: int, up_to: int | None = None
) -> tuple[int, list[Frame | RuleFrame]]:
    """A page of the stream's items after `after`, as live delivery sends them."""
    latest, items = await db.read(stream.read, after, PAGE, up_to)
    wrap = RuleFrame if isinstance(stream, RuleLog) else Frame
    return latest, [wrap(item) for item in items]


# Following: a task per key with work, woken on commit, plus a clock

K = TypeVar("K", bound=Hashable)


class Runner(Generic[K]):
    """Runs `work(key)` for each key with work, one task per key at a time, while
    it answers that there is more to do now.

    A key starts when poked (after a commit: poke_threadsafe from the committing
    thread) or when the clock's `look()` — every `every` seconds, or sooner when
    woken — names it; a round of work waits `delay` seconds first (commits
    arriving together then share one round), except one that follows a round
    which said there was more to do now: a backlog is worked off without pauses
    between its rounds. A key poked while its task runs
    goes round again once the round in progress is done if `again` (the engine:
    a commit came in during a step); else the running task is left to find the
    news itself (the deliverer's tasks watch for it).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[K], Awaitable[bool]],
        look: Callable[[], Awaitable[Iterable[K]]],
        *,
        every: float,
        again: bool,
        delay: float = 0.0,
        min_gap: float = 0.0,
    ) -> None:
        self.name = name
        self.work = work
        self.look = look
        self.every = every
        self.again = again
        self.delay = delay
        self.min_gap = min_gap  # between two looks, however often woken
        self.running: dict[K, asyncio.Task] = {}
        self.poked: set[K] = set()  # poked while running
        self.stopping = False
        self.started = False  # the clock runs
        self._wake: asyncio.Event | None = None

    def poke(self, key: K) -> None:
        """On the loop: start `key` (or have it run again)."""
        if self.stopping:
            return
        if key in self.running:
            if self.again:
                self.poked.add(key)
            return
        self.running[key] = asyncio.ensure_future(self._run(key))

    def poke_threadsafe(self, key: K) -> None:
        """From any thread (the one that committed): poke on the serving loop."""
        loop = serving.server_loop()
        if loop is not None:
            loop.call_soon_threadsafe(self.poke, key)

    def look_soon(self) -> None:
        """On the loop: have the clock look now."""
        if self._wake is not None:
            self._wake.set()

    def is_running(self, key: K) -> bool:
        return key in self.running

    async def _run(self, key: K) -> None:
        more = False
        try:
            while not self.stopping:
                if self.delay and not more:
                    await asyncio.sleep(self.delay)
                self.poked.discard(key)
                try:
                    more = await self.work(key)
                except DatabaseError as exc:
                    logger.warning("%s of %r failed: %s", self.name, key, exc)
                    return
                except Exception:
                    logger.exception("%s of %r failed", self.name, key)
                    return
                if not more and key not in self.poked:
                    return
        finally:
            del self.running[key]

    async def clock(self) -> None:
        """Look for work every `every` seconds (sooner when woken), until stopped."""
        self.started = True
        self._wake = asyncio.Event()
        while not self.stopping:
            try:
                for key in await self.look():
                    self.poke(key)
            except Exception as exc:
                logger.warning("%s: looking for work: %s", self.name, exc)
            if self.min_gap:
                await asyncio.sleep(self.min_gap)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)
            self._wake.clear()

    async def stop(self, grace: float) -> None:
        """Start nothing more; cancel what still runs after `grace` seconds."""
        self.stopping = True
        self.look_soon()
        tasks = list(self.running.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
