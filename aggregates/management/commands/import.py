import json
import sys

from django.core.management.base import BaseCommand, CommandError
from pydantic import ValidationError

from aggregates import store
from aggregates.errors import StoreError
from aggregates.management.progress import done, progress
from aggregates.schemas import DomainIn, SourceIn

BATCH = 1000


class Command(BaseCommand):
    help = (
        "Replay JSON lines written by `export` (from a file or stdin). Idempotent: "
        "sources already there are answered, not added again."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="default: standard input")

    def handle(self, *args, file=None, **options):
        lines = open(file, encoding="utf-8") if file else sys.stdin  # noqa: SIM115
        try:
            self._import(lines)
        finally:
            if file:
                lines.close()

    def _import(self, lines) -> None:
        domain = None
        batch: list[store.NewSource] = []
        counts = {"created": 0, "existing": 0}
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if domain is None:
                    header = DomainIn(key=data["domain"], attrs=data.get("attrs", {}))
                    domain = header.key
                    store.create_domain(domain, header.attrs)
                    continue
                source = SourceIn(domain=domain, **data)
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                raise CommandError(f"line {number}: {exc}") from None
            except StoreError as exc:
                raise CommandError(f"line {number}: {exc.detail}") from None
            batch.append(
                store.NewSource(
                    domain,
                    source.aggregate,
                    source.collection,
                    source.keys,
                    source.attrs,
                )
            )
            if len(batch) == BATCH:
                self._register(batch, counts)
        self._register(batch, counts)
        done()
        self.stdout.write(
            f"Imported into {domain!r}: {counts['created']} new sources, "
            f"{counts['existing']} already there."
        )

    def _register(self, batch: list, counts: dict) -> None:
        if not batch:
            return
        try:
            results = store.register_sources(batch)
        except StoreError as exc:
            raise CommandError(exc.detail) from None
        for result in results:
            counts["created" if result.created else "existing"] += 1
        batch.clear()
        progress(counts["created"] + counts["existing"], None, "sources imported")
