"""The one write path: register_sources() appends versions, all or nothing.

It is the only code that writes Aggregate, Version and Source rows. It locks every
domain it touches (SELECT … FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE takes
the whole-database write lock), so per-aggregate versions and per-domain positions
are assigned one writer at a time and become visible in position order. The lock is
held to commit, which makes position order commit order. New versions are announced
with transaction.on_commit, never before the commit.
"""

import hashlib
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from aggregates.errors import Conflict, NotFound, StoreError, UnknownDomain
from aggregates.live import events
from aggregates.models import Aggregate, Domain, Receipt, RuleEvent, RuleStatus
from aggregates.store.read import get_aggregate, receipt_json
from aggregates.store.sql import (
    AGGREGATE,
    DOMAIN,
    RECEIPT,
    RULE_STATUS,
    SOURCE,
    VERSION,
    json_value,
    placeholders,
)
from aggregates.values import canonical_json, isoformat, json_equal, utc


@dataclass(frozen=True)
class NewSource:
    domain: str
    aggregate: str
    collection: str
    keys: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return source_key(self.keys)


@dataclass(frozen=True)
class Registration:
    """What register_sources answers for each source, in request order."""

    created: bool
    domain: str
    aggregate: str
    collection: str
    key: str
    version: int
    position: int
    at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "domain": self.domain,
            "aggregate": self.aggregate,
            "collection": self.collection,
            "key": self.key,
            "version": self.version,
            "position": self.position,
            "at": isoformat(self.at),
        }


def source_key(keys: dict[str, str]) -> str:
    """SHA-256 hex of the canonical JSON of a source's keys (SPEC §2)."""
    return hashlib.sha256(canonical_json(keys).encode()).hexdigest()


def register_sources(items: Sequence[NewSource]) -> list[Registration]:
    """Register sources all or nothing; new versions are announced after commit."""
    if not items:
        return []
    identities = [(item, item.key) for item in items]
    with transaction.atomic(), connection.cursor() as cursor:
        sql = _WriteSql(cursor)
        domains = sql.lock_domains(sorted({item.domain for item in items}))
        for index, item in enumerate(items):
            if item.domain not in domains:
                raise UnknownDomain(
                    f"domain {item.domain!r} does not exist; create it with "
                    "POST /api/domains first",
                    index=index,
                    field="domain",
                )
        now = timezone.now()
        aggregates = sql.aggregates(domains, {(i.domain, i.aggregate) for i in items})
        sql.create_aggregates(
            [aggregate for aggregate in aggregates.values() if aggregate.id is None],
            now,
        )
        known = sql.existing_sources(
            aggregates.values(), {key for _, key in identities}
        )

        results: list[Registration] = []
        new_versions: list[_NewVersion] = []
        for index, (item, key) in enumerate(identities):
            aggregate = aggregates[item.domain, item.aggregate]
            identity = (aggregate.id, item.collection, key)
            if identity in known:
                existing = known[identity]
                if not json_equal(existing.attrs, item.attrs):
                    raise Conflict(
                        f"a source with these keys already exists in collection "
                        f"{item.collection!r} of aggregate {item.aggregate!r} "
                        f"(version {existing.number}) with different attrs",
                        index=index,
                        field="attrs",
                    )
                results.append(_registration(False, item, key, existing))
                continue
            domain = domains[item.domain]
            domain.latest_position += 1
            aggregate.version += 1
            aggregate.counts[item.collection] = (
                aggregate.counts.get(item.collection, 0) + 1
            )
            aggregate.touched = True
            version = _NewVersion(
                item=item,
                key=key,
                aggregate=aggregate,
                domain=domain,
                number=aggregate.version,
                position=domain.latest_position,
                at=now,
                counts=dict(aggregate.counts),
            )
            new_versions.append(version)
            known[identity] = version
            results.append(_registration(True, item, key, version))

        if new_versions:
            sql.write(
                new_versions,
                [a for a in aggregates.values() if a.touched],
                domains.values(),
                now,
            )
            committed = [
                events.VersionCommitted(
                    domain=v.item.domain,
                    aggregate=v.item.aggregate,
                    version=v.number,
                    position=v.position,
                )
                for v in new_versions
            ]
            transaction.on_commit(lambda: events.versions_committed.send(committed))
    return results


def _registration(created: bool, item: NewSource, key: str, version) -> Registration:
    return Registration(
        created=created,
        domain=item.domain,
        aggregate=item.aggregate,
        collection=item.collection,
        key=key,
        version=version.number,
        position=version.position,
        at=version.at,
    )


@dataclass(slots=True)
class _DomainRow:
    id: int
    key: str
    latest_position: int
    aggregate_count: int


@dataclass(slots=True)
class _AggregateRow:
    id: int | None
    domain: _DomainRow
    key: str
    version: int
    counts: dict[str, int]
    touched: bool = False


@dataclass(slots=True)
class _ExistingSource:
    attrs: dict[str, Any]
    number: int
    position: int
    at: datetime


@dataclass(slots=True)
class _NewVersion:
    item: NewSource
    key: str
    aggregate: _AggregateRow
    domain: _DomainRow
    number: int
    position: int
    at: datetime
    counts: dict[str, int]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.item.attrs


class _WriteSql:
    def __init__(self, cursor):
        self.cursor = cursor
        self.ops = connection.ops
        self.lock = " FOR UPDATE" if connection.features.has_select_for_update else ""

    def _json(self, value: Any) -> Any:
        return self.ops.adapt_json_value(value, None)

    def _time(self, value: datetime) -> Any:
        return self.ops.adapt_datetimefield_value(value)

    def lock_domains(self, keys: list[str]) -> dict[str, _DomainRow]:
        # Sorted keys give batches spanning domains one lock order: no deadlocks.
        self.cursor.execute(
            f'SELECT "id", "key", "latest_position", "aggregate_count" FROM "{DOMAIN}"'
            f' WHERE "key" IN ({placeholders(len(keys))}) ORDER BY "key"{self.lock}',
            keys,
        )
        return {row[1]: _DomainRow(*row) for row in self.cursor.fetchall()}

    def aggregates(
        self, domains: dict[str, _DomainRow], wanted: set[tuple[str, str]]
    ) -> dict[tuple[str, str], _AggregateRow]:
        """Every aggregate named, the missing ones with id None."""
        domain_ids = sorted({domains[d].id for d, _ in wanted})
        keys = sorted({a for _, a in wanted})
        # Two IN lists fetch a superset: one OR per item would overflow SQLite's
        # expression depth on a 1,000-source batch.
        self.cursor.execute(
            f'SELECT "id", "domain_id", "key", "version", "counts" FROM "{AGGREGATE}"'
            f' WHERE "domain_id" IN ({placeholders(len(domain_ids))})'
            f' AND "key" IN ({placeholders(len(keys))})',
            [*domain_ids, *keys],
        )
        found = {(row[1], row[2]): row for row in self.cursor.fetchall()}
        result = {}
        for domain_key, key in sorted(wanted):
            domain = domains[domain_key]
            row = found.get((domain.id, key))
            if row is None:
                result[domain_key, key] = _AggregateRow(None, domain, key, 0, {})
            else:
                counts = json_value(row[4])
                result[domain_key, key] = _AggregateRow(
                    row[0], domain, key, row[3], counts
                )
        return result

    def create_aggregates(self, rows: list[_AggregateRow], now: datetime) -> None:
        if not rows:
            return
        at = self._time(now)
        self.cursor.execute(
            f'INSERT INTO "{AGGREGATE}" ("domain_id", "key", "version", "counts",'
            ' "created_at", "updated_at") VALUES '
            + ", ".join(["(%s, %s, 0, %s, %s, %s)"] * len(rows))
            + ' RETURNING "id"',
            [
                value
                for row in rows
                for value in (row.domain.id, row.key, self._json({}), at, at)
            ],
        )
        # Rows come back in VALUES order, as Django's bulk_create also relies on.
        for row, (new_id,) in zip(rows, self.cursor.fetchall(), strict=True):
            row.id = new_id
            row.domain.aggregate_count += 1

    def existing_sources(
        self, aggregates: Iterable[_AggregateRow], keys: set[str]
    ) -> dict[tuple[int, str, str], _ExistingSource]:
        ids = sorted(a.id for a in aggregates if a.version)  # new ones hold nothing
        if not ids:
            return {}
        ordered_keys = sorted(keys)
        self.cursor.execute(
            f'SELECT s."aggregate_id", s."collection", s."key", s."attrs", v."number",'
            f' v."position", v."at" FROM "{SOURCE}" s'
            f' JOIN "{VERSION}" v ON v."id" = s."version_id"'
            f' WHERE s."aggregate_id" IN ({placeholders(len(ids))})'
            f' AND s."key" IN ({placeholders(len(ordered_keys))})',
            [*ids, *ordered_keys],
        )
        return {
            (aggregate_id, collection, key): _ExistingSource(
                json_value(attrs), number, position, utc(at)
            )
            for aggregate_id, collection, key, attrs, number, position, at in (
                self.cursor.fetchall()
            )
        }

    def write(
        self,
        versions: list[_NewVersion],
        aggregates: list[_AggregateRow],
        domains: Iterable[_DomainRow],
        now: datetime,
    ) -> None:
        """Insert versions and sources and save counters: no statement here waits
        for another's answer, so PostgreSQL gets them in one pipeline (one round
        trip while the domain lock is held instead of four)."""
        at = self._time(now)
        pipeline = (
            connection.connection.pipeline()
            if connection.vendor == "postgresql"
            else nullcontext()
        )
        with connection.wrap_database_errors, pipeline:
            self._insert_select(
                ("domain_id", "bigint", [v.domain.id for v in versions]),
                ("aggregate_id", "bigint", [v.aggregate.id for v in versions]),
                ("number", "bigint", [v.number for v in versions]),
                ("position", "bigint", [v.position for v in versions]),
                ("counts", "jsonb", [self._json(v.counts) for v in versions]),
                sql=f'INSERT INTO "{VERSION}" ("aggregate_id", "domain_id", "number",'
                ' "position", "counts", "at") SELECT "aggregate_id", "domain_id",'
                ' "number", "position", "counts", %s FROM "new"',
                params=[at],
            )
            # Sources find their version by (domain, position), which is unique.
            self._insert_select(
                ("domain_id", "bigint", [v.domain.id for v in versions]),
                ("position", "bigint", [v.position for v in versions]),
                ("aggregate_id", "bigint", [v.aggregate.id for v in versions]),
                ("collection", "text", [v.item.collection for v in versions]),
                ("key", "text", [v.key for v in versions]),
                ("keys", "jsonb", [self._json(v.item.keys) for v in versions]),
                ("attrs", "jsonb", [self._json(v.item.attrs) for v in versions]),
                sql=f'INSERT INTO "{SOURCE}" ("version_id", "aggregate_id",'
                ' "collection", "key", "keys", "attrs")'
                ' SELECT v."id", n."aggregate_id", n."collection", n."key", n."keys",'
                f' n."attrs" FROM "new" n JOIN "{VERSION}" v'
                ' ON v."domain_id" = n."domain_id" AND v."position" = n."position"',
            )
            self.cursor.executemany(
                f'UPDATE "{AGGREGATE}" SET "version" = %s, "counts" = %s,'
                ' "updated_at" = %s WHERE "id" = %s',
                [(a.version, self._json(a.counts), at, a.id) for a in aggregates],
            )
            self.cursor.executemany(
                f'UPDATE "{DOMAIN}" SET "latest_position" = %s,'
                ' "aggregate_count" = %s WHERE "id" = %s',
                [(d.latest_position, d.aggregate_count, d.id) for d in domains],
            )

    def _insert_select(
        self, *columns: tuple[str, str, list], sql: str, params: Sequence = ()
    ) -> None:
        """Run `sql`, an INSERT … SELECT reading rows from a table named "new".

        The rows are a VALUES list on SQLite; on PostgreSQL one array per column,
        since a 1,000-row VALUES list of 7,000 parameters costs PostgreSQL far more
        to parse and plan than unnest() over seven arrays.
        """
        names = ", ".join(f'"{name}"' for name, _, _ in columns)
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{kind}[]" for _, kind, _ in columns)
            rows = f'SELECT * FROM unnest({arrays}) AS "t" ({names})'
            values = [list(values) for _, _, values in columns]
        else:
            count = len(columns[0][2])
            one = "(" + ", ".join(["%s"] * len(columns)) + ")"
            rows = "VALUES " + ", ".join([one] * count)
            values = [
                v for row in zip(*(c[2] for c in columns), strict=True) for v in row
            ]
        self.cursor.execute(
            f'WITH "new" ({names}) AS ({rows}) {sql}', [*values, *params]
        )


# Domains, receipts and retention: the other writes.


def create_domain(key: str, attrs: dict[str, Any]) -> tuple[Domain, bool]:
    """Create a domain; an identical one already there is answered, not duplicated."""
    with transaction.atomic():
        domain, created = Domain.objects.get_or_create(
            key=key, defaults={"attrs": attrs}
        )
    if not created and not json_equal(domain.attrs, attrs):
        raise Conflict(
            f"domain {key!r} already exists with different attrs", field="attrs"
        )
    return domain, created


def record_receipt(
    *,
    watcher: str,
    domain: str,
    aggregate: str,
    version: int,
    outcome: str,
    exit_code: int | None = None,
    duration_s: float | None = None,
    detail: str = "",
    rule: str | None = None,
    seq: int | None = None,
) -> dict[str, Any]:
    target = get_aggregate(domain, aggregate)
    if version > target.version:
        raise NotFound(
            f"aggregate {aggregate!r} has versions 1-{target.version}, not {version}",
            field="version",
        )
    if rule is not None:
        _check_rule_event(target, rule, seq, version)
    receipt = Receipt.objects.create(
        rule=rule or "",
        seq=seq,
        aggregate=target,
        watcher=watcher,
        version=version,
        outcome=outcome,
        exit_code=exit_code,
        duration_s=duration_s,
        detail=detail,
    )
    return receipt_json(receipt, domain, aggregate)


def _check_rule_event(aggregate: Aggregate, rule: str, seq: int, version: int):
    """A receipt of a rule's event must name that event as the log has it."""
    event = (
        RuleEvent.objects.filter(
            rule__domain_id=aggregate.domain_id, rule__name=rule, seq=seq
        )
        .values_list("aggregate", "version")
        .first()
    )
    if event is None:
        raise NotFound(
            f"rule {rule!r} of domain {aggregate.domain.key!r} has no event {seq}",
            field="seq",
        )
    if event != (aggregate.key, version):
        raise StoreError(
            f"event {seq} of rule {rule!r} is about version {event[1]} of "
            f"aggregate {event[0]!r}",
            field="seq",
        )


# Retention: deleting whole aggregates is the only deletion there is.

# Statuses of a rule still waiting for an aggregate: pruning keeps such aggregates.
PENDING = [RuleStatus.Status.WAITING, RuleStatus.Status.LATE]


def prune_aggregates(
    aggregate_ids: list[int], older_than: datetime, *, include_pending: bool = False
) -> int:
    """Delete these aggregates, with their history, if still untouched since
    `older_than` and (unless `include_pending`) no rule waits for them or has
    them late; answer how many went. Short: it holds their domains' locks."""
    with transaction.atomic(), connection.cursor() as cursor:
        domain_ids = sorted(
            set(
                Aggregate.objects.filter(id__in=aggregate_ids).values_list(
                    "domain_id", flat=True
                )
            )
        )
        # The writers' lock, in the writers' order: no source lands in an
        # aggregate while it is being deleted.
        list(
            Domain.objects.select_for_update()
            .filter(id__in=domain_ids)
            .order_by("key")
            .values_list("id")
        )
        victims = Aggregate.objects.filter(
            id__in=aggregate_ids, updated_at__lt=older_than
        )
        if not include_pending:
            victims = victims.exclude(rule_statuses__status__in=PENDING)
        victims = list(victims.values_list("id", "domain_id"))
        if not victims:
            return 0
        ids = [aggregate_id for aggregate_id, _ in victims]
        marks = placeholders(len(ids))
        for table in (RULE_STATUS, SOURCE, RECEIPT, VERSION, AGGREGATE):
            column = "id" if table == AGGREGATE else "aggregate_id"
            cursor.execute(f'DELETE FROM "{table}" WHERE "{column}" IN ({marks})', ids)
        gone: dict[int, int] = {}
        for _, domain_id in victims:
            gone[domain_id] = gone.get(domain_id, 0) + 1
        cursor.executemany(
            f'UPDATE "{DOMAIN}" SET "aggregate_count" = "aggregate_count" - %s'
            ' WHERE "id" = %s',
            [(count, domain_id) for domain_id, count in gone.items()],
        )
    return len(victims)
