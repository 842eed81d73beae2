"""Leases: one holder at a time for a named piece of work, across every process and
machine. A holder renews its lease well before it expires; one that dies simply
stops renewing, and whoever asks after the expiry takes the work over."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from aggregates.models import Lease


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
