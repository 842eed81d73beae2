"""Reads: domains, aggregate listings, version frames, receipts.

Each runs a fixed number of queries whatever the size of an aggregate. The
aggregate state, the largest read, has a module of its own (state.py).
"""

import base64
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from aggregates.errors import NotFound, StoreError
from aggregates.models import Aggregate, Domain, Receipt, Version
from aggregates.values import isoformat


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


def list_domains(
    only: list[str] | None = None, *, limit: int = 1000, after: str | None = None
) -> list[dict[str, Any]]:
    """Domains in key order (only those with these keys, if given), as the API
    lists them: at most `limit`, after the key `after`."""
    domains = Domain.objects.order_by("key")
    if only:
        domains = domains.filter(key__in=only)
    if after is not None:
        domains = domains.filter(key__gt=after)
    return [domain_json(domain) for domain in domains[:limit]]


def list_aggregates(
    domain: Domain, *, limit: int, cursor: str | None, prefix: str | None
) -> dict[str, Any]:
    """Aggregates of a domain, most recently updated first, keyset-paginated."""
    rows = Aggregate.objects.filter(domain=domain)
    if prefix:
        rows = with_prefix(rows, prefix)
    rows = newest_first(rows, "updated_at", cursor)
    page = list(
        rows.values_list("id", "key", "version", "created_at", "updated_at", "counts")[
            : limit + 1
        ]
    )
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        last = page[-1]
        next_cursor = encode_cursor(last[4], last[0])
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


def with_prefix(rows: QuerySet, prefix: str, field: str = "key") -> QuerySet:
    """Rows whose key starts with `prefix`, case and all."""
    if connection.vendor == "sqlite":
        # SQLite's LIKE ignores case; keys compare byte by byte (BINARY).
        return rows.filter(
            **{f"{field}__gte": prefix, f"{field}__lt": prefix + "\U0010ffff"}
        )
    return rows.filter(**{f"{field}__startswith": prefix})


# Keyset pages, newest first: a cursor is the (time, id) of a page's last row.


def newest_first(rows: QuerySet, field: str, cursor: str | None) -> QuerySet:
    """`rows` by `field` then id, newest first, after the row `cursor` names."""
    if cursor:
        moment, last_id = _decode_cursor(cursor)
        rows = rows.filter(
            Q(**{f"{field}__lt": moment}) | Q(**{field: moment, "id__lt": last_id})
        )
    return rows.order_by(f"-{field}", "-id")


def encode_cursor(moment: datetime, last_id: int) -> str:
    """The cursor of the page after a row: its time and id."""
    raw = json.dumps([moment.isoformat(), last_id]).encode()
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


# Receipts: what subscribers did about versions. Never a version themselves.


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
        "rule": receipt.rule or None,
        "seq": receipt.seq,
        "at": isoformat(receipt.at),
    }


def list_receipts(domain: str, aggregate: str, *, limit: int) -> list[dict[str, Any]]:
    """An aggregate's receipts, newest first."""
    target = get_aggregate(domain, aggregate)
    return [
        receipt_json(receipt, domain, aggregate)
        for receipt in target.receipts.order_by("-id")[:limit]
    ]
