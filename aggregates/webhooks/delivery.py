"""Each server process's deliverer: webhooks' events, POSTed in order, at least once.

For each webhook with events after its cursor (looked up every TICK_SECONDS, and at
once after a commit into a domain with webhooks), the deliverer takes the webhook's
lease — one delivery at a time per webhook across every process; a dead holder's
lease expires after LEASE_SECONDS and whoever looks next takes it over — and runs
one task for it: read the next events, POST them one by one with the Standard
Webhooks headers, and save progress (cursor, attempts, health) every FLUSH_SECONDS
and at the end. Saving compares the cursor it started from: a replay or another
holder in between makes it stop instead of overwriting. Events that got a 2xx but
were not saved yet when a process died are delivered again; nothing else is. A
failure (non-2xx, timeout, connection error) is logged and the same event retried
after a backoff doubling from 1 s (+ up to 20% jitter, at most 10 min); a 410, or a
day of failing, pauses the webhook with the reason. Each webhook has its own task: a
slow receiver delays nobody else, and nothing here blocks the event loop or a write.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from standardwebhooks import Webhook as Signer

from aggregates import db, leases, metrics, serving, store
from aggregates.models import Webhook, WebhookDelivery
from aggregates.rules.read import rule_events
from aggregates.webhooks.write import host_allowed

logger = logging.getLogger("botlnek.webhooks")

TICK_SECONDS = 0.5
LEASE_SECONDS = 15
BATCH = 100  # events read at a time
FLUSH_SECONDS = 0.1
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
        _, frames = store.live_frames(
            domain.key, after_position=webhook.cursor, limit=BATCH
        )
        return webhook, [
            Outbound(
                frame["position"],
                f"msg_v{domain.pk}_{frame['position']}",
                json.dumps({"type": "version", **frame}, ensure_ascii=False),
            )
            for frame in frames
        ]
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


def save(webhook: Webhook, started_at: int, progress: Progress) -> bool:
    """Save progress if nobody moved the cursor since `started_at`; False if
    somebody did (a replay, another holder): stop then."""
    now = timezone.now()
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
        changes |= {"attempts": 0, "failing_since": None, "next_attempt_at": None}
    else:
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
    with transaction.atomic():
        # What was sent was sent, paused meanwhile or not; a moved cursor (a
        # replay, another holder) says stop.
        moved = Webhook.objects.filter(pk=webhook.pk, cursor=started_at).update(
            **changes
        )
        if not moved:
            return False
        for attempt in progress.attempts:
            attempt.webhook_id = webhook.pk
        WebhookDelivery.objects.bulk_create(progress.attempts)
        _keep_newest(webhook.pk)
    webhook.cursor = progress.cursor
    webhook.attempts = changes["attempts"]
    webhook.failing_since = changes["failing_since"]
    return True


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
    """This process's deliverer (a background task of the serving process)."""

    def __init__(self) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[int, asyncio.Task] = {}
        self.client: httpx.AsyncClient | None = None
        self.wake: asyncio.Event | None = None
        # Domains with webhooks, as of the last look (None: not looked yet). A
        # commit elsewhere wakes nobody: under load, looking after every commit
        # of a domain without webhooks cost more than the deliveries themselves.
        self.hooked: set[str] | None = None

    def committed(self, committed) -> None:
        """Something committed (on the writer's thread): look for work at once."""
        hooked = self.hooked
        if hooked is not None and not any(c.domain in hooked for c in committed):
            return
        loop = serving.server_loop()
        if loop is not None and self.wake is not None:
            loop.call_soon_threadsafe(self.wake.set)

    def watch(self, domain: str) -> None:
        """A webhook was made in `domain` (other processes see it within a tick)."""
        if self.hooked is not None:
            self.hooked.add(domain)

    async def run(self) -> None:
        self.wake = asyncio.Event()
        # Connections are reused; redirects are not followed.
        self.client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        try:
            while True:
                try:
                    work, self.hooked = await db.read(_look)
                    for webhook_id in work:
                        if webhook_id not in self.running:
                            task = asyncio.ensure_future(self._deliver(webhook_id))
                            self.running[webhook_id] = task
                except Exception as exc:
                    logger.warning("looking for webhooks with work: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), TICK_SECONDS)
                self.wake.clear()
        finally:
            await self.client.aclose()

    async def _deliver(self, webhook_id: int) -> None:
        name = f"webhook:{webhook_id}"
        try:
            held, _ = await db.write(leases.acquire, name, self.holder, LEASE_SECONDS)
            if not held:
                return  # another process delivers it
            renewed = time.monotonic()
            while True:
                found = await db.read(pending, webhook_id)
                if found is None or not found[1]:
                    return
                webhook, outbound = found
                if not await self._send(webhook, outbound):
                    return
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
        """POST these events in order, saving as it goes; True to go on."""
        started_at = webhook.cursor
        progress = Progress(cursor=webhook.cursor)
        saved = time.monotonic()
        for event in outbound:
            if event.body is not None:
                attempt = await self._post(webhook, event)
                progress.attempts.append(attempt)
                if not (attempt.status_code and 200 <= attempt.status_code < 300):
                    progress.failed = attempt
                    await db.write(save, webhook, started_at, progress)
                    return False
                progress.succeeded_at = attempt.at
                webhook.attempts = 0
            progress.cursor = event.cursor
            if time.monotonic() - saved > FLUSH_SECONDS:
                if not await db.write(save, webhook, started_at, progress):
                    return False
                started_at, saved = progress.cursor, time.monotonic()
                progress = Progress(cursor=progress.cursor)
        return await db.write(save, webhook, started_at, progress)

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
        metrics.webhook_delivered(webhook.domain.key, attempt.status_code, failure)
        return attempt


deliverer = Deliverer()
