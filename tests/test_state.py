"""The aggregate state serializer writes JSON text by hand (splicing in what the
database holds); it must say exactly what a dict built and dumped the plain way
says, for awkward strings and numbers, on whichever database the suite runs."""

import json
from decimal import Decimal

import pytest

from aggregates import store
from aggregates.errors import NotFound
from aggregates.models import Aggregate, Version
from aggregates.store import NewSource, register_sources
from aggregates.values import isoformat

AWKWARD_STRINGS = [
    'quote " and backslash \\ and \\u0000 as text',
    "naïve ☃ \U0001f600 zero\u200bwidth",
    "line\nbreak\ttab\r\x01\x1f control",
    "\u2028 and \u2029 separators",
    "",
    "</script><!-- html -->",
]
AWKWARD_NUMBERS = [
    0,
    -1,
    1.0,
    0.1,
    -2.5e-7,
    1e300,
    12345678901234567890,
    2**63,
    -0.0,
    3.141592653589793,
]


def plain_state(aggregate: Aggregate, as_of: int) -> dict:
    """The state as docs/api.md describes it, built from the ORM the obvious way."""
    versions = list(
        Version.objects.filter(aggregate=aggregate, number__lte=as_of)
        .select_related("source")
        .order_by("number")
    )
    collections: dict[str, list] = {}
    for version in versions:
        source = version.source
        collections.setdefault(source.collection, []).append(
            {
                "version": version.number,
                "key": source.key,
                "keys": source.keys,
                "attrs": source.attrs,
            }
        )
    return {
        "domain": aggregate.domain.key,
        "key": aggregate.key,
        "version": as_of,
        "created_at": isoformat(aggregate.created_at),
        "updated_at": isoformat(versions[-1].at),
        "versions": [
            {
                "version": v.number,
                "position": v.position,
                "at": isoformat(v.at),
                "collection": v.source.collection,
                "key": v.source.key,
            }
            for v in versions
        ],
        "collections": dict(sorted(collections.items())),
    }


def as_json_value(text: str):
    """JSON text as values, numbers as decimals: 1e300 and 1000…0 are one number
    (PostgreSQL's jsonb writes the first as the second)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def test_state_text_equals_the_plain_dump(domain):
    sources = [
        NewSource("c-inputs", "2026-11-26", "src:a", {"name": text}, {"text": text})
        for text in AWKWARD_STRINGS
    ]
    sources += [
        NewSource("c-inputs", "2026-11-26", "b=B", {"n": str(i)}, {"n": number})
        for i, number in enumerate(AWKWARD_NUMBERS)
    ]
    sources.append(
        NewSource(
            "c-inputs",
            "2026-11-26",
            "A",
            {"deep": "1"},
            {"list": [None, True, False, [], {}], "nested": {"x": {"y": [1, "2"]}}},
        )
    )
    register_sources(sources)
    aggregate = store.get_aggregate("c-inputs", "2026-11-26")
    for as_of in (1, len(AWKWARD_STRINGS) + 3, aggregate.version):
        text = store.aggregate_state_json(aggregate, as_of)
        plain = json.dumps(plain_state(aggregate, as_of), ensure_ascii=False)
        assert as_json_value(text) == as_json_value(plain), as_of
    assert list(as_json_value(text)["collections"]) == ["A", "b=B", "src:a"]


def test_a_version_out_of_range_is_not_found(domain):
    register_sources([NewSource("c-inputs", "a", "A")])
    aggregate = store.get_aggregate("c-inputs", "a")
    for as_of in (0, 2):
        with pytest.raises(NotFound, match="versions 1-1"):
            store.aggregate_state_json(aggregate, as_of)
