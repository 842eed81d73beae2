"""The one write path for sources, and the reads built on the same tables.

register_sources() is the only code that writes Aggregate, Version and Source rows.
It locks every domain it touches (SELECT … FOR UPDATE on PostgreSQL; SQLite's
BEGIN IMMEDIATE takes the whole-database write lock), so per-aggregate versions and
per-domain positions are assigned one writer at a time and become visible in
position order. The lock is held to commit, which makes position order commit order.
"""

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from aggregates import events
from aggregates.models import Aggregate, Domain, Receipt, Source, Version
from aggregates.schemas import canonical_json, json_equal


class StoreError(Exception):
    """A registration that cannot be applied; the whole transaction is rolled back."""

    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, index: int | None = None, field: str = ""):
        super().__init__(detail)
        self.detail = detail
        self.index = index
        self.field = field


class UnknownDomain(StoreError):
    status = 404
    code = "not_found"


class Conflict(StoreError):
    status = 409
    code = "conflict"


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


def isoformat(moment: datetime | str) -> str:
    """ISO 8601 in UTC, always with microseconds: 2026-11-26T10:00:00.000000Z.

    Takes a datetime, or the naive UTC text SQLite keeps one as (raw queries)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


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
            transaction.on_commit(lambda: events.versions_committed(committed))
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


# The write path's SQL. It is written out rather than built by the ORM because the
# ORM's query compilation cost several times the queries themselves (~0.5 ms against
# ~0.05 ms per statement, measured), and every post runs about eight of them while
# holding the domain lock. Statements are plain SQL that SQLite and PostgreSQL share.

_DOMAIN = Domain._meta.db_table
_AGGREGATE = Aggregate._meta.db_table
_VERSION = Version._meta.db_table
_SOURCE = Source._meta.db_table


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


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _json_value(value: Any) -> Any:
    """A JSON column as Python: SQLite and Django's psycopg setup return text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


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
            f'SELECT "id", "key", "latest_position", "aggregate_count" FROM "{_DOMAIN}"'
            f' WHERE "key" IN ({_placeholders(len(keys))}) ORDER BY "key"{self.lock}',
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
            f'SELECT "id", "domain_id", "key", "version", "counts" FROM "{_AGGREGATE}"'
            f' WHERE "domain_id" IN ({_placeholders(len(domain_ids))})'
            f' AND "key" IN ({_placeholders(len(keys))})',
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
                counts = _json_value(row[4])
                result[domain_key, key] = _AggregateRow(
                    row[0], domain, key, row[3], counts
                )
        return result

    def create_aggregates(self, rows: list[_AggregateRow], now: datetime) -> None:
        if not rows:
            return
        at = self._time(now)
        self.cursor.execute(
            f'INSERT INTO "{_AGGREGATE}" ("domain_id", "key", "version", "counts",'
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
            f' v."position", v."at" FROM "{_SOURCE}" s'
            f' JOIN "{_VERSION}" v ON v."id" = s."version_id"'
            f' WHERE s."aggregate_id" IN ({_placeholders(len(ids))})'
            f' AND s."key" IN ({_placeholders(len(ordered_keys))})',
            [*ids, *ordered_keys],
        )
        return {
            (aggregate_id, collection, key): _ExistingSource(
                _json_value(attrs), number, position, _aware(at)
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
                sql=f'INSERT INTO "{_VERSION}" ("aggregate_id", "domain_id", "number",'
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
                sql=f'INSERT INTO "{_SOURCE}" ("version_id", "aggregate_id",'
                ' "collection", "key", "keys", "attrs")'
                ' SELECT v."id", n."aggregate_id", n."collection", n."key", n."keys",'
                f' n."attrs" FROM "new" n JOIN "{_VERSION}" v'
                ' ON v."domain_id" = n."domain_id" AND v."position" = n."position"',
            )
            self.cursor.executemany(
                f'UPDATE "{_AGGREGATE}" SET "version" = %s, "counts" = %s,'
                ' "updated_at" = %s WHERE "id" = %s',
                [(a.version, self._json(a.counts), at, a.id) for a in aggregates],
            )
            self.cursor.executemany(
                f'UPDATE "{_DOMAIN}" SET "latest_position" = %s,'
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


def _aware(value: datetime | str) -> datetime:
    """A timestamp column read by raw SQL, as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# Reads. Each runs a fixed number of queries whatever the size of the aggregate.


class NotFound(StoreError):
    status = 404
    code = "not_found"


def get_domain(key: str) -> Domain:
    try:
        return Domain.objects.get(key=key)
    except Domain.DoesNotExist:
        raise NotFound(f"domain {key!r} does not exist") from None


def get_aggregate(domain_key: str, key: str) -> Aggregate:
    try:
        return Aggregate.objects.select_related("domain").get(
            domain__key=domain_key, key=key
        )
    except Aggregate.DoesNotExist:
        get_domain(domain_key)
        raise NotFound(
            f"aggregate {key!r} does not exist in domain {domain_key!r}"
        ) from None


def domain_json(domain: Domain) -> dict[str, Any]:
    return {
        "key": domain.key,
        "attrs": domain.attrs,
        "aggregates": domain.aggregate_count,
        "latest_position": domain.latest_position,
        "created_at": isoformat(domain.created_at),
    }


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


def list_aggregates(
    domain: Domain, *, limit: int, cursor: str | None, prefix: str | None
) -> dict[str, Any]:
    """Aggregates of a domain, most recently updated first, keyset-paginated."""
    rows = Aggregate.objects.filter(domain=domain).order_by("-updated_at", "-id")
    if prefix:
        if connection.vendor == "sqlite":
            # SQLite's LIKE ignores case; keys compare byte by byte (BINARY).
            rows = rows.filter(key__gte=prefix, key__lt=prefix + "\U0010ffff")
        else:
            rows = rows.filter(key__startswith=prefix)
    if cursor:
        updated_at, last_id = _decode_cursor(cursor)
        rows = rows.filter(
            Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, id__lt=last_id)
        )
    page = list(
        rows.values_list("id", "key", "version", "created_at", "updated_at", "counts")[
            : limit + 1
        ]
    )
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        last = page[-1]
        next_cursor = _encode_cursor(last[4], last[0])
    return {
        "aggregates": [
            {
                "key": key,
                "version": version,
                "created_at": isoformat(created_at),
                "updated_at": isoformat(updated_at),
                "counts": counts,
            }
            for _, key, version, created_at, updated_at, counts in page
        ],
        "next_cursor": next_cursor,
    }


def _encode_cursor(updated_at: datetime, last_id: int) -> str:
    raw = json.dumps([updated_at.isoformat(), last_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        moment, last_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(moment), int(last_id)
    except (ValueError, TypeError, OverflowError):
        raise StoreError(
            "must be a next_cursor value from an earlier page", field="cursor"
        ) from None


def aggregate_state(aggregate: Aggregate, as_of: int | None = None) -> dict[str, Any]:
    """The aggregate as of version `as_of` (default: latest): SPEC §3's state shape."""
    return json.loads(aggregate_state_json(aggregate, as_of))


def aggregate_state_json(aggregate: Aggregate, as_of: int | None = None) -> str:
    """The state as JSON text: the one serializer of this shape, which the API,
    websockets and SSE all send.

    It is written out directly rather than built as objects and dumped: keys and
    attrs are spliced in as the JSON text the database holds, so a 10,000-source
    aggregate costs no 20,000 JSON parses and datetime conversions on the way out.
    """
    if as_of is not None and not 1 <= as_of <= aggregate.version:
        raise NotFound(
            f"aggregate {aggregate.key!r} has versions 1-{aggregate.version}, "
            f"not {as_of}"
        )
    number = aggregate.version if as_of is None else as_of
    as_text = "::text" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT v.number, v.position, v.at, s.collection, s.key,"
            f" s.keys{as_text}, s.attrs{as_text}"
            " FROM aggregates_version v JOIN aggregates_source s"
            " ON s.version_id = v.id"
            " WHERE v.aggregate_id = %s AND v.number <= %s ORDER BY v.number",
            [aggregate.pk, number],
        )
        rows = cursor.fetchall()
    versions = []
    collections: dict[str, list[str]] = {}
    names: dict[str, str] = {}  # collection: its JSON string, encoded once
    updated_at = isoformat(aggregate.updated_at)
    for number, position, at, collection, key, keys, attrs in rows:
        name = names.get(collection) or names.setdefault(
            collection, json.dumps(collection, ensure_ascii=False)
        )
        updated_at = isoformat(at)
        versions.append(
            f'{{"version":{number},"position":{position},"at":"{updated_at}",'
            f'"collection":{name},"key":"{key}"}}'
        )
        collections.setdefault(collection, []).append(
            f'{{"version":{number},"key":"{key}","keys":{keys},"attrs":{attrs}}}'
        )
    head = json.dumps(
        {
            "domain": aggregate.domain.key,
            "key": aggregate.key,
            "version": len(versions),
            "created_at": isoformat(aggregate.created_at),
            "updated_at": updated_at,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    by_collection = ",".join(
        f"{names[name]}:[{','.join(collections[name])}]" for name in sorted(collections)
    )
    return (
        f'{head[:-1]},"versions":[{",".join(versions)}],'
        f'"collections":{{{by_collection}}}}}'
    )


_FRAME_FIELDS = (
    "domain__key",
    "aggregate__key",
    "number",
    "position",
    "at",
    "source__collection",
    "source__key",
    "source__keys",
    "source__attrs",
)


def _frame(row: tuple) -> dict[str, Any]:
    domain, aggregate, number, position, at, collection, key, keys, attrs = row[:9]
    return {
        "domain": domain,
        "aggregate": aggregate,
        "version": number,
        "position": position,
        "at": isoformat(at),
        "source": {"collection": collection, "key": key, "keys": keys, "attrs": attrs},
    }


def _frames(rows: Iterable[tuple]) -> list[dict[str, Any]]:
    return [_frame(row) for row in rows]


def aggregate_versions(aggregate: Aggregate, *, after: int, limit: int) -> list[dict]:
    """Versions of one aggregate after version `after`, oldest first."""
    rows = (
        Version.objects.filter(aggregate=aggregate, number__gt=after)
        .order_by("number")
        .values_list(*_FRAME_FIELDS)[:limit]
    )
    return _frames(rows)


def domain_versions(domain: Domain, *, after_position: int, limit: int) -> list[dict]:
    """Versions of every aggregate of a domain after a position, in position order."""
    rows = (
        Version.objects.filter(domain=domain, position__gt=after_position)
        .order_by("position")
        .values_list(*_FRAME_FIELDS)[:limit]
    )
    return _frames(rows)


def live_frames(
    domain_key: str,
    *,
    after_position: int,
    limit: int,
    aggregate: str | None = None,
    up_to: int | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """For live delivery: the domain's latest position, then version frames (with
    delta mode's `counts`) after `after_position`, optionally of one aggregate.

    The latest position is read first: every version at or below it has committed,
    so the frames read afterwards hold all of them that match.
    """
    latest = (
        Domain.objects.filter(key=domain_key)
        .values_list("latest_position", flat=True)
        .first()
    )
    if latest is None:
        return 0, []
    rows = Version.objects.filter(domain__key=domain_key, position__gt=after_position)
    if aggregate is not None:
        rows = rows.filter(aggregate__key=aggregate)
    if up_to is not None:
        rows = rows.filter(position__lte=up_to)
    frames = []
    for row in rows.order_by("position").values_list(*_FRAME_FIELDS, "counts")[:limit]:
        frame = _frame(row)
        frame["counts"] = row[9]
        frames.append(frame)
    return latest, frames


def position_of_version(domain_key: str, aggregate: str, number: int) -> int | None:
    """The domain position of an aggregate's version N, or None if there is none."""
    return (
        Version.objects.filter(
            domain__key=domain_key, aggregate__key=aggregate, number=number
        )
        .values_list("position", flat=True)
        .first()
    )


def latest_positions(domain_keys: Iterable[str]) -> dict[str, int]:
    return dict(
        Domain.objects.filter(key__in=list(domain_keys)).values_list(
            "key", "latest_position"
        )
    )


def latest_positions_all() -> dict[str, int]:
    return dict(Domain.objects.values_list("key", "latest_position"))


def state_json_as_of(domain_key: str, aggregate: str, number: int | None) -> str:
    """An aggregate's state text by keys, as of `number` (None: the latest)."""
    return aggregate_state_json(get_aggregate(domain_key, aggregate), number)


# Receipts: what subscribers did about versions. Never a version themselves.


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
) -> dict[str, Any]:
    target = get_aggregate(domain, aggregate)
    if version > target.version:
        raise NotFound(
            f"aggregate {aggregate!r} has versions 1-{target.version}, not {version}",
            field="version",
        )
    receipt = Receipt.objects.create(
        aggregate=target,
        watcher=watcher,
        version=version,
        outcome=outcome,
        exit_code=exit_code,
        duration_s=duration_s,
        detail=detail,
    )
    return receipt_json(receipt, domain, aggregate)


def receipt_json(receipt: Receipt, domain: str, aggregate: str) -> dict[str, Any]:
    return {
        "id": receipt.pk,
        "watcher": receipt.watcher,
        "domain": domain,
        "aggregate": aggregate,
        "version": receipt.version,
        "outcome": receipt.outcome,
        "exit_code": receipt.exit_code,
        "duration_s": receipt.duration_s,
        "detail": receipt.detail,
        "at": isoformat(receipt.at),
    }


def list_receipts(domain: str, aggregate: str, *, limit: int) -> list[dict[str, Any]]:
    """An aggregate's receipts, newest first."""
    target = get_aggregate(domain, aggregate)
    return [
        receipt_json(receipt, domain, aggregate)
        for receipt in target.receipts.order_by("-id")[:limit]
    ]


# Retention: deleting whole aggregates is the only deletion there is.


def prune_aggregates(aggregate_ids: list[int], older_than: datetime) -> int:
    """Delete these aggregates, with their history, if still untouched since
    `older_than`; answer how many went. Short: it holds their domains' locks."""
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
        victims = list(
            Aggregate.objects.filter(
                id__in=aggregate_ids, updated_at__lt=older_than
            ).values_list("id", "domain_id")
        )
        if not victims:
            return 0
        ids = [aggregate_id for aggregate_id, _ in victims]
        marks = _placeholders(len(ids))
        for table in (_SOURCE, Receipt._meta.db_table, _VERSION, _AGGREGATE):
            column = "id" if table == _AGGREGATE else "aggregate_id"
            cursor.execute(f'DELETE FROM "{table}" WHERE "{column}" IN ({marks})', ids)
        gone: dict[int, int] = {}
        for _, domain_id in victims:
            gone[domain_id] = gone.get(domain_id, 0) + 1
        cursor.executemany(
            f'UPDATE "{_DOMAIN}" SET "aggregate_count" = "aggregate_count" - %s'
            ' WHERE "id" = %s',
            [(count, domain_id) for domain_id, count in gone.items()],
        )
    return len(victims)
