"""Random interleavings of new sources, duplicates, conflicts and batches, checked
against a plain Python model: every guarantee (docs/concepts.md) one writer can
observe holds after every step (gapless versions and positions, one source per
version, idempotent answers, all-or-nothing batches, states as of N that replay the
first N sources)."""

import hashlib
import json
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pytest
from django.db import connection
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aggregates import announcements, store
from aggregates.errors import Conflict, UnknownDomain
from aggregates.models import Aggregate, Domain, Source, Version
from aggregates.store import NewSource
from aggregates.values import isoformat

# Small key spaces, so that duplicates and conflicts happen often.
DOMAINS = ("c-inputs", "other")
UNKNOWN_DOMAIN = "nowhere"
AGGREGATES = ("2026-11-26", "2026-11-27", "part:1")
COLLECTIONS = ("A", "B")
KEYS = (
    {},
    {"run": "am"},
    {"run": "pm"},
    {"run": "am", "part": "1"},
    {"part": "1", "run": "am"},  # the same identity as the one above
    {"run": "ñ ☃"},
)
ATTRS = (
    {},
    {"n": 1},
    {"n": 1.0},  # the same JSON value as {"n": 1}
    {"n": True},  # not the same as {"n": 1}
    {"n": 0},
    {"n": False},
    {"n": None},
    {"n": "1"},
    {"n": 2.5},
    {"path": "s3://b/a", "deep": {"x": [1, {"y": 0}]}},
    {"deep": {"x": [1.0, {"y": 0.0}]}, "path": "s3://b/a"},  # same as the above
    {"deep": {"x": [True, {"y": 0}]}, "path": "s3://b/a"},
)


def json_value(value: Any) -> Any:
    """A value as JSON compares it: 1 and 1.0 are one number, true is not 1."""
    if isinstance(value, dict):
        return ("object", frozenset((k, json_value(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(json_value(v) for v in value))
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)  # hash(1) == hash(1.0) and 1 == 1.0
    return (type(value).__name__, value)


def retyped(value: Any) -> Any:
    """The same JSON value spelled differently: ints as floats, floats as ints, and
    object members in reverse order."""
    if isinstance(value, dict):
        return {k: retyped(v) for k, v in reversed(value.items())}
    if isinstance(value, list):
        return [retyped(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def booleanized(value: Any) -> Any:
    """0 and 1 swapped for false and true and back: equal in Python, not in JSON."""
    if isinstance(value, dict):
        return {k: booleanized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [booleanized(v) for v in value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return value


def expected_key(keys: dict[str, str]) -> str:
    """SHA-256 hex of the canonical JSON (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(
        keys, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Registered:
    """A source the model holds, where it was first registered."""

    item: NewSource
    version: int
    position: int
    at: datetime | None = None


@dataclass
class Plan:
    """What the model says a call of register_sources must do."""

    answers: list[tuple[bool, Registered]]
    unknown: list[int]  # indexes of items naming an unknown domain
    conflicts: list[int]  # indexes of items conflicting with an earlier source


def identity(item: NewSource) -> tuple[str, str, str, str]:
    return (item.domain, item.aggregate, item.collection, expected_key(item.keys))


def snapshot() -> dict[str, list[tuple]]:
    """Every row the write path could touch, every column, as the database has it
    (raw SQL: the ORM's converters would make this the slowest part of a step)."""
    tables = {}
    with connection.cursor() as cursor:
        for model in (Domain, Aggregate, Version, Source):
            cursor.execute(f'SELECT * FROM "{model._meta.db_table}" ORDER BY "id"')
            tables[model.__name__] = cursor.fetchall()
    return tables


class WritePath(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # pytest-django resets the database per test, not per Hypothesis example.
        Domain.objects.all().delete()  # cascades to everything below a domain
        for key in DOMAINS:
            store.create_domain(key, {})
        self.latest = dict.fromkeys(DOMAINS, 0)
        self.sources: dict[tuple, Registered] = {}
        self.histories: dict[tuple[str, str], list[Registered]] = {}
        self.touched: set[tuple[str, str]] = set()
        self.committed: list[announcements.VersionCommitted] = []
        self.cleanup = ExitStack()
        self.cleanup.enter_context(
            announcements.versions_committed.listening(self.committed.extend)
        )

    def teardown(self) -> None:
        self.cleanup.close()

    # Drawing items: fresh ones from the small spaces, or the identity of a source
    # already there (or earlier in the same batch) with equal or other attrs.

    def _fresh(self, data, earlier: list[NewSource]) -> NewSource:
        item = NewSource(
            domain=data.draw(st.sampled_from(DOMAINS), label="domain"),
            aggregate=data.draw(st.sampled_from(AGGREGATES), label="aggregate"),
            collection=data.draw(st.sampled_from(COLLECTIONS), label="collection"),
            keys=dict(data.draw(st.sampled_from(KEYS), label="keys")),
            attrs=data.draw(st.sampled_from(ATTRS), label="attrs"),
        )
        # A fresh item landing on a known identity repeats it: conflicts come from
        # _again alone, else nearly every batch would conflict once the spaces fill.
        if identity(item) in self.sources:
            return replace(item, attrs=self.sources[identity(item)].item.attrs)
        for other in earlier:
            if identity(other) == identity(item):
                return replace(item, attrs=other.attrs)
        return item

    def _again(self, data, earlier: list[NewSource]) -> NewSource:
        candidates = [r.item for r in self.sources.values()] + earlier
        original = data.draw(st.sampled_from(candidates), label="again")
        change = data.draw(
            st.sampled_from((retyped, booleanized, None)), label="change"
        )
        attrs = (
            change(original.attrs)
            if change
            else data.draw(st.sampled_from(ATTRS), label="other attrs")
        )
        keys = dict(reversed(original.keys.items()))  # same identity, other order
        return NewSource(
            original.domain, original.aggregate, original.collection, keys, attrs
        )

    def _item(self, data, earlier: list[NewSource]) -> NewSource:
        can_repeat = bool(self.sources or earlier)
        if can_repeat and data.draw(st.sampled_from("ffa"), label="repeat") == "a":
            return self._again(data, earlier)
        return self._fresh(data, earlier)

    def _batch(self, data, min_size: int) -> list[NewSource]:
        items: list[NewSource] = []
        for _ in range(data.draw(st.integers(min_size, 6), label="size")):
            items.append(self._item(data, items))
        return items

    # Rules.

    @rule(data=st.data())
    def register_one(self, data) -> None:
        self._register([self._item(data, [])])

    @precondition(lambda self: self.sources)
    @rule(data=st.data())
    def register_again(self, data) -> None:
        self._register([self._again(data, [])])

    @rule(data=st.data())
    def register_batch(self, data) -> None:
        self._register(self._batch(data, min_size=2))

    @rule(data=st.data())
    def register_batch_with_unknown_domain(self, data) -> None:
        items = self._batch(data, min_size=0)
        stray = NewSource(
            UNKNOWN_DOMAIN,
            data.draw(st.sampled_from(AGGREGATES), label="aggregate"),
            data.draw(st.sampled_from(COLLECTIONS), label="collection"),
        )
        items.insert(data.draw(st.integers(0, len(items)), label="at"), stray)
        self._register(items)

    # The model.

    def _plan(self, items: list[NewSource]) -> Plan:
        latest = dict(self.latest)
        sources = dict(self.sources)
        lengths = {key: len(h) for key, h in self.histories.items()}
        plan = Plan([], [], [])
        for index, item in enumerate(items):
            if item.domain not in DOMAINS:
                plan.unknown.append(index)
                continue
            first = sources.get(identity(item))
            if first is None:
                latest[item.domain] += 1
                where = (item.domain, item.aggregate)
                lengths[where] = lengths.get(where, 0) + 1
                first = Registered(item, lengths[where], latest[item.domain])
                sources[identity(item)] = first
                plan.answers.append((True, first))
            elif json_value(first.item.attrs) == json_value(item.attrs):
                plan.answers.append((False, first))
            else:
                plan.conflicts.append(index)
        return plan

    def _register(self, items: list[NewSource]) -> None:
        plan = self._plan(items)
        before = snapshot()
        self.committed.clear()
        if plan.unknown or plan.conflicts:
            with pytest.raises((UnknownDomain, Conflict)) as raised:
                store.register_sources(items)
            culprits = {UnknownDomain: plan.unknown, Conflict: plan.conflicts}
            assert raised.value.index in culprits[type(raised.value)]
            assert snapshot() == before  # all or nothing: nothing
            assert self.committed == []
            return

        registrations = store.register_sources(items)

        assert len(registrations) == len(items)
        for registration, item, (created, first) in zip(
            registrations, items, plan.answers, strict=True
        ):
            assert registration.created is created
            assert (registration.domain, registration.aggregate) == (
                item.domain,
                item.aggregate,
            )
            assert registration.collection == item.collection
            assert registration.key == expected_key(item.keys)
            # A duplicate answers where its source was first registered.
            assert (registration.version, registration.position) == (
                first.version,
                first.position,
            )
            if created:
                first.at = registration.at
                self.sources[identity(item)] = first
                self.latest[item.domain] = first.position
                self.histories.setdefault((item.domain, item.aggregate), []).append(
                    first
                )
                self.touched.add((item.domain, item.aggregate))
            else:
                assert registration.at == first.at
        new = [first for created, first in plan.answers if created]
        assert self.committed == [
            announcements.VersionCommitted(
                r.item.domain, r.item.aggregate, r.version, r.position
            )
            for r in new
        ]
        after = snapshot()
        if not new:
            assert after == before  # a duplicate creates nothing
        for table in ("Version", "Source"):  # append-only
            rows = {row[0]: row for row in after[table]}
            assert all(rows.get(row[0]) == row for row in before[table])

    # Invariants, checked after every step.

    @invariant()
    def rows_keep_every_guarantee(self) -> None:
        domains = {d.key: d for d in Domain.objects.all()}
        aggregates = {
            (a.domain.key, a.key): a for a in Aggregate.objects.select_related("domain")
        }
        rows = list(
            Version.objects.order_by("domain__key", "position").values_list(
                "domain__key",
                "aggregate__key",
                "number",
                "position",
                "counts",
                "source__collection",
                "source__key",
                "source__keys",
                "source__attrs",
                "aggregate_id",
                "source__aggregate_id",
                named=True,
            )
        )
        # A version's source belongs to the version's own aggregate.
        assert [row.source__aggregate_id for row in rows] == [
            row.aggregate_id for row in rows
        ]

        assert sorted(domains) == sorted(DOMAINS)
        for key, domain in domains.items():
            positions = [row.position for row in rows if row.domain__key == key]
            assert positions == list(range(1, domain.latest_position + 1))
            assert domain.latest_position == self.latest[key]
            assert domain.aggregate_count == sum(1 for d, _ in aggregates if d == key)

        assert sorted(aggregates) == sorted(self.histories)
        for (domain_key, key), aggregate in aggregates.items():
            # In position order: a later version also has a later position.
            mine = [row for row in rows if row[:2] == (domain_key, key)]
            assert [row.number for row in mine] == list(range(1, aggregate.version + 1))
            running: Counter[str] = Counter()
            for row in mine:
                running[row.source__collection] += 1  # one source more than before
                assert row.counts == running
            assert aggregate.counts == running

        in_order = sorted(
            self.sources.values(), key=lambda r: (r.item.domain, r.position)
        )
        assert [
            (*row[:4], *row[5:8], json_value(row.source__attrs)) for row in rows
        ] == [
            (
                r.item.domain,
                r.item.aggregate,
                r.version,
                r.position,
                r.item.collection,
                expected_key(r.item.keys),
                r.item.keys,
                json_value(r.item.attrs),
            )
            for r in in_order
        ]

    @invariant()
    def reads_of_what_changed_replay_the_model(self) -> None:
        # Only what the last step wrote: the append-only check in _register keeps
        # every other row as it was when last read here.
        for domain_key in sorted({d for d, _ in self.touched}):
            domain = store.get_domain(domain_key)
            frames = store.domain_versions(domain, after_position=0, limit=10_000)
            assert [(f["aggregate"], f["version"], f["position"]) for f in frames] == [
                (r.item.aggregate, r.version, r.position)
                for r in sorted(self.sources.values(), key=lambda r: r.position)
                if r.item.domain == domain_key
            ]
        for domain_key, aggregate_key in sorted(self.touched):
            aggregate = store.get_aggregate(domain_key, aggregate_key)
            history = self.histories[domain_key, aggregate_key]
            self._check_states(aggregate, history)
            frames = store.aggregate_versions(aggregate, after=0, limit=10_000)
            assert [f["version"] for f in frames] == [r.version for r in history]
        self.touched.clear()

    def _check_states(self, aggregate: Aggregate, history: list[Registered]) -> None:
        """The state as of version N equals replaying the first N registrations."""
        previous = None
        for n in range(1, len(history) + 1):
            state = store.aggregate_state(aggregate, as_of=n)
            assert state["version"] == n
            assert state["updated_at"] == isoformat(history[n - 1].at)
            assert [
                (v["version"], v["position"], v["collection"], v["key"])
                for v in state["versions"]
            ] == [
                (r.version, r.position, r.item.collection, expected_key(r.item.keys))
                for r in history[:n]
            ]
            replayed: dict[str, list] = {}
            for r in history[:n]:
                replayed.setdefault(r.item.collection, []).append(
                    {
                        "version": r.version,
                        "key": expected_key(r.item.keys),
                        "keys": r.item.keys,
                        "attrs": r.item.attrs,
                    }
                )
            assert json_value(state["collections"]) == json_value(replayed)
            if previous is not None:
                assert state["versions"][:-1] == previous["versions"]
            previous = state
        assert store.aggregate_state(aggregate) == previous


def test_random_writes_keep_every_guarantee(transactional_db):
    run_state_machine_as_test(
        WritePath,
        settings=settings(
            max_examples=30,
            stateful_step_count=50,
            deadline=None,  # a step is a few queries; SQLite and PostgreSQL vary
            # No example database: each run stands alone, whoever else shares the
            # checkout; a failure prints the steps that reproduce it.
            database=None,
            # The explain phase traces every line run while shrinking, which makes
            # shrinking a failure through the ORM ten times slower (minutes).
            phases=[phase for phase in Phase if phase is not Phase.explain],
        ),
    )
