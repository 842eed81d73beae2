"""The deliverer: webhooks' events, POSTed in order, at least once. It runs in the
delivery worker process of each server process (worker.py).

For each webhook with events after its cursor (looked up every TICK_SECONDS, and at
once after a commit into a domain with webhooks), the deliverer takes the webhook's
lease — one delivery at a time per webhook across every process; a dead holder's
lease expires after LEASE_SECONDS and whoever looks next takes it over — and runs
one task for it: read the next events, POST them one by one with the Standard
Webhooks headers, and once caught up wait LINGER_SECONDS for more before giving the
lease up. Progress (cursor, attempts, health) is saved for all webhooks together
(Saver): every FLUSH_SECONDS, after a failure and at the end of each batch of
events. Saving compares the cursor it started from: a replay or another holder in
between makes it stop instead of overwriting. Events that got a 2xx but
were not saved yet when a worker died are delivered again; nothing else is. A
failure (non-2xx, timeout, connection error) is logged and the same event retried
after a backoff doubling from 1 s (+ up to 20% jitter, at most 10 min); a 410, or a
day of failing, pauses the webhook with the reason. Each webhook has its own task: a
slow receiver delays nobody else. The webhooks of a domain share its versions'
events, read and encoded once (VersionEvents).
"""

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from urllib.parse import urlsplit

import httpx
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from standardwebhooks import Webhook as Signer

from aggregates import db, leases, metrics, store
from aggregates.models import Domain, Webhook, WebhookDelivery
from aggregates.rules.read import rule_events
from aggregates.webhooks.write import host_allowed

logger = logging.getLogger("botlnek.webhooks")

TICK_SECONDS = 0.5
LOOKS_PER_SECOND = 20
LEASE_SECONDS = 15
BATCH = 100  # events read at a time
FLUSH_SECONDS = 0.25
LINGER_SECONDS = 5  # a caught-up webhook keeps its lease and task this long
TIMEOUT_SECONDS = 10
BACKOFF_CAP_SECONDS = 600
PAUSE_AFTER = timedelta(hours=24)
KEEP_DELIVERIES = 1000  # per webhook, the newest


@dataclass(frozen=True)
class Outbound:
    """An event of the webhook's stream: where it is, and what to send (if any)."""

    cursor: int
    event_id: str
    body: str | None  # None: not one this webhook wants (another rule event)


@dataclass
class Progress:
    """What a delivery run has done since it last saved."""

    cursor: int
    attempts: list[WebhookDelivery] = field(default_factory=list)
    succeeded_at: datetime | None = None
    failed: WebhookDelivery | None = None


@dataclass(eq=False)
class Run:
    """A webhook delivering a batch of events: the cursor saved in the database
    as far as it knows, and what it has done since."""

    webhook: Webhook
    saved: int
    progress: Progress
    stale: bool = False  # somebody else moved the cursor: stop


class Saver:
    """The progress of every webhook delivering in this worker, saved together:
    one transaction for all of them every FLUSH_SECONDS, and at once when a run
    asks (after a failure, at the end of its events). Each webhook used to save on
    its own: ten times the transactions for ten webhooks, and on SQLite each takes
    the database's one write lock, which a niced process may hold while it waits
    for a CPU, with the server's posts waiting behind it."""

    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}  # by webhook
        self.lock = asyncio.Lock()  # one save at a time

    async def save_now(self, run: Run) -> bool:
        """Save everything done so far; False if `run` must stop."""
        await self.flush()
        return not run.stale

    async def flush(self) -> None:
        async with self.lock:
            batch = []
            for run in self.runs.values():
                progress = run.progress
                if progress.cursor != run.saved or progress.attempts:
                    batch.append((run, run.saved, progress))
                    run.saved, run.progress = progress.cursor, Progress(progress.cursor)
            if not batch:
                return
            try:
                saved = await db.write(
                    save_all, [(run.webhook, at, done) for run, at, done in batch]
                )
            except Exception as exc:  # what it sent is sent again, later
                logger.warning("saving webhooks' progress: %s", exc)
                saved = [None] * len(batch)
            for (run, _, _), changes in zip(batch, saved, strict=True):
                if changes is None:
                    run.stale = True
                else:
                    run.webhook.attempts = changes["attempts"]
                    run.webhook.failing_since = changes["failing_since"]


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
    _, events = rule_events(
        domain.key, webhook.rule.name, after_seq=webhook.cursor, limit=BATCH
    )
    wanted = set(webhook.events)
    return webhook, [
        Outbound(
            event["seq"],
            f"msg_r{webhook.rule.pk}_{event['seq']}",
            json.dumps({"type": f"rule.{event['event']}", **event}, ensure_ascii=False)
            if f"rule.{event['event']}" in wanted
            else None,
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
        _, frames = store.live_frames(domain.key, after_position=cursor, limit=BATCH)
        events = [
            Outbound(
                frame["position"],
                f"msg_v{domain.pk}_{frame['position']}",
                json.dumps({"type": "version", **frame}, ensure_ascii=False),
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


def save_all(runs: list[tuple[Webhook, int, Progress]]) -> list[dict | None]:
    """Save the progress of these webhooks in one transaction: for each, the
    changes made to it, or None if somebody moved its cursor since the one given
    (a replay, another holder): that one stops."""
    now = timezone.now()
    saved: list[dict | None] = []
    attempts: list[WebhookDelivery] = []
    with transaction.atomic():
        for webhook, started_at, progress in runs:
            changes = _changes(webhook, progress, now)
            # What was sent was sent, paused meanwhile or not; a moved cursor (a
            # replay, another holder) says stop.
            moved = Webhook.objects.filter(pk=webhook.pk, cursor=started_at).update(
                **changes
            )
            saved.append(changes if moved else None)
            if moved:
                for attempt in progress.attempts:
                    attempt.webhook_id = webhook.pk
                attempts += progress.attempts
        WebhookDelivery.objects.bulk_create(attempts)
        for (webhook, _, _), changes in zip(runs, saved, strict=True):
            if changes is not None:
                _keep_newest(webhook.pk)
    return saved


def _changes(webhook: Webhook, progress: Progress, now: datetime) -> dict:
    """The webhook's fields after `progress`: cursor, health, backoff, pause."""
    changes: dict = {"cursor": progress.cursor}
    if progress.attempts:
        last = progress.attempts[-1]
        changes["last_attempt_at"] = last.at
        changes["last_status"] = last.status_code
        changes["last_error"] = last.error
    if progress.succeeded_at:
        changes["last_success_at"] = progress.succeeded_at
    failed = progress.failed
    if failed is None:
        return changes | {"attempts": 0, "failing_since": None, "next_attempt_at": None}
    since = webhook.failing_since or failed.at
    changes |= {
        "attempts": failed.attempt,
        "failing_since": since,
        "next_attempt_at": now + timedelta(seconds=backoff(failed.attempt)),
    }
    reason = None
    if failed.status_code == 410:
        reason = "the receiver answered 410 Gone"
    elif now - since >= PAUSE_AFTER:
        reason = f"failing for 24 hours; the last attempt: {_outcome(failed)}"
    if reason:
        changes |= {"paused": True, "paused_reason": reason}
    return changes


def _keep_newest(webhook_id: int) -> None:
    """The delivery log keeps the newest KEEP_DELIVERIES attempts per webhook."""
    if random.random() > 0.05:  # now and then is enough
        return
    cutoff = (
        WebhookDelivery.objects.filter(webhook_id=webhook_id)
        .order_by("-id")
        .values_list("id", flat=True)[KEEP_DELIVERIES : KEEP_DELIVERIES + 1]
    )
    if cutoff:
        WebhookDelivery.objects.filter(
            webhook_id=webhook_id, id__lte=cutoff[0]
        ).delete()


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts` + 1: doubling from 1 s, capped at 10 min,
    plus up to 20% jitter."""
    base = min(BACKOFF_CAP_SECONDS, 2 ** min(attempts - 1, 20))
    return base * (1 + random.uniform(0, 0.2))


def _outcome(attempt: WebhookDelivery) -> str:
    return f"HTTP {attempt.status_code}" if attempt.status_code else attempt.error


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
    """The deliverer of the delivery worker process (see worker.py)."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.running: dict[int, asyncio.Task] = {}
        self.client: httpx.AsyncClient | None = None
        self.saver = Saver()
        self.wake = asyncio.Event()  # look for webhooks with work
        self.news = asyncio.Event()  # set (and replaced) when something commits
        self.stopping = False
        # Attempts made since the last look at this, by (domain, outcome): the
        # server process counts them in its /metrics.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        # Domains with webhooks, as of the last look (None: not looked yet). A
        # commit elsewhere wakes nobody: under load, looking after every commit
        # of a domain without webhooks cost more than the deliveries themselves.
        self.hooked: set[str] | None = None

    def committed(self, domain: str) -> None:
        """Something committed in `domain`: look for work at once if it has
        webhooks."""
        if self.hooked is None or domain in self.hooked:
            self._announce()

    def watch(self, domain: str) -> None:
        """A webhook was made in `domain`: look at once."""
        if self.hooked is not None:
            self.hooked.add(domain)
        self._announce()

    def _announce(self) -> None:
        """Wake the look for work, and the tasks waiting for new events."""
        self.wake.set()
        self.news.set()
        self.news = asyncio.Event()

    async def run(self) -> None:
        # Connections are reused; redirects are not followed.
        self.client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        saving = asyncio.ensure_future(self._save_every_flush())
        try:
            while not self.stopping:
                try:
                    work, self.hooked = await db.read(_look)
                    for webhook_id in work:
                        if webhook_id not in self.running and not self.stopping:
                            task = asyncio.ensure_future(self._deliver(webhook_id))
                            self.running[webhook_id] = task
                except Exception as exc:
                    logger.warning("looking for webhooks with work: %s", exc)
                # At most LOOKS_PER_SECOND looks: busy webhooks hear of new
                # events directly (`news`), and a look per commit under load
                # was two queries per commit for nothing.
                await asyncio.sleep(1 / LOOKS_PER_SECOND)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), TICK_SECONDS)
                self.wake.clear()
        finally:
            saving.cancel()
            await self.client.aclose()

    async def _save_every_flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.saver.flush()

    async def stop(self, grace: float) -> None:
        """Stop: each webhook's task saves what it sent and gives its lease up
        after the attempt in flight; what is still running after `grace` seconds
        is cancelled (what it sent since its last save is sent again later)."""
        self.stopping = True
        self._announce()
        tasks = list(self.running.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _deliver(self, webhook_id: int) -> None:
        """Deliver the webhook's events while there are any, and for a moment
        after (LINGER_SECONDS: the next post is likely soon), holding its lease."""
        name = f"webhook:{webhook_id}"
        try:
            held, _ = await db.write(leases.acquire, name, self.holder, LEASE_SECONDS)
            if not held:
                return  # another process delivers it
            renewed = worked = time.monotonic()
            while not self.stopping:
                news = self.news  # taken before reading: what commits after wakes it
                found = await db.read(pending, webhook_id)
                if found is None:
                    return  # paused, or backing off
                webhook, outbound = found
                if outbound:
                    if not await self._send(webhook, outbound):
                        return
                    worked = time.monotonic()
                else:
                    left = LINGER_SECONDS - (time.monotonic() - worked)
                    if left <= 0:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(news.wait(), min(left, TICK_SECONDS))
                if time.monotonic() - renewed > LEASE_SECONDS / 3:
                    held, _ = await db.write(
                        leases.acquire, name, self.holder, LEASE_SECONDS
                    )
                    if not held:
                        return
                    renewed = time.monotonic()
        except Webhook.DoesNotExist:
            return  # removed meanwhile
        except Exception:
            logger.exception("delivering webhook %s failed", webhook_id)
        finally:
            self.running.pop(webhook_id, None)
            try:
                await db.write(leases.release, name, self.holder)
            except Exception as exc:
                logger.warning("releasing %s: %s (it expires)", name, exc)

    async def _send(self, webhook: Webhook, outbound: list[Outbound]) -> bool:
        """POST these events in order (saved by the saver as it goes); True to go
        on."""
        run = Run(webhook, webhook.cursor, Progress(webhook.cursor))
        self.saver.runs[webhook.pk] = run
        try:
            for event in outbound:
                if self.stopping or run.stale:
                    break
                if event.body is not None:
                    attempt = await self._post(webhook, event)
                    run.progress.attempts.append(attempt)
                    if not (attempt.status_code and 200 <= attempt.status_code < 300):
                        run.progress.failed = attempt
                        await self.saver.save_now(run)
                        return False
                    run.progress.succeeded_at = attempt.at
                    webhook.attempts = 0
                run.progress.cursor = event.cursor
            return await self.saver.save_now(run) and not self.stopping
        finally:
            del self.saver.runs[webhook.pk]

    async def _post(self, webhook: Webhook, event: Outbound) -> WebhookDelivery:
        attempt = WebhookDelivery(
            event_id=event.event_id, attempt=webhook.attempts + 1, at=timezone.now()
        )
        started = time.perf_counter()
        failure = None
        try:
            host = urlsplit(webhook.url).hostname or ""
            if not host_allowed(host):
                raise ValueError(f"host {host!r} is not allowed any more")
            timestamp = datetime.now(UTC)
            signature = Signer(webhook.secret).sign(
                event.event_id, timestamp, event.body
            )
            response = await self.client.post(
                webhook.url,
                content=event.body.encode(),
                headers={
                    "content-type": "application/json",
                    "webhook-id": event.event_id,
                    "webhook-timestamp": str(int(timestamp.timestamp())),
                    "webhook-signature": signature,
                    "user-agent": "Botlnek",
                },
            )
            attempt.status_code = response.status_code
        except (httpx.HTTPError, OSError, ValueError) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}".rstrip(": ")[:500]
            failure = exc
        attempt.ms = (time.perf_counter() - started) * 1000
        outcome = metrics.delivery_outcome(attempt.status_code, failure)
        self.outcomes[webhook.domain.key, outcome] += 1
        return attempt
