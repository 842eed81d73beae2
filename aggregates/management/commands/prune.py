import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from django.utils import timezone

from aggregates import store
from aggregates.management.progress import done, progress
from aggregates.models import Aggregate
from aggregates.store.records import PENDING

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text)
    if match is None:
        raise CommandError(
            f"--older-than must look like 90d, 12h, 30m or 45s, not {text!r}"
        )
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Delete whole aggregates not updated for a while, with their versions, "
        "sources and receipts: the only deletion there is. Aggregates a rule still "
        "waits for (waiting or late) are kept unless --include-pending."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, type=str)
        parser.add_argument("--domain", help="only this domain")
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument(
            "--include-pending",
            action="store_true",
            help="also delete aggregates a rule still has waiting or late",
        )
        parser.add_argument("--batch", type=int, default=200)

    def handle(
        self, *args, older_than, domain, dry_run, batch, include_pending, **options
    ):
        cutoff = timezone.now() - duration(older_than)
        old = Aggregate.objects.filter(updated_at__lt=cutoff)
        if not include_pending:
            old = old.exclude(rule_statuses__status__in=PENDING)
        if domain:
            old = old.filter(domain__key=domain)
        if dry_run:
            rows = (
                old.values("domain__key")
                .annotate(n=Count("id"))
                .order_by("domain__key")
            )
            for row in rows:
                self.stdout.write(f"{row['domain__key']}: {row['n']} aggregates")
            self.stdout.write(
                f"{sum(r['n'] for r in rows)} aggregates would be deleted"
            )
            return
        total = old.count()
        deleted = 0
        while True:
            # Small batches, each its own short transaction: ingestion waits for
            # one batch at most, never for the whole prune.
            ids = list(old.order_by("id").values_list("id", flat=True)[:batch])
            if not ids:
                break
            deleted += store.prune_aggregates(
                ids, cutoff, include_pending=include_pending
            )
            progress(deleted, total, "aggregates deleted")
        if total:
            done()
        since = f"{cutoff:%Y-%m-%d %H:%M}"
        self.stdout.write(
            f"Deleted {deleted} aggregates not updated since {since} UTC."
        )
