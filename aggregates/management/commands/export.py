import os

from django.core.management.base import BaseCommand, CommandError

from aggregates.management import backup
from aggregates.management.progress import done, progress
from aggregates.models import Domain


class Command(BaseCommand):
    help = (
        "Write a backup as JSON lines: one domain with --domain, else the whole "
        "database (with its API tokens). `import` restores it exactly "
        "(docs/backup.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--domain", help="only this domain (default: every domain, and tokens)"
        )
        parser.add_argument(
            "--output",
            metavar="FILE",
            help="write to FILE, created with mode 0600 (default: standard output)",
        )

    def handle(self, *args, domain=None, output=None, **options):
        if domain is not None and not Domain.objects.filter(key=domain).exists():
            raise CommandError(f"domain {domain!r} does not exist")
        if output:
            try:
                # O_EXCL: never write secrets into a file someone else made.
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise CommandError(f"--output {output}: {exc.strerror}") from None
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    written = self._export(out, domain)
            except BaseException:
                os.unlink(output)  # half a backup is no backup
                raise
        else:
            written = self._export(self.stdout, domain)
        self.stderr.write(f"Exported {summary(written)}.")

    def _export(self, out, key: str | None) -> dict[str, int]:
        with backup.snapshot():
            domains = list(Domain.objects.order_by("id"))
            if key is not None:
                domains = [d for d in domains if d.key == key]
                if not domains:
                    raise CommandError(f"domain {key!r} does not exist")
            head = backup.header(domains, whole_database=key is None)
            out.write(backup.dump(head) + "\n")
            total, written = sum(head["records"].values()), 0
            for found in domains:
                for kind in backup.DOMAIN_KINDS:
                    for line in backup.lines(kind, found.pk):
                        out.write(line + "\n")
                        written += 1
                        if written % backup.PAGE == 0:
                            progress(written, total, "records exported")
            if key is None:
                for line in backup.lines(backup.TOKEN, None):
                    out.write(line + "\n")
                    written += 1
            progress(written, total, "records exported")
            done()
        return head["records"]


def summary(records: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in records.items() if count)
