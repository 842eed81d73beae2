"""The one write path: register_sources() appends versions, all or nothing, and
register_each() does it for items that stand alone (single posts taken together).

It is the only code that writes Aggregate, Version and Source rows. Every writer
locks the domains it touches, in key order, so per-aggregate versions and
per-domain positions are assigned one writer at a time and become visible in
position order; the lock is held to commit, which makes position order commit order.
New versions are announced with transaction.on_commit, never before the commit.

On PostgreSQL all of it is one statement: botlnek_register(), a server-side function
(migration 0005 installs it and documents its contract), run in autocommit, so the
domain's row lock (SELECT … FOR UPDATE) is held for server time only, never across a
network round trip. On SQLite the same decisions are made here, in Python, in one
BEGIN IMMEDIATE transaction (SQLite's whole-database write lock) on the one writer
thread (aggregates/db.py).
"""

import hashlib
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from aggregates import announcements
from aggregates.errors import Conflict, NotFound, StoreError, UnknownDomain
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
    """What the write path answers for each source, in request order."""

    created: bool
    domain: str
    aggregate: str
    collection: str
    key: str
    version: int
    position: int
    at: datetime

    def as_json(self) -> dict[str, Any]:
        """As the API answers it (schemas.SourceAnswer)."""
        return {**asdict(self), "at": isoformat(self.at)}


def source_key(keys: dict[str, str]) -> str:
    """SHA-256 hex of the canonical JSON of a source's keys (docs/concepts.md)."""
    return hashlib.sha256(canonical_json(keys).encode()).hexdigest()


def register_sources(items: Sequence[NewSource]) -> list[Registration]:
    """Register sources all or nothing: the first that fails raises its StoreError
    (with its index) and nothing is written."""
    return _register(items, all_or_nothing=True)  # type: ignore[return-value]


def register_each(items: Sequence[NewSource]) -> list[Registration | StoreError]:
    """Register each source on its own, in one transaction: a source that fails
    answers its StoreError and leaves no trace; the others are written."""
    return _register(items, all_or_nothing=False)


def _register(
    items: Sequence[NewSource], *, all_or_nothing: bool
) -> list[Registration | StoreError]:
    if not items:
        return []
    if connection.vendor == "postgresql":
        outcomes = _register_postgres(items, all_or_nothing)
    else:
        outcomes = _register_python(items, all_or_nothing)
    committed = [
        announcements.VersionCommitted(
            domain=o.domain,
            aggregate=o.aggregate,
            version=o.version,
            position=o.position,
        )
        for o in outcomes
        if isinstance(o, Registration) and o.created
    ]
    if committed:
        # Right away in autocommit (PostgreSQL's one statement has committed).
        transaction.on_commit(lambda: announcements.versions_committed.send(committed))
    return outcomes


def _unknown_domain(item: NewSource, index: int) -> UnknownDomain:
    return UnknownDomain(
        f"domain {item.domain!r} does not exist; create it with "
        "POST /api/domains first",
        index=index,
        field="domain",
    )


def _conflict(item: NewSource, index: int, number: int) -> Conflict:
    return Conflict(
        f"a source with these keys already exists in collection "
        f"{item.collection!r} of aggregate {item.aggregate!r} "
        f"(version {number}) with different attrs",
        index=index,
        field="attrs",
    )


# PostgreSQL: one statement.

_REGISTER = (
    "SELECT * FROM botlnek_register(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::jsonb[], %s::jsonb[], %s)"
)


def _register_postgres(
    items: Sequence[NewSource], all_or_nothing: bool
) -> list[Registration | StoreError]:
    keys = [item.key for item in items]
    to_json = connection.ops.adapt_json_value
    params = [
        [item.domain for item in items],
        [item.aggregate for item in items],
        [item.collection for item in items],
        keys,
        [to_json(item.keys, None) for item in items],
        [to_json(item.attrs, None) for item in items],
        all_or_nothing,
    ]
    # Inside a caller's transaction a savepoint keeps a refusal from poisoning it.
    scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with scope, connection.cursor() as cursor:
            cursor.execute(_REGISTER, params)
            rows = cursor.fetchall()
    except DatabaseError as exc:
        refusal = _refusal(exc, items)
        if refusal is None:
            raise
        raise refusal from None
    outcomes: list[Registration | StoreError] = []
    for index, (item, key, (outcome, number, position, at)) in enumerate(
        zip(items, keys, rows, strict=True)
    ):
        if outcome == "unknown_domain":
            outcomes.append(_unknown_domain(item, index))
        elif outcome == "conflict":
            outcomes.append(_conflict(item, index, number))
        else:
            outcomes.append(
                _registration(outcome == "created", item, key, number, position, at)
            )
    return outcomes


def _refusal(exc: DatabaseError, items: Sequence[NewSource]) -> StoreError | None:
    """The StoreError botlnek_register() raised for an all-or-nothing batch."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate not in ("BL404", "BL409"):
        return None
    index, number = map(int, cause.diag.message_detail.split())
    if sqlstate == "BL404":
        return _unknown_domain(items[index], index)
    return _conflict(items[index], index, number)


def _registration(
    created: bool, item: NewSource, key: str, number: int, position: int, at: datetime
) -> Registration:
    return Registration(
        created=created,
        domain=item.domain,
        aggregate=item.aggregate,
        collection=item.collection,
        key=key,
        version=number,
        position=position,
        at=utc(at),
    )


# SQLite: the same decisions in Python, in one transaction.


def _register_python(
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
                    raise _unknown_domain(item, index)
                outcomes[index] = _unknown_domain(item, index)
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
                        raise _conflict(item, index, existing.number)
                    outcomes[index] = _conflict(item, index, existing.number)
                    continue
                outcomes[index] = _registration(
                    False, item, key, existing.number, existing.position, existing.at
                )
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
            outcomes[index] = _registration(
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
