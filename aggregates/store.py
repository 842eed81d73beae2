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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from aggregates import events
from aggregates.models import Aggregate, Domain, Source, Version
from aggregates.schemas import canonical_json


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


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds: 2026-11-26T10:00:00.000000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def register_sources(items: Sequence[NewSource]) -> list[Registration]:
    """Register sources all or nothing; new versions are announced after commit."""
    if not items:
        return []
    identities = [(item, item.key) for item in items]
    with transaction.atomic():
        domains = _lock_domains(identities)
        now = timezone.now()
        aggregates = _aggregates_for(domains, identities, now)
        known = _existing_sources(aggregates, identities)

        results: list[Registration] = []
        new_versions: list[Version] = []
        new_sources: list[Source] = []
        touched: dict[int, Aggregate] = {}
        for index, (item, key) in enumerate(identities):
            aggregate = aggregates[item.domain, item.aggregate]
            identity = (aggregate.pk, item.collection, key)
            if identity in known:
                source, version = known[identity]
                if source.attrs != item.attrs:
                    raise Conflict(
                        f"a source with these keys already exists in collection "
                        f"{item.collection!r} of aggregate {item.aggregate!r} "
                        f"(version {version.number}) with different attrs",
                        index=index,
                        field="attrs",
                    )
                results.append(_registration(False, item, key, version))
                continue
            domain = domains[item.domain]
            domain.latest_position += 1
            aggregate.version += 1
            aggregate.counts[item.collection] = (
                aggregate.counts.get(item.collection, 0) + 1
            )
            aggregate.updated_at = now
            touched[aggregate.pk] = aggregate
            version = Version(
                aggregate=aggregate,
                domain=domain,
                number=aggregate.version,
                position=domain.latest_position,
                at=now,
            )
            source = Source(
                version=version,
                aggregate=aggregate,
                collection=item.collection,
                key=key,
                keys=item.keys,
                attrs=item.attrs,
            )
            new_versions.append(version)
            new_sources.append(source)
            known[identity] = (source, version)
            results.append(_registration(True, item, key, version))

        if new_versions:
            Version.objects.bulk_create(new_versions)
            for source in new_sources:
                source.version_id = source.version.pk
            Source.objects.bulk_create(new_sources)
            _save_aggregates(list(touched.values()))
            for domain in domains.values():
                Domain.objects.filter(pk=domain.pk).update(
                    latest_position=domain.latest_position,
                    aggregate_count=domain.aggregate_count,
                )
            committed = [
                events.VersionCommitted(
                    domain=v.domain.key,
                    aggregate=v.aggregate.key,
                    version=v.number,
                    position=v.position,
                    version_id=v.pk,
                )
                for v in new_versions
            ]
            transaction.on_commit(lambda: events.versions_committed(committed))
    return results


def _save_aggregates(aggregates: list[Aggregate]) -> None:
    if len(aggregates) > 1:
        Aggregate.objects.bulk_update(aggregates, ["version", "counts", "updated_at"])
        return
    # One aggregate (every single post): a plain UPDATE costs a fraction of
    # bulk_update's CASE expressions.
    (aggregate,) = aggregates
    Aggregate.objects.filter(pk=aggregate.pk).update(
        version=aggregate.version,
        counts=aggregate.counts,
        updated_at=aggregate.updated_at,
    )


def _registration(created: bool, item: NewSource, key: str, v: Version) -> Registration:
    return Registration(
        created=created,
        domain=item.domain,
        aggregate=item.aggregate,
        collection=item.collection,
        key=key,
        version=v.number,
        position=v.position,
        at=v.at,
    )


def _lock_domains(identities: list[tuple[NewSource, str]]) -> dict[str, Domain]:
    wanted = sorted({item.domain for item, _ in identities})
    # A consistent lock order keeps batches that span domains from deadlocking.
    domains = {
        d.key: d
        for d in Domain.objects.select_for_update()
        .filter(key__in=wanted)
        .order_by("key")
    }
    for index, (item, _) in enumerate(identities):
        if item.domain not in domains:
            raise UnknownDomain(
                f"domain {item.domain!r} does not exist; create it with "
                "POST /api/domains first",
                index=index,
                field="domain",
            )
    return domains


def _aggregates_for(
    domains: dict[str, Domain],
    identities: list[tuple[NewSource, str]],
    now: datetime,
) -> dict[tuple[str, str], Aggregate]:
    """Every aggregate the items name, creating the missing ones."""
    wanted = {(item.domain, item.aggregate) for item, _ in identities}
    # Two IN lists fetch a superset; one OR per item would overflow SQLite's
    # expression depth on a 1,000-source batch.
    found = {
        (aggregate.domain_id, aggregate.key): aggregate
        for aggregate in Aggregate.objects.filter(
            domain__in=[domains[d] for d, _ in wanted], key__in={a for _, a in wanted}
        )
    }
    result = {}
    missing = []
    for domain_key, aggregate_key in sorted(wanted):
        domain = domains[domain_key]
        aggregate = found.get((domain.pk, aggregate_key))
        if aggregate is None:
            aggregate = Aggregate(
                domain=domain, key=aggregate_key, created_at=now, updated_at=now
            )
            missing.append(aggregate)
            domain.aggregate_count += 1
        aggregate.domain = domain
        result[domain_key, aggregate_key] = aggregate
    if missing:
        Aggregate.objects.bulk_create(missing)
    return result


def _existing_sources(
    aggregates: dict[tuple[str, str], Aggregate],
    identities: Iterable[tuple[NewSource, str]],
) -> dict[tuple[int, str, str], tuple[Source, Version]]:
    """Sources already registered under any of the items' identities."""
    aggregate_ids = set()
    hashes = set()
    for item, key in identities:
        aggregate = aggregates[item.domain, item.aggregate]
        if aggregate.version:  # a new aggregate holds nothing yet
            aggregate_ids.add(aggregate.pk)
            hashes.add(key)
    if not aggregate_ids:
        return {}
    candidates = Source.objects.filter(
        aggregate_id__in=aggregate_ids, key__in=hashes
    ).select_related("version")
    return {(s.aggregate_id, s.collection, s.key): (s, s.version) for s in candidates}


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
    if not created and domain.attrs != attrs:
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
    except (ValueError, TypeError):
        raise StoreError(
            "must be a next_cursor value from an earlier page", field="cursor"
        ) from None


def aggregate_state(aggregate: Aggregate, as_of: int | None = None) -> dict[str, Any]:
    """The aggregate as of version `as_of` (default: latest): SPEC §3's state shape.

    The one serializer of this shape: the API, websockets and SSE all send it.
    """
    if as_of is not None and not 1 <= as_of <= aggregate.version:
        raise NotFound(
            f"aggregate {aggregate.key!r} has versions 1-{aggregate.version}, "
            f"not {as_of}"
        )
    number = aggregate.version if as_of is None else as_of
    rows = (
        Version.objects.filter(aggregate=aggregate, number__lte=number)
        .order_by("number")
        .values_list(
            "number",
            "position",
            "at",
            "source__collection",
            "source__key",
            "source__keys",
            "source__attrs",
        )
    )
    versions = []
    collections: dict[str, list[dict[str, Any]]] = {}
    updated_at = aggregate.updated_at
    for number, position, at, collection, key, keys, attrs in rows:
        versions.append(
            {
                "version": number,
                "position": position,
                "at": isoformat(at),
                "collection": collection,
                "key": key,
            }
        )
        collections.setdefault(collection, []).append(
            {"version": number, "key": key, "keys": keys, "attrs": attrs}
        )
        updated_at = at
    return {
        "domain": aggregate.domain.key,
        "key": aggregate.key,
        "version": len(versions),
        "created_at": isoformat(aggregate.created_at),
        "updated_at": isoformat(updated_at),
        "versions": versions,
        "collections": dict(sorted(collections.items())),
    }


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


def _frames(rows: Iterable[tuple]) -> list[dict[str, Any]]:
    return [
        {
            "domain": domain,
            "aggregate": aggregate,
            "version": number,
            "position": position,
            "at": isoformat(at),
            "source": {
                "collection": collection,
                "key": key,
                "keys": keys,
                "attrs": attrs,
            },
        }
        for (
            domain,
            aggregate,
            number,
            position,
            at,
            collection,
            key,
            keys,
            attrs,
        ) in rows
    ]


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
