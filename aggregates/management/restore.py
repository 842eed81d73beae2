"""Restoring a backup: the only writer of history besides aggregates.store.

A restore writes rows as they were — ids, positions, versions, times, seqs,
cursors — which the write path, by design, never does; so it bypasses it, here
and nowhere else (`import` is its one caller; the file is aggregates/management/
backup.py's). Everything happens in one transaction: a bad line, a truncated file
or a target that holds a different history refuses with nothing written.

Per domain of the file:
- not in the target (or there without anything in it): its rows are inserted with
  their own ids; an id the target already uses for another row refuses;
- in the target with the same id and exactly the same rows: nothing changes (a
  re-import is harmless);
- in the target with anything else: refused.

Tokens (in a whole-database backup) are matched by their hash instead: one made
in the target before the restore stays, and a restored one whose id it holds gets
a new id (no webhook-id or listing carries a token's id).

Afterwards every id sequence stands at least at the exporting database's highest
id, so new rows, new positions and new rule events continue after the restored
ones and no `webhook-id` is ever given out twice.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction

from aggregates.management import backup
from aggregates.management.progress import done, progress
from aggregates.models import ApiToken, Domain, Source, Version

BATCH = 1000
TEXT = (models.CharField, models.TextField)


# References to a domain's other rows, besides the one that places a record.
ALSO_IN_DOMAIN = {
    "version": (("aggregate_id", "aggregate"),),
    "rule_status": (("aggregate_id", "aggregate"),),
    "webhook": (("rule_id", "rule"),),
}


class Refused(Exception):
    """The file cannot be restored into this database; nothing was written."""


@dataclass
class Block:
    """One domain of the file as it is being read."""

    key: str
    id: int
    compare: bool  # the target holds it already: check, write nothing
    seen: dict[str, int] = field(default_factory=dict)
    ids: dict[str, set[int]] = field(default_factory=dict)  # aggregates, rules…


def restore(header: dict[str, Any], lines: Iterable[tuple[int, str]]) -> list[str]:
    """Restore the records after `header` (numbered lines); what happened, one
    sentence per domain (and for tokens)."""
    version = header.get("botlnek_export")
    if version != backup.FORMAT:
        raise Refused(
            f"line 1: this file is in export format {version!r}; this Botlnek "
            f"reads format {backup.FORMAT}"
        )
    for part in ("records", "ids"):
        numbers = header.get(part)
        if not isinstance(numbers, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in numbers.values()
        ):
            raise Refused(f"line 1: '{part}' must map kinds to whole numbers")
    with transaction.atomic():
        return Restore(header).run(lines)


class Restore:
    def __init__(self, header: dict[str, Any]):
        self.header = header
        self.total = sum(header.get("records", {}).values())
        self.read: dict[str, int] = {}
        self.block: Block | None = None
        self.pending: list[tuple[int, dict[str, Any], models.Model]] = []
        self.pending_kind: backup.Kind | None = None
        self.reports: list[str] = []
        self.tokens = {"restored": 0, "unchanged": 0}

    def run(self, lines: Iterable[tuple[int, str]]) -> list[str]:
        count = 0
        for number, line in lines:
            kind, data, instance = self.parse(number, line)
            self.place(number, kind, instance)
            if self.pending_kind is not kind or len(self.pending) >= BATCH:
                self.flush()
            self.pending_kind = kind
            self.pending.append((number, data, instance))
            self.read[kind.name] = self.read.get(kind.name, 0) + 1
            count += 1
            if count % (BATCH * 2) == 0:
                progress(count, self.total, "records imported")
        self.flush()
        self.end_block()
        progress(count, self.total, "records imported")
        done()
        expected = self.header.get("records", {})
        for name, number in expected.items():
            if self.read.get(name, 0) != number:
                raise Refused(
                    f"the file ends early or was changed: its first line says "
                    f"{number} {name} records, it holds {self.read.get(name, 0)}"
                )
        if self.tokens["restored"] or self.tokens["unchanged"]:
            self.reports.append(
                f"Tokens: {self.tokens['restored']} restored, "
                f"{self.tokens['unchanged']} already here."
            )
        advance_ids(self.header.get("ids", {}))
        return self.reports

    # Reading a line

    def parse(self, number: int, line: str) -> tuple[backup.Kind, dict, models.Model]:
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise Refused(f"line {number}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise Refused(f"line {number}: expected a JSON object")
        name = data.pop("kind", None)
        kind = backup.KINDS.get(name) if isinstance(name, str) else None
        if kind is None:
            known = ", ".join(backup.KINDS)
            raise Refused(f"line {number}: 'kind' must be one of {known}")
        source = data.pop("source", None) if kind.model is Version else None
        instance = build(number, kind.name, kind.model, data)
        if kind.model is Version:
            if not isinstance(source, dict):
                raise Refused(f"line {number}: a version needs its 'source'")
            instance.restored_source = build(number, "source", Source, source)
            data["source"] = source
        return kind, data, instance

    def place(self, number: int, kind: backup.Kind, row: models.Model) -> None:
        """Check that the record belongs where it stands in the file."""
        if kind.name == "domain":
            self.flush()
            self.end_block()
            self.block = self.start_block(number, row)
            return
        if kind is backup.TOKEN:
            if self.block is not None:
                self.flush()
                self.end_block()
            return
        block = self.block
        if block is None:
            raise Refused(f"line {number}: a {kind.name} before its domain's line")
        parent = {
            "aggregate": ("domain_id", None),
            "version": ("domain_id", None),
            "receipt": ("aggregate_id", "aggregate"),
            "rule": ("domain_id", None),
            "rule_status": ("rule_id", "rule"),
            "rule_event": ("rule_id", "rule"),
            "webhook": ("domain_id", None),
            "webhook_delivery": ("webhook_id", "webhook"),
            "intake": ("domain_id", None),
        }[kind.name]
        column, of = parent
        value = getattr(row, column)
        belongs = value == block.id if of is None else value in block.ids[of]
        if not belongs:
            raise Refused(
                f"line {number}: this {kind.name}'s {column} {value} is not "
                f"in domain {block.key!r}, whose records these are"
            )
        for column, of in ALSO_IN_DOMAIN.get(kind.name, ()):
            value = getattr(row, column)
            if value is not None and value not in block.ids[of]:
                raise Refused(
                    f"line {number}: this {kind.name}'s {column} {value} is not "
                    f"in domain {block.key!r}, whose records these are"
                )
        if kind.name in ("aggregate", "rule", "webhook"):
            block.ids[kind.name].add(row.pk)
        block.seen[kind.name] = block.seen.get(kind.name, 0) + 1

    # Domains

    def start_block(self, number: int, row: models.Model) -> Block:
        key, pk = row.key, row.pk
        block = Block(key, pk, compare=False)
        block.ids = {"aggregate": set(), "rule": set(), "webhook": set()}
        holder = Domain.objects.filter(pk=pk).first()
        if holder is not None and holder.key != key:
            raise Refused(
                f"line {number}: domain {key!r} had id {pk}, which is domain "
                f"{holder.key!r}'s here; restore into the database it came from "
                "or into an empty one (docs/backup.md)"
            )
        here = Domain.objects.filter(key=key).first()
        if here is not None and holds_something(here):
            if here.pk != pk:
                raise Refused(
                    f"line {number}: domain {key!r} is here already, with a "
                    "different history; nothing was written"
                )
            block.compare = True
        elif here is not None:
            here.delete()  # an empty domain made before the restore
        return block

    def end_block(self) -> None:
        block, self.block = self.block, None
        if block is None:
            return
        if not block.compare:
            things = ", ".join(f"{n} {kind}" for kind, n in block.seen.items())
            self.reports.append(
                f"Restored domain {block.key!r}" + (f": {things}." if things else ".")
            )
            return
        for kind in backup.DOMAIN_KINDS[1:]:
            here = kind.model.objects.filter(**{kind.of_domain: block.id}).count()
            if here != block.seen.get(kind.name, 0):
                raise Refused(
                    f"domain {block.key!r} is here already with {here} {kind.name} "
                    f"records, the file has {block.seen.get(kind.name, 0)}: a "
                    "different history; nothing was written"
                )
        self.reports.append(
            f"Domain {block.key!r} is here already, exactly as in the file: "
            "nothing changed."
        )

    # Writing

    def flush(self) -> None:
        kind, pending = self.pending_kind, self.pending
        if kind is None or not pending:
            return
        self.pending = []
        if kind is backup.TOKEN:
            self.flush_tokens(pending)
            return
        ids = [instance.pk for _, _, instance in pending]
        here = {
            row["id"]: json.loads(backup.dump(row))
            for row in backup.rows(kind, id__in=ids)
        }
        assert self.block is not None
        if self.block.compare:
            for number, data, _ in pending:
                if here.get(data["id"]) != data:
                    raise Refused(
                        f"line {number}: domain {self.block.key!r} is here already "
                        f"and its {kind.name} {data['id']} differs from the file's: "
                        "a different history; nothing was written"
                    )
            return
        if here:
            number = next(n for n, data, _ in pending if data["id"] in here)
            raise Refused(
                f"line {number}: {kind.name} id {min(here)} is taken here by "
                "another row; restore into the database it came from or into an "
                "empty one (docs/backup.md)"
            )
        insert(kind.model, [instance for _, _, instance in pending])

    def flush_tokens(self, pending: list) -> None:
        """Tokens are matched by their hash, not their id: a token made here
        before the restore (`serve`'s first one) keeps its id, and a restored
        token whose id it holds gets a new one."""
        digests = [data["digest"] for _, data, _ in pending]
        here = {
            row["digest"]: json.loads(backup.dump(row))
            for row in backup.rows(backup.TOKEN, digest__in=digests)
        }
        taken = set(
            ApiToken.objects.filter(
                pk__in=[instance.pk for _, _, instance in pending]
            ).values_list("pk", flat=True)
        )
        new = []
        for number, data, instance in pending:
            found = here.get(data["digest"])
            if found is None:
                if instance.pk in taken:
                    instance.pk = None
                new.append(instance)
            elif {**found, "id": data["id"]} != data:
                raise Refused(
                    f"line {number}: token {data['name']!r} is here already, "
                    "with another scope, domains or state than the file's"
                )
            else:
                self.tokens["unchanged"] += 1
        insert(ApiToken, new)
        self.tokens["restored"] += len(new)


def holds_something(domain: Domain) -> bool:
    if domain.latest_position:
        return True
    return any(
        kind.model.objects.filter(**{kind.of_domain: domain.pk}).exists()
        for kind in backup.DOMAIN_KINDS[1:]
    )


def insert(model: type[models.Model], instances: list[models.Model]) -> None:
    try:
        with transaction.atomic():
            model.objects.bulk_create(instances)
            if model is Version:
                Source.objects.bulk_create(
                    [instance.restored_source for instance in instances]
                )
    except IntegrityError as exc:
        first = instances[0].pk if instances else "?"
        raise Refused(
            f"{model._meta.verbose_name} records from id {first}: the database "
            f"refused them ({exc}); nothing was written"
        ) from None


def build(
    number: int, kind: str, model: type[models.Model], data: dict
) -> models.Model:
    """An unsaved row from a record, every column checked."""
    names = backup.columns(model)
    extra = set(data) - set(names) - ({"source"} if model is Version else set())
    if extra:
        raise Refused(f"line {number}: a {kind} has no {sorted(extra)[0]!r}")
    values = {}
    for column in model._meta.concrete_fields:
        name = column.attname
        if name not in data:
            raise Refused(f"line {number}: the {kind} has no {name!r}")
        values[name] = value_of(number, kind, column, data[name])
    return model(**values)


def value_of(number: int, kind: str, column: models.Field, value: Any) -> Any:
    where = f"line {number}: {kind} {column.attname!r}"
    if value is None:
        if not column.null:
            raise Refused(f"{where} must not be null")
        return None
    expected = expectation(column)
    if expected is not None:
        types, said = expected
        if not isinstance(value, types) or (
            isinstance(value, bool) and bool not in types
        ):
            raise Refused(f"{where} must be {said}")
    try:
        value = column.to_python(value)
    except ValidationError:
        raise Refused(
            f"{where} must be {expected[1] if expected else 'valid'}"
        ) from None
    try:
        column.run_validators(value)
    except ValidationError as exc:
        if isinstance(column, models.IntegerField) and expected is not None:
            raise Refused(f"{where} must be {expected[1]}") from None
        raise Refused(f"{where}: {' '.join(exc.messages)}") from None
    if isinstance(value, datetime) and value.tzinfo is None:
        raise Refused(f"{where} must be a time with its zone, like {EXAMPLE_TIME}")
    return value


EXAMPLE_TIME = "2026-11-26T10:00:00.000000Z"


def expectation(column: models.Field) -> tuple[tuple[type, ...], str] | None:
    """The JSON type a column's value must have, and how to say it."""
    if isinstance(column, models.DateTimeField):
        return (str,), f"a time like {EXAMPLE_TIME}"
    if isinstance(column, models.BooleanField):
        return (bool,), "true or false"
    if isinstance(column, models.IntegerField | models.AutoField):
        return (int,), "a whole number" + (
            " of 0 or more" if "Positive" in type(column).__name__ else ""
        )
    if isinstance(column, models.FloatField):
        return (int, float), "a number"
    if isinstance(column, TEXT):
        return (str,), "text"
    if isinstance(column, models.JSONField) and column.default in (dict, list):
        return (column.default,), "an object" if column.default is dict else "a list"
    return None


def advance_ids(exported: dict[str, int]) -> None:
    """Every id sequence at least past the restored rows and past the highest id
    the exporting database gave out."""
    tables = {name: kind.model._meta.db_table for name, kind in backup.KINDS.items()}
    tables["source"] = Source._meta.db_table
    with connection.cursor() as cursor:
        for name, table in tables.items():
            floor = int(exported.get(name) or 0)
            if connection.vendor == "sqlite":
                # Explicit ids move sqlite_sequence by themselves; the floor not.
                cursor.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = %s", [table]
                )
                row = cursor.fetchone()
                if row is None:
                    cursor.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)",
                        [table, floor],
                    )
                elif row[0] < floor:
                    cursor.execute(
                        "UPDATE sqlite_sequence SET seq = %s WHERE name = %s",
                        [floor, table],
                    )
                continue
            cursor.execute(
                "SELECT setval(seq, GREATEST(top, 1), top > 0) FROM ("
                "  SELECT seq, GREATEST("
                f'    (SELECT COALESCE(MAX("id"), 0) FROM "{table}"), %s,'
                "    COALESCE(pg_sequence_last_value(seq), 0)) AS top"
                "  FROM (SELECT pg_get_serial_sequence(%s, 'id')::regclass AS seq) s"
                ") t",
                [floor, table],
            )


def numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line
