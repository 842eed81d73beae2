"""One step of a domain's rules, in memory: the versions after the rules' cursor
and what the clock made due, applied in order to the statuses they touch — an
aggregate's own versions, and (rules across keys) its neighbours' — and what it
recorded. engine.step runs it inside its transaction; see engine.py."""

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction
from django.db.models import Max

from aggregates import announcements, store
from aggregates.models import Rule, Source, Version
from aggregates.rules import evaluate, neighbours, sql
from aggregates.rules.definition import CompiledRule
from aggregates.rules.evaluate import Happened, State, VersionFacts
from aggregates.streams import DomainVersions

logger = logging.getLogger("botlnek.rules")

BATCH = 500  # versions per step
DUE_BATCH = 2000  # clock-due statuses per step
EXPECT_BATCH = 1000  # expected keys per rule per step
LOAD_CHUNK = 500  # statuses loaded at a time (a window may cover many)
# The clock acts on moments at least this far in the past: a version stamped
# before a moment but not yet committed then still counts as before it.
GRACE = timedelta(seconds=1)
# What the clock's heap holds at a moment: an expected key's first evaluation
# comes before a status's transition due at the same moment.
EXPECTED, DUE = 0, 1


@dataclass
class Tracked:
    """A status during a step: its row (if any), rule and aggregate."""

    rule: CompiledRule
    aggregate_id: int
    aggregate: str
    first_at: datetime
    state: State
    row_id: int | None = None
    touched: bool = False


class Step:
    def __init__(self, rules: list[Rule], now: datetime):
        self.rows = {rule.pk: rule for rule in rules}
        self.rules = {rule.pk: CompiledRule.of(rule) for rule in rules}
        self.domain_id = rules[0].domain_id
        self.domain = rules[0].domain.key
        self.position: int | None = None  # where the step leaves the cursors
        self.now = now
        self.tracked: dict[tuple[int, int], Tracked] = {}
        # (moment, EXPECTED or DUE, rule, aggregate (0: an expected key that is
        # not evaluated: outside the prefix, or past the years there are))
        self.due: list[tuple[datetime, int, int, int]] = []
        self.expected: dict[tuple[int, int], str] = {}  # key, by (rule, aggregate)
        self.expect_next: dict[int, datetime] = {}  # rules' cursors, as moved
        self.happened: list[tuple[Tracked, Happened]] = []
        self.history: dict[tuple[int, int], dict[str, datetime]] = {}
        self.failures = 0  # evaluations that failed
        # Within a step, what references cover, by (aggregate key, references):
        # a burst into one aggregate asks the same. Valid for the whole step: its
        # versions were read first, so every aggregate they make exists already
        # (one made after a given version is skipped there by _apply_near).
        self.covers: dict[tuple, dict] = {}
        self.orders: dict[tuple, list] = {}  # the same, ordered, by rule
        self.looked_up: set[tuple[int, int]] = set()  # statuses asked for
        self.inputs: neighbours.RunningInputs | None = None  # events' inputs

    def run(self) -> bool:
        start = min(rule.position for rule in self.rows.values())
        versions = _versions(self.domain, self.domain_id, start)
        caught_up = len(versions) < BATCH
        horizon = self.now - GRACE
        if versions and not caught_up:
            horizon = min(horizon, versions[-1].facts.at)
        expected, cut = self._expected(horizon)
        if cut is not None:  # more expected keys than a step takes: up to there
            horizon = cut
            caught_up = False
            versions = [version for version in versions if version.facts.at <= cut]
        self._load(versions, horizon, {aggregate for _, aggregate in expected})
        self.inputs = neighbours.RunningInputs(
            self.domain_id,
            start,
            [
                (v.facts.position, v.facts.aggregate, v.facts.version, v.facts.counts)
                for v in versions
            ],
        )
        # Where the domain's stream stands for what is evaluated now: time is
        # applied before each version, as of the position before it.
        self.up_to = max(rule.position for rule in self.rows.values())
        for version in versions:
            self.up_to = version.facts.position - 1
            self._run_due(until=version.facts.at)
            self._apply(version)
            self.up_to = version.facts.position
        due_left = False
        if caught_up:
            due_left = self._run_due(until=horizon, limit=DUE_BATCH)
        else:
            self._run_due(until=horizon)  # expected keys up to the cut
        self.position = versions[-1].facts.position if versions else None
        return not caught_up or due_left

    def _expected(
        self, horizon: datetime
    ) -> tuple[list[tuple[int, int]], datetime | None]:
        """The expected keys whose moment comes by `horizon`, at most EXPECT_BATCH
        per rule, on the clock's heap, their aggregates made (with no versions
        where nobody posted); the (rule, aggregate) pairs, and the moment the step
        must stop at when a rule has more than a batch."""
        planned: dict[int, list[tuple[datetime, str | None]]] = {}
        cut = None
        for rule in self.rules.values():
            keys = due_keys(rule, self.rows[rule.id].expect_next, horizon)
            if not keys:
                continue
            planned[rule.id] = keys
            last = keys[-1][0]
            if len(keys) == EXPECT_BATCH and last + rule.expect.every <= horizon:
                cut = last if cut is None else min(cut, last)
        wanted: dict[str, datetime] = {}
        keyed = []
        for rule_id, keys in planned.items():
            for moment, key in keys:
                if cut is not None and moment > cut:
                    break
                if key is not None:
                    wanted.setdefault(key, moment)
                keyed.append((moment, rule_id, key))
        made = store.expect_aggregates(self.domain_id, list(wanted.items()))
        pairs = []
        for moment, rule_id, key in keyed:
            aggregate_id = made[key][0] if key is not None else 0
            heapq.heappush(self.due, (moment, EXPECTED, rule_id, aggregate_id))
            if aggregate_id:
                self.expected[rule_id, aggregate_id] = key
                pairs.append((rule_id, aggregate_id))
        return pairs, cut

    def _load(
        self, versions: list["_Version"], horizon: datetime, expected: set[int]
    ) -> None:
        """The statuses this step may change: of the batch's aggregates, of the
        expected keys it evaluates, and due."""
        aggregate_ids = {version.aggregate_id for version in versions} | expected
        found = sql.load_statuses(self.rules, aggregate_ids, horizon, DUE_BATCH)
        for row_id, rule_id, aggregate_id, key, first_at, state in found:
            tracked = Tracked(
                rule=self.rules[rule_id],
                aggregate_id=aggregate_id,
                aggregate=key,
                first_at=first_at,
                state=state,
                row_id=row_id,
            )
            self.tracked[rule_id, aggregate_id] = tracked
            self._schedule(tracked)

    def _schedule(self, tracked: Tracked) -> None:
        due = tracked.state.next_due_at
        if due is not None:
            key = (tracked.rule.id, tracked.aggregate_id)
            heapq.heappush(self.due, (due, DUE, *key))

    def _run_due(self, until: datetime, limit: int | None = None) -> bool:
        """Apply time-based transitions due up to `until`, in time order; True if
        more were due than `limit` allowed."""
        done = 0
        while self.due and self.due[0][0] <= until:
            if limit is not None and done >= limit:
                return True
            moment, kind, rule_id, aggregate_id = heapq.heappop(self.due)
            if kind == EXPECTED:
                done += 1
                self._expect(self.rules[rule_id], aggregate_id, moment)
                continue
            tracked = self.tracked[rule_id, aggregate_id]
            if tracked.state.next_due_at != moment:
                continue  # rescheduled since
            done += 1
            tracked.touched = True
            rule = tracked.rule
            if not rule.matches(tracked.aggregate):
                tracked.state.next_due_at = None  # the rule no longer applies
                continue

            def advance(state: State, rule=rule, tracked=tracked, moment=moment):
                # The definition may have changed (PUT) since the deadline was set.
                state.deadline = rule.deadline(tracked.aggregate, tracked.first_at)
                return evaluate.advance(rule, state, moment)

            self._evaluate(tracked, advance)
        return False

    def _expect(self, rule: CompiledRule, aggregate_id: int, moment: datetime):
        """An expected key's moment: its first evaluation, unless the rule has
        evaluated it already (a version came first); as of where the step
        stands, with the aggregate's own versions if it has some by then."""
        assert rule.expect is not None
        self.expect_next[rule.id] = moment + rule.expect.every
        if not aggregate_id or (rule.id, aggregate_id) in self.tracked:
            return
        key = self.expected[rule.id, aggregate_id]
        own = _own_version(aggregate_id, self.up_to)
        number, counts = own if own is not None else (0, {})
        as_of = VersionFacts(key, number, self.up_to, moment, "", counts, moment)
        newest = self._newest_as_of(aggregate_id, as_of) if number else {}
        tracked = Tracked(
            rule, aggregate_id, key, moment, evaluate.unevaluated(as_of, newest)
        )
        self.tracked[rule.id, aggregate_id] = tracked
        self._evaluate(
            tracked, lambda _: self._begin(rule, as_of, newest), rebuild=False
        )

    def _apply(self, row: "_Version") -> None:
        """A version, for every rule that has not evaluated it: its own aggregate,
        and the aggregates whose references to neighbours cover it, in ascending
        key order."""
        aggregate_id, version = row.aggregate_id, row.facts
        for rule in self.rules.values():
            if self.rows[rule.id].position >= version.position:
                continue  # this rule has evaluated it already
            for key, other, first_at, near in self._order(rule, aggregate_id, version):
                if other == aggregate_id:
                    self._apply_own(rule, aggregate_id, version, near)
                else:
                    self._apply_near(rule, other, key, first_at, version, near)

    def _order(
        self, rule: CompiledRule, aggregate_id: int, version: VersionFacts
    ) -> list[tuple[str, int, datetime | None, list[str]]]:
        """What a version of this aggregate and collection re-evaluates under
        `rule`, in ascending key order: (key, aggregate, its first time, the
        references that cover the version). The same for every version of a
        burst: kept for the step, as what _covering finds is."""
        cache = (rule.id, aggregate_id, version.collection)
        if cache not in self.orders:
            covering = self._covering(rule, version)
            order = [
                (key, other, first_at, [ref.key for ref in refs])
                for other, (key, first_at, refs) in covering.items()
                if other != aggregate_id and rule.matches(key)
            ]
            if rule.matches(version.aggregate):
                own = covering.get(aggregate_id, ("", None, []))[2]
                order.append(
                    (version.aggregate, aggregate_id, None, [ref.key for ref in own])
                )
            self.orders[cache] = sorted(order, key=lambda item: item[:2])
        return self.orders[cache]

    def _covering(
        self, rule: CompiledRule, version: VersionFacts
    ) -> dict[int, tuple[str, datetime, list]]:
        """The aggregates whose references of `rule` to the version's collection
        cover its aggregate; their statuses loaded."""
        refs = [ref for ref in rule.neighbours if ref.collection == version.collection]
        if not refs:
            return {}
        cache = (version.aggregate, tuple(refs))
        if cache not in self.covers:
            self.covers[cache] = neighbours.covering(
                self.domain_id, version.aggregate, refs
            )
        found = self.covers[cache]
        missing = [
            other
            for other, (key, _, _) in found.items()
            if (rule.id, other) not in self.tracked
            and (rule.id, other) not in self.looked_up
            and rule.matches(key)
        ]
        for start in range(0, len(missing), LOAD_CHUNK):
            chunk = missing[start : start + LOAD_CHUNK]
            self.looked_up.update((rule.id, other) for other in chunk)
            for row_id, rule_id, other, key, first_at, state in sql.load_statuses(
                [rule.id], chunk
            ):
                self.tracked[rule_id, other] = Tracked(
                    self.rules[rule_id], other, key, first_at, state, row_id
                )
        return found

    def _apply_own(
        self, rule: CompiledRule, aggregate_id: int, version: VersionFacts, near
    ) -> None:
        """The aggregate's own version (which its own references `near` cover)."""
        tracked = self.tracked.get((rule.id, aggregate_id))
        if tracked is not None and self._settled(tracked):
            evaluate.take(rule, tracked.state, version, near)
            return
        if tracked is not None:
            self._evaluate(
                tracked,
                lambda state: evaluate.apply(rule, state, version, near),
                version,
                before=version.position - 1,
            )
            return
        newest = self._newest_as_of(aggregate_id, version)
        tracked = Tracked(
            rule,
            aggregate_id,
            version.aggregate,
            version.first_at,
            evaluate.unevaluated(version, newest),
        )
        self.tracked[rule.id, aggregate_id] = tracked
        self._evaluate(
            tracked, lambda _: self._begin(rule, version, newest), rebuild=False
        )

    def _apply_near(
        self,
        rule: CompiledRule,
        aggregate_id: int,
        key: str,
        first_at: datetime,
        version: VersionFacts,
        near: list[str],
    ) -> None:
        """A neighbour's version, which this aggregate's references `near` cover."""
        tracked = self.tracked.get((rule.id, aggregate_id))
        if tracked is not None and self._settled(tracked):
            evaluate.take_near(tracked.state, near, version.at, version.position)
            return
        if tracked is not None:
            self._evaluate(
                tracked,
                lambda state: evaluate.touch(
                    rule, state, near, version.at, version.position
                ),
                before=version.position - 1,
            )
            return
        # Not evaluated yet (it existed before the rule): from this version on,
        # as its own would, if it had a version of its own by then.
        own = _own_version(aggregate_id, version.position)
        if own is None:
            return  # made after this version: its own first version evaluates it
        as_of = VersionFacts(
            key, own[0], version.position, version.at, "", own[1], first_at
        )
        newest = self._newest_as_of(aggregate_id, as_of)
        tracked = Tracked(
            rule, aggregate_id, key, first_at, evaluate.unevaluated(as_of, newest)
        )
        self.tracked[rule.id, aggregate_id] = tracked
        self._evaluate(
            tracked, lambda _: self._begin(rule, as_of, newest), rebuild=False
        )

    def _begin(
        self, rule: CompiledRule, version: VersionFacts, newest: dict[str, datetime]
    ) -> tuple[State, list[Happened]]:
        near = ({}, {})
        if rule.neighbours:
            near = neighbours.near_facts(
                self.domain_id, version.aggregate, rule.neighbours, version.position
            )
        return evaluate.begin(rule, version, newest, near)

    def _settled(self, tracked: Tracked) -> bool:
        """A once-rule that fired, its facts of neighbours up to date: a version
        changes its facts only (no copy, no evaluation)."""
        if not evaluate.settled(tracked.rule, tracked.state):
            return False
        if set(tracked.state.near_counts) != tracked.rule.neighbour_keys:
            return False  # stale: _evaluate counts them again
        tracked.touched = True
        return True

    def _evaluate(
        self,
        tracked: Tracked,
        evaluation: Callable[[State], list[Happened] | tuple[State, list[Happened]]],
        version: VersionFacts | None = None,
        before: int | None = None,
        rebuild: bool = True,
    ) -> None:
        """Run `evaluation` on a copy of the pair's state and keep the outcome
        (an evaluation may also answer a new state); if it fails, record why
        against the pair and keep its status as it was (with `version`'s facts:
        the next evaluation sees the aggregate as it is). Facts of references
        to neighbours that do not match the rule's (a PUT changed them, or an
        evaluation failed) are counted again first, as of `before` (the position
        before the version evaluated) or of where the step stands (`rebuild`:
        False for a first evaluation, which counts them itself)."""
        tracked.touched = True
        state = evaluate.copied(tracked.state)
        # The rule has evaluated the domain up to here: an event caused by time
        # alone carries that position (a version's own sets its own).
        state.position = max(state.position, self.up_to)
        rule = tracked.rule
        stale = set(state.near_counts) != rule.neighbour_keys
        if stale and rebuild:
            state.near_counts, state.near_newest = neighbours.near_facts(
                self.domain_id,
                tracked.aggregate,
                rule.neighbours,
                self.up_to if before is None else before,
            )
        try:
            outcome = evaluation(state)
        except DatabaseError:
            raise  # the step fails whole, and is tried again
        except Exception as exc:
            self._failed(tracked, exc, version)
            return
        if isinstance(outcome, tuple):
            state, happened = outcome
        else:
            happened = outcome
        state.error = ""
        tracked.state = state
        self._record(tracked, happened)
        self._schedule(tracked)

    def _failed(
        self, tracked: Tracked, exc: Exception, version: VersionFacts | None
    ) -> None:
        error = f"evaluating it failed: {type(exc).__name__}: {exc}"
        logger.warning(
            "rule %s, aggregate %s: %s", tracked.rule.name, tracked.aggregate, error
        )
        tracked.state.error = error[:500]
        # What neighbours added meanwhile is counted again at the next evaluation.
        tracked.state.near_counts, tracked.state.near_newest = {}, {}
        if version is not None:
            evaluate.note(tracked.state, version)
        else:
            # Time alone would fail again every second: the aggregate's next
            # version tries again.
            tracked.state.next_due_at = None
        self.failures += 1

    def _newest_as_of(
        self, aggregate_id: int, version: VersionFacts
    ) -> dict[str, datetime]:
        """An aggregate's newest source per collection as of a version, for a rule
        that meets the aggregate after its first version."""
        if version.version == 1 and version.collection:
            return {version.collection: version.at}
        key = (aggregate_id, version.version)
        if key not in self.history:
            rows = (
                Source.objects.filter(
                    aggregate_id=aggregate_id, version__number__lte=version.version
                )
                .values("collection")
                .annotate(newest=Max("version__at"))
            )
            self.history[key] = {row["collection"]: row["newest"] for row in rows}
        return dict(self.history[key])

    def _record(self, tracked: Tracked, happened: list[Happened]) -> None:
        self.happened.extend((tracked, event) for event in happened)

    def _inputs(self, tracked: Tracked, happened: Happened) -> dict[str, list]:
        """What the event used, as of its position: the aggregate's own
        collections from the event itself, neighbours' from the database."""
        inputs: dict[str, list] = {}
        near = []
        for ref in tracked.rule.references:
            if ref.neighbours:
                near.append(ref)
                continue
            count = happened.counts.get(ref.collection, 0)
            inputs[ref.key] = (
                [
                    {
                        "aggregate": tracked.aggregate,
                        "version": happened.version,
                        "count": count,
                    }
                ]
                if count
                else []
            )
        assert self.inputs is not None
        for ref in near:
            # Rules that share a reference share the same answer.
            inputs[ref.key] = self.inputs.of(tracked.aggregate, ref, happened.position)
        # In the order the references were written.
        return {ref.key: inputs[ref.key] for ref in tracked.rule.references}

    def save(self) -> list[announcements.RuleEventsCommitted]:
        """Write statuses, events and cursors; what to announce after commit."""
        sql.save_statuses(
            (tracked.row_id, tracked.rule.id, tracked.aggregate_id, tracked.state)
            for tracked in self.tracked.values()
            if tracked.touched
        )
        recorded, seqs = [], {}
        for tracked, happened in self.happened:
            rule = self.rows[tracked.rule.id]
            rule.latest_seq += 1
            seqs[rule.pk] = rule.latest_seq
            recorded.append(
                (
                    rule.pk,
                    rule.latest_seq,
                    tracked.aggregate,
                    happened.event,
                    happened.reason or "",
                    happened.version,
                    happened.position,
                    happened.late,
                    self.now,
                    self._inputs(tracked, happened),
                )
            )
        sql.save_events(recorded)
        sql.save_cursors(self.rows, self.position, seqs, self.expect_next)
        return [
            announcements.RuleEventsCommitted(self.domain, self.rows[rule_id].name, seq)
            for rule_id, seq in seqs.items()
        ]


def due_keys(
    rule: CompiledRule, first: datetime | None, horizon: datetime
) -> list[tuple[datetime, str | None]]:
    """The rule's expected moments from `first` up to `horizon`, at most
    EXPECT_BATCH, each with its key (None when it is not evaluated: outside the
    rule's prefix, or past the years a key can write)."""
    if rule.expect is None or first is None or first > horizon:
        return []
    found: list[tuple[datetime, str | None]] = []
    for moment in rule.expect.moments(first, horizon, EXPECT_BATCH):
        key = rule.expect.key(moment)
        found.append((moment, key if key is not None and rule.matches(key) else None))
    return found


def make_expected(domain_key: str, now: datetime) -> None:
    """The aggregates of the expected keys a step of the domain is about to
    evaluate, made in a transaction of their own (store.expect_aggregates says
    why); the step finds them made."""
    horizon = now - GRACE
    rules = list(Rule.objects.filter(domain__key=domain_key, expect_next__lte=horizon))
    wanted: dict[str, datetime] = {}
    for row in rules:
        for moment, key in due_keys(CompiledRule.of(row), row.expect_next, horizon):
            if key is not None:
                wanted.setdefault(key, moment)
    if wanted:
        with transaction.atomic():
            store.expect_aggregates(rules[0].domain_id, list(wanted.items()))


def _own_version(aggregate_id: int, position: int) -> tuple[int, dict] | None:
    """An aggregate's newest version (number, counts) as of a position."""
    return (
        Version.objects.filter(aggregate_id=aggregate_id, position__lte=position)
        .order_by("-number")
        .values_list("number", "counts")
        .first()
    )


@dataclass(frozen=True)
class _Version:
    aggregate_id: int
    facts: VersionFacts


def _versions(domain_key: str, domain_id: int, after: int) -> list[_Version]:
    rows = DomainVersions(domain_key).facts(domain_id, after, BATCH)
    found = []
    for position, aggregate_id, key, first_at, number, at, collection, counts in rows:
        facts = VersionFacts(key, number, position, at, collection, counts, first_at)
        found.append(_Version(aggregate_id, facts))
    return found
