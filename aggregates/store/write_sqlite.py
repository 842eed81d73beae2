"""The write path on SQLite: the decisions botlnek_register() makes on PostgreSQL,
made here in Python inside one BEGIN IMMEDIATE transaction (SQLite's whole-database
write lock) on the one writer thread (aggregates/db.py). See write.py."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from aggregates.errors import StoreError
from aggregates.keydates import key_date
from aggregates.store.registration import (
    NewSource,
    Registration,
    conflict,
    unknown_domain,
)
from aggregates.store.sql import (
    AGGREGATE,
    DOMAIN,
    SOURCE,
    VERSION,
    json_value,
    placeholders,
)
from aggregates.values import json_equal, utc


def register(
    items: Sequence[NewSource], all_or_nothing: bool
) -> list[Registration | StoreError]:
    identities = [(item, item.key) for item in items]
    with transaction.atomic(), connection.cursor() as cursor:
        sql = _WriteSql(cursor)
        domains = sql.lock_domains(sorted({item.domain for item in items}))
        outcomes: list[Registration | StoreError | None] = [None] * len(items)
        for index, item in enumerate(items):
            if item.domain not in domains:
                if all_or_nothing:
                    raise unknown_domain(item, index)
                outcomes[index] = unknown_domain(item, index)
        now = timezone.now()
        wanted = {(i.domain, i.aggregate) for i in items if i.domain in domains}
        aggregates = sql.aggregates(domains, wanted)
        known = sql.existing_sources(
            aggregates.values(), {key for _, key in identities}
        )

        new_versions: list[_NewVersion] = []
        for index, (item, key) in enumerate(identities):
            if outcomes[index] is not None:
                continue
            aggregate = aggregates[item.domain, item.aggregate]
            identity = (item.domain, item.aggregate, item.collection, key)
            if identity in known:
                existing = known[identity]
                if not json_equal(existing.attrs, item.attrs):
                    if all_or_nothing:
                        raise conflict(item, index, existing.number)
                    outcomes[index] = conflict(item, index, existing.number)
                    continue
                outcomes[index] = Registration.of(
                    False, item, key, existing.number, existing.position, existing.at
                )
                continue
            domain = domains[item.domain]
            domain.latest_position += 1
            aggregate.version += 1
            if aggregate.version == 1:  # made here, or expected with no versions
                domain.aggregate_count += 1
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
            outcomes[index] = Registration.of(
                True, item, key, version.number, version.position, now
            )

        if new_versions:
            touched = [a for a in aggregates.values() if a.touched]
            # Only aggregates that gain a version are made: a failed item leaves
            # no empty aggregate behind.
            sql.create_aggregates([a for a in touched if a.id is None], now)
            sql.write(new_versions, touched, domains.values(), now)
    return outcomes  # type: ignore[return-value]


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
    """The SQLite write path's statements."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.ops = connection.ops

    def _json(self, value: Any) -> Any:
        return self.ops.adapt_json_value(value, None)

    def _time(self, value: datetime) -> Any:
        return self.ops.adapt_datetimefield_value(value)

    def lock_domains(self, keys: list[str]) -> dict[str, _DomainRow]:
        # The transaction holds SQLite's write lock already (BEGIN IMMEDIATE).
        self.cursor.execute(
            f'SELECT "id", "key", "latest_position", "aggregate_count" FROM "{DOMAIN}"'
            f' WHERE "key" IN ({placeholders(len(keys))}) ORDER BY "key"',
            keys,
        )
        return {row[1]: _DomainRow(*row) for row in self.cursor.fetchall()}

    def aggregates(
        self, domains: dict[str, _DomainRow], wanted: set[tuple[str, str]]
    ) -> dict[tuple[str, str], _AggregateRow]:
        """Every aggregate named, the missing ones with id None."""
        if not wanted:
            return {}
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

    def _key_date(self, key: str) -> tuple:
        """An aggregate's key_template, key_shape and key_at (migration 0009)."""
        found = key_date(key)
        if found is None:
            return ("", "", None)
        return (found.template, found.shape, self._time(found.at))

    def create_aggregates(self, rows: list[_AggregateRow], now: datetime) -> None:
        if not rows:
            return
        at = self._time(now)
        self.cursor.execute(
            f'INSERT INTO "{AGGREGATE}" ("domain_id", "key", "version", "counts",'
            ' "created_at", "updated_at", "key_template", "key_shape", "key_at")'
            " VALUES "
            + ", ".join(["(%s, %s, 0, %s, %s, %s, %s, %s, %s)"] * len(rows))
            + ' RETURNING "id"',
            [
                value
                for row in rows
                for value in (
                    row.domain.id,
                    row.key,
                    self._json({}),
                    at,
                    at,
                    *self._key_date(row.key),
                )
            ],
        )
        # Rows come back in VALUES order, as Django's bulk_create also relies on.
        for row, (new_id,) in zip(rows, self.cursor.fetchall(), strict=True):
            row.id = new_id

    def existing_sources(
        self, aggregates: Iterable[_AggregateRow], keys: set[str]
    ) -> dict[tuple[str, str, str, str], _ExistingSource]:
        """Sources already there, by (domain, aggregate, collection, key)."""
        by_id = {a.id: a for a in aggregates if a.version}  # new ones hold nothing
        if not by_id:
            return {}
        ids = sorted(by_id)
        ordered_keys = sorted(keys)
        self.cursor.execute(
            f'SELECT s."aggregate_id", s."collection", s."key", s."attrs", v."number",'
            f' v."position", v."at" FROM "{SOURCE}" s'
            f' JOIN "{VERSION}" v ON v."id" = s."version_id"'
            f' WHERE s."aggregate_id" IN ({placeholders(len(ids))})'
            f' AND s."key" IN ({placeholders(len(ordered_keys))})',
            [*ids, *ordered_keys],
        )
        found = {}
        for (
            aggregate_id,
            collection,
            key,
            attrs,
            number,
            position,
            at,
        ) in self.cursor.fetchall():
            aggregate = by_id[aggregate_id]
            identity = (aggregate.domain.key, aggregate.key, collection, key)
            found[identity] = _ExistingSource(
                json_value(attrs), number, position, utc(at)
            )
        return found

    def write(
        self,
        versions: list[_NewVersion],
        aggregates: list[_AggregateRow],
        domains: Iterable[_DomainRow],
        now: datetime,
    ) -> None:
        """Insert versions and sources and save counters."""
        at = self._time(now)
        self._insert_select(
            [
                (
                    v.domain.id,
                    v.aggregate.id,
                    v.number,
                    v.position,
                    self._json(v.counts),
                )
                for v in versions
            ],
            names=("domain_id", "aggregate_id", "number", "position", "counts"),
            sql=f'INSERT INTO "{VERSION}" ("aggregate_id", "domain_id", "number",'
            ' "position", "counts", "at") SELECT "aggregate_id", "domain_id",'
            ' "number", "position", "counts", %s FROM "new"',
            params=[at],
        )
        # Sources find their version by (domain, position), which is unique.
        self._insert_select(
            [
                (
                    v.domain.id,
                    v.position,
                    v.aggregate.id,
                    v.item.collection,
                    v.key,
                    self._json(v.item.keys),
                    self._json(v.item.attrs),
                )
                for v in versions
            ],
            names=(
                "domain_id",
                "position",
                "aggregate_id",
                "collection",
                "key",
                "keys",
                "attrs",
            ),
            sql=f'INSERT INTO "{SOURCE}" ("version_id", "aggregate_id",'
            ' "collection", "key", "keys", "attrs")'
            ' SELECT v."id", n."aggregate_id", n."collection", n."key", n."keys",'
            f' n."attrs" FROM "new" n JOIN "{VERSION}" v'
            ' ON v."domain_id" = n."domain_id" AND v."position" = n."position"',
        )
        self.cursor.executemany(
            # An aggregate's first version dates it (one made with no versions
            # for a rule's expected key, too).
            f'UPDATE "{AGGREGATE}" SET "created_at" = CASE WHEN "version" = 0'
            ' THEN %s ELSE "created_at" END, "version" = %s, "counts" = %s,'
            ' "updated_at" = %s WHERE "id" = %s',
            [(at, a.version, self._json(a.counts), at, a.id) for a in aggregates],
        )
        self.cursor.executemany(
            f'UPDATE "{DOMAIN}" SET "latest_position" = %s,'
            ' "aggregate_count" = %s WHERE "id" = %s',
            [(d.latest_position, d.aggregate_count, d.id) for d in domains],
        )

    def _insert_select(
        self,
        rows: list[tuple],
        *,
        names: tuple[str, ...],
        sql: str,
        params: Sequence = (),
    ) -> None:
        """Run `sql`, an INSERT … SELECT reading `rows` from a table named "new"."""
        columns = ", ".join(f'"{name}"' for name in names)
        one = "(" + ", ".join(["%s"] * len(names)) + ")"
        values = ", ".join([one] * len(rows))
        self.cursor.execute(
            f'WITH "new" ({columns}) AS (VALUES {values}) {sql}',
            [*(value for row in rows for value in row), *params],
        )
