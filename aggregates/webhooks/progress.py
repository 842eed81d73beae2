"""What delivering has done, saved: each webhook's cursor, attempts and health,
for every webhook delivering in a worker together (Saver), compared with the cursor
it started from and the lease it holds (save_all), with the backoff and the pause
that failures lead to."""

import asyncio
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists
from django.utils import timezone

from aggregates import db
from aggregates.models import Lease, Webhook, WebhookDelivery

logger = logging.getLogger("botlnek.webhooks")

BACKOFF_CAP_SECONDS = 600
PAUSE_AFTER = timedelta(hours=24)
KEEP_DELIVERIES = 1000  # per webhook, the newest


def lease_name(webhook_id: int) -> str:
    return f"webhook:{webhook_id}"


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

    def __init__(self, holder: str) -> None:
        self.holder = holder  # of the webhooks' leases
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
                    save_all,
                    [(run.webhook, at, done) for run, at, done in batch],
                    self.holder,
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


def save_all(
    runs: list[tuple[Webhook, int, Progress]], holder: str
) -> list[dict | None]:
    """Save the progress of these webhooks in one transaction: for each, the
    changes made to it, or None if somebody moved its cursor since the one given
    (a replay, another holder) or `holder` no longer holds its lease: that one
    stops."""
    now = timezone.now()
    saved: list[dict | None] = []
    attempts: list[WebhookDelivery] = []
    with transaction.atomic():
        for webhook, started_at, progress in runs:
            changes = _changes(webhook, progress, now)
            # What was sent was sent, paused meanwhile or not; a moved cursor (a
            # replay, another holder) or a lost lease says stop.
            held = Lease.objects.filter(
                name=lease_name(webhook.pk), holder=holder, expires_at__gt=now
            )
            moved = (
                Webhook.objects.filter(
                    pk=webhook.pk, cursor=started_at, rewinds=webhook.rewinds
                )
                .filter(Exists(held))
                .update(**changes)
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
    """Seconds before attempt `attempts` + 1: doubling from 1 s, plus up to 20%
    jitter, never more than 10 min (the jitter spreads the waits below the cap)."""
    base = 2 ** min(attempts - 1, 20)
    return min(BACKOFF_CAP_SECONDS, base * (1 + random.uniform(0, 0.2)))


def _outcome(attempt: WebhookDelivery) -> str:
    return f"HTTP {attempt.status_code}" if attempt.status_code else attempt.error
