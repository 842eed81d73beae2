"""`--when` conditions: a real parser, positions in errors, an injectable clock."""

from datetime import UTC, datetime, timedelta

import pytest

from aggregates.conditions import ConditionError, Facts, parse

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def facts(counts, ages=None):
    newest = {name: NOW - timedelta(seconds=s) for name, s in (ages or {}).items()}
    return Facts(counts, newest, NOW)


@pytest.mark.parametrize(
    ("condition", "counts", "expected"),
    [
        ("A >= 1 and B >= 1", {"A": 2, "B": 1}, True),
        ("A >= 1 and B >= 1", {"A": 2}, False),
        ("A >= 2 or B >= 1", {"A": 1}, False),
        ("not (A >= 1)", {}, True),
        ("A and B", {"A": 1, "B": 3}, True),
        ("A and B", {"A": 1}, False),
        ('count("src-a") == 2', {"src-a": 2}, True),
        ("count(C) != 0", {}, False),
        ("A >= 1 and not B > 0 or C == 3", {"C": 3}, True),
    ],
)
def test_counts(condition, counts, expected):
    assert parse(condition)(facts(counts)) is expected


def test_age_compares_durations_with_an_injectable_clock():
    fresh = parse("age(B) < 2d and age(A) <= 90s")
    assert fresh(facts({"A": 1, "B": 1}, {"A": 90, "B": 3600})) is True
    assert fresh(facts({"A": 1, "B": 1}, {"A": 91, "B": 3600})) is False
    stale = parse("age(B) < 1s")
    assert stale(facts({"B": 1}, {"B": 0})) is True
    assert stale(facts({"B": 1}, {"B": 2})) is False
    assert stale(facts({})) is False  # a missing collection is infinitely old
    assert parse("age('src-b') > 6h")(facts({}, {})) is True


def test_facts_from_an_aggregate_state():
    state = {
        "versions": [
            {"version": 1, "collection": "A", "at": "2026-11-28T11:00:00.000000Z"},
            {"version": 2, "collection": "B", "at": "2026-11-28T11:59:30.000000Z"},
        ],
        "collections": {"A": [{}], "B": [{}]},
    }
    known = Facts.from_state(state, now=NOW)
    assert known.counts == {"A": 1, "B": 1}
    assert known.age("B") == 30
    assert parse("A >= 1 and age(B) < 1m")(known) is True


@pytest.mark.parametrize(
    ("condition", "column"),
    [
        ("A >=", 5),
        ("A >= 1 and", 11),
        ("A >= 1 B", 8),
        ("(A >= 1", 8),
        ("A >= 1 & B", 8),
        ("age(A)", 7),
        ("count(1)", 7),
        ("__import__('os')", 11),
        ("", 1),
        ("A < (B > 1)", 3),
    ],
)
def test_bad_conditions_name_the_column(condition, column):
    with pytest.raises(ConditionError) as error:
        parse(condition)
    assert error.value.column == column
    assert f"at column {column}" in str(error.value)


# References to neighbours: X@-1d, X@-2d..0d (evaluated by rules, keyed by the
# reference as written).


@pytest.mark.parametrize(
    ("text", "keys", "windows"),
    [
        ("B@-1d >= 1", ["B@-1d"], [(-86400, -86400)]),
        ("A@-2d..0d", ["A@-2d..0d"], [(-172800, 0)]),
        ("count(A@+6h) == 0", ["A@+6h"], [(21600, 21600)]),
        ('age("src-a"@-1d) < 2h', ["src-a@-1d"], [(-86400, -86400)]),
        ('count("a@b"@-1d)', ["a@b@-1d"], [(-86400, -86400)]),  # quoted: the name
        ("A and A@0d", ["A", "A@0d"], [None, (0, 0)]),
    ],
)
def test_references_to_neighbours(text, keys, windows):
    condition = parse(text)
    assert [ref.key for ref in condition.references] == keys
    assert [
        (ref.lower, ref.upper) if ref.neighbours else None
        for ref in condition.references
    ] == windows


def test_facts_answer_by_reference_as_written():
    condition = parse("A@-2d..0d >= 2 and B@-1d")
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    near = {"A@-2d..0d": 2, "B@-1d": 1}
    facts = Facts({"B": 0}, {}, now, near_counts=near)
    assert condition(facts)
    # A collection of its own is not its neighbour's.
    assert not condition(Facts({"B": 1}, {}, now, near_counts={"A@-2d..0d": 2}))
    assert [term.detail for term in condition.terms(facts)] == [
        "A@-2d..0d = 2",
        "B@-1d = 1",
    ]


def test_an_age_of_neighbours_changes_with_time():
    condition = parse("age(A@-1d) < 1h")
    newest = datetime(2026, 11, 26, 12, tzinfo=UTC)
    facts = Facts({"A": 1}, {"A": newest}, newest, near_newest={"A@-1d": newest})
    assert condition.changes(facts) == [newest + timedelta(hours=1, microseconds=1)]


@pytest.mark.parametrize(
    ("text", "column", "says"),
    [
        ("A@ >= 1", 2, "offsets like"),
        ("A@-1x", 2, "offsets like"),
        ("A@-1d..", 2, "offsets like"),
        ("B and A@0d..-1d", 8, "lower bound comes first"),
        ("count(A@1d..400d)", 8, "at most 366d"),
        ("A @-1d", 3, "unexpected '@-1d'"),  # detached: not an offset of A
    ],
)
def test_bad_references_name_the_column(text, column, says):
    with pytest.raises(ConditionError) as error:
        parse(text)
    assert error.value.column == column
    assert says in str(error.value)
