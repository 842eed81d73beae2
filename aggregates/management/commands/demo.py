from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from aggregates import store
from aggregates.models import Receipt, Rule
from aggregates.rules import engine
from aggregates.store import NewSource, register_sources


class Command(BaseCommand):
    help = (
        "Fill a demo domain with the A/B/C story: A publishes twice a day, B once, "
        "and C ran once both were there; a rule says when C may run, and that "
        "one day is late (B never came)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="demo-c-inputs")
        parser.add_argument("--days", type=int, default=7)

    def handle(self, *args, domain, days, **options):
        store.create_domain(domain, {"about": "the A/B/C story: C needs A and B"})
        today = timezone.now().date()
        # The day B never came: late under the rule below.
        missing_b = (today - timedelta(days=2)).isoformat()
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
            if day == missing_b:
                sources.pop(1)
            results = [register_sources([source])[0] for source in sources]
            if day != missing_b and results[1].created:  # C ran when B came
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
        # When C may run: A twice and B once, due 30 hours after the day began.
        Rule.objects.get_or_create(
            domain=store.get_domain(domain),
            name="run-c",
            defaults={
                "when": "A >= 2 and B >= 1",
                "deadline_seconds": 30 * 3600,
                "deadline_from": Rule.DeadlineFrom.KEY_DATE,
                "start": Rule.Start.HISTORY,
            },
        )
        engine.catch_up(domain)
        self.stdout.write(f"Demo domain {domain!r} is ready: open /d/{domain}/")
