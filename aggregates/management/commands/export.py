import json

from django.core.management.base import BaseCommand, CommandError

from aggregates import store
from aggregates.errors import NotFound
from aggregates.management.progress import done, progress
from aggregates.models import Version

PAGE = 2000


class Command(BaseCommand):
    help = (
        "Write a domain as JSON lines: the domain first, then every source in "
        "position order. `import` replays it (a backup, or a move between databases)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", required=True)

    def handle(self, *args, domain, **options):
        try:
            found = store.get_domain(domain)
        except NotFound as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(json.dumps({"domain": found.key, "attrs": found.attrs}))
        total, written, after = found.latest_position, 0, 0
        while True:
            rows = list(
                Version.objects.filter(domain=found, position__gt=after)
                .order_by("position")
                .values_list(
                    "position",
                    "aggregate__key",
                    "source__collection",
                    "source__keys",
                    "source__attrs",
                )[:PAGE]
            )
            for position, aggregate, collection, keys, attrs in rows:
                line = {"aggregate": aggregate, "collection": collection, "keys": keys}
                self.stdout.write(
                    json.dumps({**line, "attrs": attrs}, ensure_ascii=False)
                )
                after = position
            written += len(rows)
            progress(written, total, "sources exported")
            if len(rows) < PAGE:
                break
        done()
