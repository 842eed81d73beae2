from datetime import date, timedelta

from django.core.management.base import BaseCommand

from aggregates import store
from aggregates.models import Receipt
from aggregates.store import NewSource, register_sources


class Command(BaseCommand):
    help = (
        "Fill a demo domain with the A/B/C story: A publishes twice a day, B once, "
        "and C ran once both were there."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="demo-c-inputs")
        parser.add_argument("--days", type=int, default=7)

    def handle(self, *args, domain, days, **options):
        store.create_domain(domain, {"about": "the A/B/C story: C needs A and B"})
        today = date.today()
        for offset in range(days, 0, -1):
            day = (today - timedelta(days=offset)).isoformat()
            sources = [
                NewSource(
                    domain, day, "A", {"run": "am"}, {"path": f"s3://a/{day}/am"}
                ),
                NewSource(
                    domain, day, "B", {}, {"path": f"s3://b/{day}", "rows": 1200}
                ),
                NewSource(
                    domain, day, "A", {"run": "pm"}, {"path": f"s3://a/{day}/pm"}
                ),
            ]
            results = [register_sources([source])[0] for source in sources]
            if results[1].created:  # C ran when B made the day complete
                Receipt.objects.create(
                    aggregate=store.get_aggregate(domain, day),
                    watcher="run-c",
                    version=results[1].version,
                    outcome="success",
                    exit_code=0,
                    duration_s=41.0,
                )
        # Today: A has arrived, B not yet, so C is still waiting.
        register_sources(
            [
                NewSource(
                    domain, today.isoformat(), "A", {"run": "am"}, {"path": "s3://a"}
                )
            ]
        )
        self.stdout.write(f"Demo domain {domain!r} is ready: open /d/{domain}/")
