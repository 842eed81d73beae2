import json
import sys
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError
from pydantic import ValidationError

from aggregates import store
from aggregates.errors import StoreError
from aggregates.management import restore
from aggregates.management.progress import done, progress
from aggregates.schemas import DomainIn, SourceIn

BATCH = 1000


class Command(BaseCommand):
    help = (
        "Restore a backup written by `export` (a file, or - for standard input): "
        "the same ids, positions, versions, times, seqs and cursors. Re-importing "
        "it changes nothing; a target holding a different history is refused "
        "with nothing written (docs/backup.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", default="-", help="default: -, stdin")

    def handle(self, *args, file="-", **options):
        try:
            lines = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from None
        try:
            self._import(restore.numbered(lines))
        finally:
            if lines is not sys.stdin:
                lines.close()

    def _import(self, lines: Iterator[tuple[int, str]]) -> None:
        first = next(lines, None)
        if first is None:
            raise CommandError("the file is empty: nothing to import")
        number, line = first
        try:
            head = json.loads(line)
        except ValueError:
            raise CommandError(f"line {number}: not JSON") from None
        if isinstance(head, dict) and "botlnek_export" in head:
            try:
                reports = restore.restore(head, lines)
            except restore.Refused as exc:
                done()
                raise CommandError(f"{exc} (nothing was written)") from None
            for report in reports:
                self.stdout.write(report)
            return
        if isinstance(head, dict) and "domain" in head:
            self._replay(number, head, lines)
            return
        raise CommandError(f"line {number}: not the first line of an export")

    def _replay(self, number: int, head: dict, lines) -> None:
        """A file from an export before format 1: the domain, then its sources,
        registered again through the write path (new times and positions)."""
        try:
            found = DomainIn(key=head["domain"], attrs=head.get("attrs", {}))
            store.create_domain(found.key, found.attrs)
        except (KeyError, TypeError, ValidationError) as exc:
            raise CommandError(f"line {number}: {exc}") from None
        except StoreError as exc:
            raise CommandError(f"line {number}: {exc.detail}") from None
        domain = found.key
        batch: list[store.NewSource] = []
        counts = {"created": 0, "existing": 0}
        for number, line in lines:
            try:
                source = SourceIn(domain=domain, **json.loads(line))
            except (ValueError, TypeError, ValidationError) as exc:
                raise CommandError(f"line {number}: {exc}") from None
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
            f"Replayed an older export into {domain!r}: {counts['created']} new "
            f"sources, {counts['existing']} already there."
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
