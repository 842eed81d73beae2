"""Rules across keys, in the database: what a reference covers, the facts of
references to neighbours as of a position, which aggregates a version
re-evaluates, and the inputs an event names.

A reference `X@-1d` from key K covers the aggregate whose key is K's neighbour a
day earlier (one exact key); `X@-2d..0d` every aggregate of K's key template and
shape dated from two days before K to K (a date range on the aggregates' key-date
index). A version of collection X in aggregate J re-evaluates each K whose
references to X cover J: for a window, K's date lies in [J - upper, J - lower]
— the same index. aggregates/keydates.py does the key arithmetic.
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, Max, QuerySet

from aggregates import keydates
from aggregates.conditions import Ref
from aggregates.models import Aggregate, Source, Version


def _offset(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def _aggregates(domain_id: int, key: str, lower: int, upper: int):
    """The aggregates of the domain whose key dates lie in [key + lower, key +
    upper], of key's template and shape (for lower == upper: the one neighbour)."""
    rows = Aggregate.objects.filter(domain_id=domain_id)
    if lower == upper:
        target = keydates.neighbour(key, _offset(lower))
        return rows.filter(key=target) if target is not None else rows.none()
    window = keydates.window(key, _offset(lower), _offset(upper))
    if window is None:
        return rows.none()
    return rows.filter(
        key_template=window.template,
        key_shape=window.shape,
        key_at__range=(window.first, window.last),
    )


def covered(domain_id: int, key: str, ref: Ref) -> QuerySet:
    """The ids of the aggregates `ref` covers from `key` (for a plain reference,
    the aggregate itself), as a query: used as a subquery, however many a window
    covers, never as a list of parameters."""
    if not ref.neighbours:
        found = Aggregate.objects.filter(domain_id=domain_id, key=key)
    else:
        found = _aggregates(domain_id, key, ref.lower, ref.upper)
    return found.values_list("id", flat=True)


def covering(
    domain_id: int, key: str, refs: Iterable[Ref]
) -> dict[int, tuple[str, datetime, list[Ref]]]:
    """The aggregates whose references among `refs` cover the aggregate `key`:
    id → (key, first version's time, the references that cover it)."""
    found: dict[int, tuple[str, datetime, list[Ref]]] = {}
    for ref in refs:
        # K covers J when J's date lies in [K + lower, K + upper].
        rows = _aggregates(domain_id, key, -ref.upper, -ref.lower).values_list(
            "id", "key", "created_at"
        )
        for aggregate_id, other, created_at in rows:
            entry = found.setdefault(aggregate_id, (other, created_at, []))
            entry[2].append(ref)
    return found


def near_facts(
    domain_id: int, key: str, refs: Iterable[Ref], position: int
) -> tuple[dict[str, int], dict[str, datetime]]:
    """For each reference to neighbours, the sources of its collection in the
    aggregates it covers from `key`, and the newest one's time, as of
    `position`."""
    counts: dict[str, int] = {}
    newest: dict[str, datetime] = {}
    for ref in refs:
        ids = covered(domain_id, key, ref)
        summary = Source.objects.filter(
            aggregate_id__in=ids,
            collection=ref.collection,
            version__position__lte=position,
        ).aggregate(n=Count("id"), newest=Max("version__at"))
        counts[ref.key] = summary["n"]
        if summary["newest"] is not None:
            newest[ref.key] = summary["newest"]
    return counts, newest


def inputs(
    domain_id: int,
    key: str,
    refs: Iterable[Ref],
    position: int,
    known: dict[tuple[str, Ref], QuerySet] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """For each reference, the aggregates it covers from `key` that hold its
    collection as of `position`: key, version and count, newest key first.
    `known` keeps what references cover between calls (the engine's step)."""
    answer: dict[str, list[dict[str, Any]]] = {}
    known = {} if known is None else known
    for ref in refs:
        if (key, ref) not in known:
            known[key, ref] = covered(domain_id, key, ref)
        ids = known[key, ref]
        rows = (
            Source.objects.filter(
                aggregate_id__in=ids,
                collection=ref.collection,
                version__position__lte=position,
            )
            .values("aggregate_id", "aggregate__key")
            .annotate(count=Count("id"))
        )
        counts = {
            row["aggregate_id"]: (row["aggregate__key"], row["count"]) for row in rows
        }
        versions = dict(
            Version.objects.filter(aggregate_id__in=counts, position__lte=position)
            .values("aggregate_id")
            .annotate(number=Max("number"))
            .values_list("aggregate_id", "number")
        )
        found = [
            {"aggregate": other, "version": versions[aggregate_id], "count": count}
            for aggregate_id, (other, count) in counts.items()
        ]
        found.sort(key=lambda item: _newest_first(item["aggregate"]), reverse=True)
        answer[ref.key] = found
    return answer


def _newest_first(key: str) -> tuple:
    moment = keydates.key_moment(key)
    return (moment is not None, moment or datetime.min.replace(tzinfo=UTC), key)


class RunningInputs:
    """Events' inputs through one engine step, with no query per event: what a
    reference covers from a key as of the step's start (one query per key and
    reference), then the step's own versions applied in position order (an
    event's inputs are as of its position; a step records them in that order).

    `versions`: the step's versions, in position order, as (position, aggregate
    key, version number, counts as of it)."""

    def __init__(
        self, domain_id: int, start: int, versions: list[tuple[int, str, int, dict]]
    ):
        self.domain_id = domain_id
        self.start = start
        self.versions = versions
        # (key, ref) → [versions applied, last position asked, {aggregate:
        # (version, count)}]
        self.running: dict[tuple[str, Ref], list] = {}
        self.answers: dict[tuple[str, Ref, int], list[dict[str, Any]]] = {}
        self.windows: dict[tuple[str, Ref], Any] = {}
        self.dates: dict[str, keydates.KeyDate | None] = {}
        self.known: dict[tuple[str, Ref], QuerySet] = {}

    def of(self, key: str, ref: Ref, position: int) -> list[dict[str, Any]]:
        """What `ref` covers from `key` as of `position` (inputs' shape)."""
        answer = self.answers.get((key, ref, position))
        if answer is not None:
            return answer
        running = self.running.get((key, ref))
        if running is None or position < running[1]:
            if position < self.start:  # before the step: the database knows
                return inputs(self.domain_id, key, [ref], position, self.known)[ref.key]
            base = inputs(self.domain_id, key, [ref], self.start, self.known)
            found = {
                item["aggregate"]: (item["version"], item["count"])
                for item in base[ref.key]
            }
            running = self.running[key, ref] = [0, self.start, found]
        applied, _, found = running
        while applied < len(self.versions) and self.versions[applied][0] <= position:
            _, other, number, counts = self.versions[applied]
            count = counts.get(ref.collection, 0)
            if count and self._covers(key, ref, other):
                found[other] = (number, count)
            applied += 1
        running[0], running[1] = applied, position
        answer = [
            {"aggregate": other, "version": number, "count": count}
            for other, (number, count) in found.items()
        ]
        answer.sort(key=lambda item: _newest_first(item["aggregate"]), reverse=True)
        self.answers[key, ref, position] = answer
        return answer

    def _covers(self, key: str, ref: Ref, other: str) -> bool:
        """Whether `ref` from `key` covers the aggregate `other` (as
        _aggregates() finds them in the database)."""
        if not ref.neighbours:
            return other == key
        if ref.lower == ref.upper:
            return other == keydates.neighbour(key, _offset(ref.lower))
        if (key, ref) not in self.windows:
            self.windows[key, ref] = keydates.window(
                key, _offset(ref.lower), _offset(ref.upper)
            )
        window = self.windows[key, ref]
        if other not in self.dates:
            self.dates[other] = keydates.key_date(other)
        return window is not None and window.covers(self.dates[other])
