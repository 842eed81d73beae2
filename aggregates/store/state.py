"""The aggregate state (`GET …/aggregates/{a}`): the one serializer of this shape,
whose text the API, websockets, SSE and webhooks all send.

It is written out directly rather than built as objects and dumped: keys and attrs
are spliced in as the JSON text the database holds, so a 10,000-source aggregate
costs no 20,000 JSON parses and datetime conversions on the way out.
tests/test_state.py compares it with a dict built and dumped the plain way.
"""

import json
from typing import Any

from django.db import connection

from aggregates.errors import NotFound
from aggregates.models import Aggregate
from aggregates.store.read import get_aggregate
from aggregates.store.sql import SOURCE, VERSION, as_text
from aggregates.values import isoformat, utc


def aggregate_state(aggregate: Aggregate, as_of: int | None = None) -> dict[str, Any]:
    """The aggregate as of version `as_of` (default: latest), as Python values."""
    return json.loads(aggregate_state_json(aggregate, as_of))


def state_json_as_of(domain_key: str, aggregate: str, number: int | None) -> str:
    """An aggregate's state text by keys, as of `number` (None: the latest)."""
    return aggregate_state_json(get_aggregate(domain_key, aggregate), number)


def aggregate_state_json(aggregate: Aggregate, as_of: int | None = None) -> str:
    """The state as JSON text, as of version `as_of` (default: the latest)."""
    if as_of is not None and not 1 <= as_of <= aggregate.version:
        raise NotFound(
            f"aggregate {aggregate.key!r} has versions 1-{aggregate.version}, "
            f"not {as_of}"
        )
    number = aggregate.version if as_of is None else as_of
    text = as_text()
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT v."number", v."position", v."at", s."collection", s."key",'
            f' s."keys"{text}, s."attrs"{text}'
            f' FROM "{VERSION}" v JOIN "{SOURCE}" s ON s."version_id" = v."id"'
            ' WHERE v."aggregate_id" = %s AND v."number" <= %s ORDER BY v."number"',
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
        updated_at = isoformat(utc(at))
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
