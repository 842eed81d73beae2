"""Leases: one holder at a time for a named piece of work, across every process and
machine. A holder renews its lease well before it expires; one that dies simply
stops renewing, and whoever asks after the expiry takes the work over."""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from aggregates import db
from aggregates.models import Lease

logger = logging.getLogger("botlnek.leases")


@dataclass(frozen=True)
class Held:
    name: str
    holder: str
    expires_at: datetime


def acquire(name: str, holder: str, seconds: float) -> tuple[bool, Held]:
    """Take or renew the lease for `seconds`: (True, it) if `holder` has it now,
    else (False, the current holder's)."""
    now = timezone.now()
    expires_at = now + timedelta(seconds=seconds)
    with transaction.atomic():
        lease = Lease.objects.select_for_update().filter(name=name).first()
        if lease is None:
            try:
                with transaction.atomic():
                    lease = Lease.objects.create(
                        name=name, holder=holder, expires_at=expires_at
                    )
            except IntegrityError:  # taken at the same moment by someone else
                lease = Lease.objects.get(name=name)
                return False, Held(name, lease.holder, lease.expires_at)
            return True, Held(name, holder, expires_at)
        if lease.holder != holder and lease.expires_at > now:
            return False, Held(name, lease.holder, lease.expires_at)
        lease.holder, lease.expires_at = holder, expires_at
        lease.save(update_fields=["holder", "expires_at"])
        return True, Held(name, holder, expires_at)


def release(name: str, holder: str) -> bool:
    """Give the lease up, if `holder` has it."""
    deleted, _ = Lease.objects.filter(name=name, holder=holder).delete()
    return bool(deleted)


class Holding:
    """A lease as an asyncio task holds it: until when it is sure to be held (by
    the monotonic clock), renewed every `every` seconds for `seconds` meanwhile."""

    def __init__(
        self, name: str, holder: str, acquired_at: float, seconds: float, every: float
    ) -> None:
        self.name = name
        self.holder = holder
        self.seconds = seconds
        self.every = every
        self.until = acquired_at + seconds
        self.lost = False
        self.renewal: asyncio.Future | None = None  # a renewal being written

    def lasts(self, seconds: float) -> bool:
        """Still held `seconds` from now, for sure."""
        return not self.lost and time.monotonic() + seconds < self.until

    async def renew(self) -> None:
        """Renew until cancelled; lost for good once somebody else holds it."""
        while not self.lost:
            await asyncio.sleep(self.every)
            asked_at = time.monotonic()
            # Shielded: cancelling the renewals must not leave a write running
            # unseen, which could take the lease again after it was given up.
            self.renewal = asyncio.ensure_future(
                db.write(acquire, self.name, self.holder, self.seconds)
            )
            try:
                held, _ = await asyncio.shield(self.renewal)
            except Exception as exc:  # it may still be held: `until` says how long
                logger.warning("renewing %s: %s", self.name, exc)
                continue
            if held:
                self.until = asked_at + self.seconds
            else:
                self.lost = True

    async def stop_renewing(self, renewing: asyncio.Task) -> None:
        """Cancel the renewals, and wait for one being written."""
        renewing.cancel()
        if self.renewal is not None:
            await asyncio.wait([self.renewal])
