"""The deliverer: webhooks' events, POSTed in order, at least once. It runs in the
delivery worker process of each server process (worker.py).

For each webhook with events after its cursor (looked up every TICK_SECONDS, and at
once after a commit into a domain with webhooks), the deliverer takes the webhook's
lease — one delivery at a time per webhook across every process — and runs one
task for it: read the next events, POST them one by one with the Standard Webhooks
headers, and once caught up wait LINGER_SECONDS for more before giving the lease
up. While the task runs, the lease is renewed every RENEW_SECONDS, batch in flight
or not; an attempt starts only while the lease is sure to outlast it, and a task
whose renewal failed stops before its next attempt, so a lease never expires under
an attempt and two processes never send a webhook's events at once. A dead
holder's lease expires after LEASE_SECONDS and whoever looks next takes it over.

Progress (cursor, attempts, health) is saved for all webhooks together
(progress.py, Saver):
every FLUSH_SECONDS, after a failure and at the end of each batch of events.
Saving compares the cursor it started from and names the lease's holder: a
replay, or another holder, in between makes it stop instead of overwriting.
Events that got a 2xx but were not saved yet when a worker died are delivered
again; nothing else is. A failure (non-2xx, timeout, connection error, a host no
longer allowed) is logged and the same event retried after a backoff doubling from
1 s (+ up to 20% jitter, at most 10 min); a 410, or a day of failing, pauses the
webhook with the reason.

No receiver holds up another: each webhook has its own task and its own client
(posting.py), with one connection at most, connected to the address its host was
checked at (targets.py: resolved once per attempt, off the event loop, never again
before connecting); an attempt ends ATTEMPT_SECONDS after it started, whatever the
receiver does, and reads at most BODY_LIMIT bytes of the answer; and the webhooks
of one domain make at most DOMAIN_CONNECTIONS attempts at once (waiting for a turn
is not a failure). The webhooks of a domain share its versions' events, read and
encoded once (VersionEvents).
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from datetime import datetime
from itertools import islice

import httpx
from django.db.models import F, Q
from django.utils import timezone

from aggregates import db, leases, metrics
from aggregates.models import Domain, Webhook, WebhookDelivery
from aggregates.streams import DomainVersions, RuleLog, Runner
from aggregates.webhooks import posting, targets
from aggregates.webhooks.posting import Outbound
from aggregates.webhooks.progress import Progress, Run, Saver, lease_name

logger = logging.getLogger("botlnek.webhooks")

TICK_SECONDS = 0.5
LOOKS_PER_SECOND = 20
LEASE_SECONDS = 30
RENEW_SECONDS = 5
BATCH = 100  # events read at a time
FLUSH_SECONDS = 0.25
LINGER_SECONDS = 5  # a caught-up webhook keeps its lease and task this long
DOMAIN_CONNECTIONS = 16  # attempts at once, per domain


def pending(webhook_id: int) -> tuple[Webhook, list[Outbound]] | None:
    """The webhook, and the next events after its cursor; None if it is paused
    or waiting out a backoff."""
    webhook = Webhook.objects.select_related("domain", "rule").get(pk=webhook_id)
    if webhook.paused or (
        webhook.next_attempt_at and webhook.next_attempt_at > timezone.now()
    ):
        return None
    domain = webhook.domain
    if webhook.rule is None:
        return webhook, _versions.after(domain, webhook.cursor)
    rule = webhook.rule
    _, events = RuleLog(domain.key, rule.name).read(webhook.cursor, BATCH)
    wanted = set(webhook.events)
    return webhook, [
        Outbound.of(
            domain.key,
            f"rule.{event['event']}",
            RuleLog.cursor(event),
            RuleLog.event_id(rule.pk, event),
            event if f"rule.{event['event']}" in wanted else None,
        )
        for event in events
    ]


class VersionEvents:
    """Version events by position, read and encoded once for all the webhooks of
    a domain (ten webhooks on a domain used to read every frame ten times). A
    version's frame never changes; an entry is forgotten after MAX_AGE seconds
    (so a replay over pruned versions soon finds them gone) or when the newest
    MAX_ENTRIES need the room."""

    MAX_ENTRIES = 20_000
    MAX_AGE = 60

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], tuple[float, Outbound]] = {}
        self.lock = threading.Lock()

    def after(self, domain: Domain, cursor: int) -> list[Outbound]:
        """The next events after `cursor` (at most BATCH)."""
        found = self._cached(domain.pk, cursor)
        if found:
            return found
        _, frames = DomainVersions(domain.key).read(cursor, BATCH)
        events = [
            Outbound.of(
                domain.key,
                "version",
                DomainVersions.cursor(frame),
                DomainVersions.event_id(domain.pk, frame),
                frame,
            )
            for frame in frames
        ]
        now = time.monotonic()
        with self.lock:
            for event in events:
                self.entries[domain.pk, event.cursor] = (now, event)
            if len(self.entries) > self.MAX_ENTRIES:  # the oldest half goes
                for key in list(islice(self.entries, self.MAX_ENTRIES // 2)):
                    del self.entries[key]
        return events

    def _cached(self, domain_id: int, cursor: int) -> list[Outbound]:
        """What is cached of the positions right after `cursor`, in a row."""
        fresh = time.monotonic() - self.MAX_AGE
        found = []
        with self.lock:
            while len(found) < BATCH:
                entry = self.entries.get((domain_id, cursor + len(found) + 1))
                if entry is None or entry[0] < fresh:
                    break
                found.append(entry[1])
        return found


_versions = VersionEvents()


def with_work(now: datetime | None = None) -> list[int]:
    """Webhooks with events after their cursor, neither paused nor backing off."""
    now = now or timezone.now()
    ready = Webhook.objects.filter(paused=False).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    versions = ready.filter(rule__isnull=True, cursor__lt=F("domain__latest_position"))
    rules = ready.filter(rule__isnull=False, cursor__lt=F("rule__latest_seq"))
    return sorted(
        {*versions.values_list("id", flat=True), *rules.values_list("id", flat=True)}
    )


def domains_with_webhooks() -> set[str]:
    return set(Webhook.objects.values_list("domain__key", flat=True).distinct())


def _look() -> tuple[list[int], set[str]]:
    return with_work(), domains_with_webhooks()


class Deliverer:
    """The deliverer of the delivery worker process (see worker.py): a
    streams.Runner keyed by webhook, its clock the look for webhooks with work."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.saver = Saver(holder)
        # At most LOOKS_PER_SECOND looks: busy webhooks hear of new events
        # directly (`news`), and a look per commit under load was two queries per
        # commit for nothing.
        self.webhooks: Runner[int] = Runner(
            "delivery",
            self._deliver,
            self._look,
            every=TICK_SECONDS,
            again=False,
            min_gap=1 / LOOKS_PER_SECOND,
        )
        self.news = asyncio.Event()  # set (and replaced) when something commits
        # Attempts made since the last look at this, by (domain, outcome): the
        # server process counts them in its /metrics.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        # Domains with webhooks, as of the last look (None: not looked yet). A
        # commit elsewhere wakes nobody: under load, looking after every commit
        # of a domain without webhooks cost more than the deliveries themselves.
        self.hooked: set[str] | None = None
        self.turns: dict[str, asyncio.Semaphore] = {}  # per domain

    @property
    def running(self) -> dict[int, asyncio.Task]:
        return self.webhooks.running

    @property
    def stopping(self) -> bool:
        return self.webhooks.stopping

    def committed(self, domain: str) -> None:
        """Something committed in `domain`: look for work at once if it has
        webhooks."""
        if self.hooked is None or domain in self.hooked:
            self._announce()

    def watch(self, domain: str) -> None:
        """A webhook of `domain` was made or changed: look at once."""
        if self.hooked is not None:
            self.hooked.add(domain)
        self._announce()

    def _announce(self) -> None:
        """Wake the look for work, and the tasks waiting for new events."""
        self.webhooks.look_soon()
        self.news.set()
        self.news = asyncio.Event()

    async def _look(self) -> list[int]:
        work, self.hooked = await db.read(_look)
        return work

    async def run(self) -> None:
        saving = asyncio.ensure_future(self._save_every_flush())
        try:
            await self.webhooks.clock()
        finally:
            saving.cancel()

    async def _save_every_flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.saver.flush()

    async def stop(self, grace: float) -> None:
        """Stop: each webhook's task saves what it sent and gives its lease up
        after the attempt in flight; what is still running after `grace` seconds
        is cancelled (what it sent since its last save is sent again later)."""
        self.news.set()
        await self.webhooks.stop(grace)

    async def _deliver(self, webhook_id: int) -> bool:
        """Deliver the webhook's events while there are any, and for a moment
        after (LINGER_SECONDS: the next post is likely soon), holding its lease.
        The runner forgets the task only after the lease is released: a task
        started for the webhook meanwhile would renew what this one gives up."""
        name = lease_name(webhook_id)
        asked_at = time.monotonic()
        try:
            held, _ = await db.write(leases.acquire, name, self.holder, LEASE_SECONDS)
        except Exception as exc:
            logger.warning("taking %s: %s", name, exc)
            return False
        if not held:
            return False  # another process delivers it
        holding = leases.Holding(
            name, self.holder, asked_at, LEASE_SECONDS, RENEW_SECONDS
        )
        renewing = asyncio.ensure_future(holding.renew())
        try:
            async with posting.client() as client:
                await self._deliver_held(webhook_id, holding, client)
        except Webhook.DoesNotExist:
            pass  # removed meanwhile
        except Exception:
            logger.exception("delivering webhook %s failed", webhook_id)
        finally:
            await holding.stop_renewing(renewing)
            try:
                await db.write(leases.release, name, self.holder)
            except Exception as exc:
                logger.warning("releasing %s: %s (it expires)", name, exc)
        return False

    async def _deliver_held(
        self, webhook_id: int, holding: leases.Holding, client: httpx.AsyncClient
    ) -> None:
        worked = time.monotonic()
        while not self.stopping and not holding.lost:
            news = self.news  # taken before reading: what commits after wakes it
            found = await db.read(pending, webhook_id)
            if found is None:
                return  # paused, or backing off
            webhook, outbound = found
            if outbound:
                if not await self._send(webhook, outbound, holding, client):
                    return
                worked = time.monotonic()
                continue
            left = LINGER_SECONDS - (time.monotonic() - worked)
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), min(left, TICK_SECONDS))

    async def _send(
        self,
        webhook: Webhook,
        outbound: list[Outbound],
        holding: leases.Holding,
        client: httpx.AsyncClient,
    ) -> bool:
        """POST these events in order (saved by the saver as it goes); True to go
        on."""
        run = Run(webhook, webhook.cursor, Progress(webhook.cursor))
        self.saver.runs[webhook.pk] = run
        try:
            for event in outbound:
                if self.stopping or run.stale:
                    break
                if event.body is not None:
                    attempt = await self._attempt(webhook, event, holding, client)
                    if attempt is None:  # the lease may not outlast an attempt
                        await self.saver.save_now(run)
                        return False  # the next look takes it up again
                    run.progress.attempts.append(attempt)
                    if not (attempt.status_code and 200 <= attempt.status_code < 300):
                        run.progress.failed = attempt
                        await self.saver.save_now(run)
                        return False
                    run.progress.succeeded_at = attempt.at
                    webhook.attempts = 0
                run.progress.cursor = event.cursor
            saved = await self.saver.save_now(run)
            return saved and not self.stopping and not holding.lost
        finally:
            del self.saver.runs[webhook.pk]

    async def _attempt(
        self,
        webhook: Webhook,
        event: Outbound,
        holding: leases.Holding,
        client: httpx.AsyncClient,
    ) -> WebhookDelivery | None:
        """One attempt, when the domain's turn comes; None if the lease might
        expire before the attempt would end."""
        domain = webhook.domain.key
        turns = self.turns.setdefault(domain, asyncio.Semaphore(DOMAIN_CONNECTIONS))
        async with turns:
            if not holding.lasts(targets.RESOLVE_SECONDS + posting.ATTEMPT_SECONDS + 1):
                return None
            attempt, failure = await posting.post(webhook, event, client)
        outcome = metrics.delivery_outcome(attempt.status_code, failure)
        self.outcomes[domain, outcome] += 1
        return attempt
