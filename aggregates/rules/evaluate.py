"""The rule evaluator: a pure state machine per (rule, aggregate), no database.

The engine (engine.py) runs it on every version in position order and on the clock;
preview and "why" run the very same code on history, so what they say is what the
engine records. Time inside a status only moves forward: `advance` applies the
moments at which time alone changes the outcome (an age() bound crossed, the
deadline) up to a given time; a version is applied at its own time, after them.

    once:  waiting ──(deadline)──▶ late ──(ready)──▶ fired      (fired for good)
           waiting ──────────────(ready)───────────▶ fired
    every: fires at each version at which the condition holds, and whenever it
           becomes true by time alone; its status is ready while it holds.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from aggregates.conditions import Facts
from aggregates.models import RuleEvent, RuleStatus
from aggregates.rules.definition import CompiledRule

Status = RuleStatus.Status


@dataclass
class State:
    """What a RuleStatus row holds."""

    status: str
    version: int
    position: int
    counts: dict[str, int]
    newest: dict[str, datetime]
    deadline: datetime | None
    evaluated_at: datetime
    changed_at: datetime
    was_ready: bool = False
    late: bool = False
    fired_version: int | None = None
    next_due_at: datetime | None = None
    error: str = ""  # why its last evaluation failed, if it did
    # Facts of references to neighbours, by the reference as written.
    near_counts: dict[str, int] = field(default_factory=dict)
    near_newest: dict[str, datetime] = field(default_factory=dict)


def unevaluated(version: "VersionFacts", newest: dict[str, datetime]) -> State:
    """A pair whose first evaluation failed: waiting, with the aggregate's facts as
    of that version (`newest`: its newest source time per collection)."""
    return State(
        status=Status.WAITING,
        version=version.version,
        position=version.position,
        counts=dict(version.counts),
        newest=dict(newest),
        deadline=None,
        evaluated_at=version.at,
        changed_at=version.at,
    )


def note(state: State, version: "VersionFacts") -> None:
    """Keep a version's facts without evaluating it (its evaluation failed): the
    next evaluation sees the aggregate as it is."""
    state.version, state.position = version.version, version.position
    state.counts = dict(version.counts)
    state.newest[version.collection] = version.at


def copied(state: State) -> State:
    """A copy to evaluate on: the original stays as it was if evaluating fails."""
    # Written out: dataclasses.replace costs more than the evaluation.
    return State(
        state.status,
        state.version,
        state.position,
        dict(state.counts),
        dict(state.newest),
        state.deadline,
        state.evaluated_at,
        state.changed_at,
        state.was_ready,
        state.late,
        state.fired_version,
        state.next_due_at,
        state.error,
        dict(state.near_counts),
        dict(state.near_newest),
    )


@dataclass(frozen=True)
class VersionFacts:
    """One version of an aggregate, as the evaluator sees it."""

    aggregate: str
    version: int
    position: int
    at: datetime
    collection: str
    counts: dict[str, int]
    first_at: datetime  # the aggregate's first version's time


@dataclass(frozen=True)
class Happened:
    """An event to record in the rule's log."""

    event: str
    reason: str | None
    version: int
    position: int
    late: bool
    moment: datetime = field(compare=False)
    # The aggregate's own counts when it happened (its inputs, without a query).
    counts: dict[str, int] = field(default_factory=dict, compare=False)


def begin(
    rule: CompiledRule,
    version: VersionFacts,
    newest: dict[str, datetime],
    near: tuple[dict[str, int], dict[str, datetime]] = ({}, {}),
) -> tuple[State, list[Happened]]:
    """The first version of an aggregate this rule evaluates; `newest` holds the
    aggregate's newest source time per collection as of this version, `near` the
    facts of the rule's references to neighbours as of its position."""
    state = State(
        status=Status.WAITING,
        version=version.version,
        position=version.position,
        counts=dict(version.counts),
        newest=dict(newest),
        deadline=rule.deadline(version.aggregate, version.first_at),
        evaluated_at=version.at,
        changed_at=version.at,
        near_counts=dict(near[0]),
        near_newest=dict(near[1]),
    )
    happened = _evaluate(rule, state, version.at, by_version=True)
    state.next_due_at = next_due(rule, state)
    return state, happened


def apply(
    rule: CompiledRule, state: State, version: VersionFacts, near: Iterable[str] = ()
) -> list[Happened]:
    """A later version of the aggregate: time up to it first, then the version
    (which the references `near` of this aggregate cover too)."""
    happened = advance(rule, state, version.at)
    moment = take(rule, state, version, near)
    happened += _evaluate(rule, state, moment, by_version=True)
    state.next_due_at = next_due(rule, state)
    return happened


def settled(rule: CompiledRule, state: State) -> bool:
    """A once-rule that fired: versions change its facts, never its outcome (the
    engine takes them with take() and take_near(), and evaluates nothing)."""
    return not rule.every and state.status == Status.FIRED


def take(
    rule: CompiledRule, state: State, version: VersionFacts, near: Iterable[str] = ()
) -> datetime:
    """A later version's facts, without evaluating; the moment it is taken at."""
    moment = max(version.at, state.evaluated_at)  # time never runs back
    state.version, state.position = version.version, version.position
    state.counts = dict(version.counts)
    state.newest[version.collection] = version.at
    _add_near(state, near, version.at)
    state.deadline = rule.deadline(version.aggregate, version.first_at)
    state.evaluated_at = state.changed_at = moment
    return moment


def touch(
    rule: CompiledRule, state: State, near: Iterable[str], at: datetime, position: int
) -> list[Happened]:
    """A neighbour's version, at `position`, adds a source to the references
    `near` of this aggregate: time up to it first, then evaluated as time is (an
    `every` rule fires only if the condition turns true); events carry `position`
    and the aggregate's own newest version."""
    happened = advance(rule, state, at)
    moment = take_near(state, near, at, position)
    happened += _evaluate(rule, state, moment, by_version=False)
    state.next_due_at = next_due(rule, state)
    return happened


def take_near(
    state: State, near: Iterable[str], at: datetime, position: int
) -> datetime:
    """A neighbour's version's facts, without evaluating; the moment taken at."""
    moment = max(at, state.evaluated_at)
    _add_near(state, near, at)
    state.position = position
    state.evaluated_at = moment
    return moment


def _add_near(state: State, near: Iterable[str], at: datetime) -> None:
    for ref in near:
        state.near_counts[ref] = state.near_counts.get(ref, 0) + 1
        newest = state.near_newest.get(ref)
        state.near_newest[ref] = at if newest is None else max(newest, at)


def advance(rule: CompiledRule, state: State, until: datetime) -> list[Happened]:
    """Apply every moment up to `until` at which time alone changes the outcome."""
    if state.next_due_at is None or state.next_due_at > until:
        # Nothing due (next_due_at is kept whenever the state changes).
        state.evaluated_at = max(state.evaluated_at, until)
        return []
    happened: list[Happened] = []
    while (moment := next_due(rule, state)) is not None and moment <= until:
        state.evaluated_at = moment
        happened += _evaluate(rule, state, moment, by_version=False)
    state.evaluated_at = max(state.evaluated_at, until)
    state.next_due_at = next_due(rule, state)
    return happened


def next_due(rule: CompiledRule, state: State) -> datetime | None:
    """The next moment after `evaluated_at` at which time alone may change the
    outcome; None when nothing ever will."""
    if not rule.every and state.status == Status.FIRED:
        return None
    known = facts(state, state.evaluated_at)
    moments = [m for condition in rule.conditions for m in condition.changes(known)]
    if state.deadline is not None and not state.late and state.fired_version is None:
        moments.append(state.deadline)
    return min((m for m in moments if m > state.evaluated_at), default=None)


def ready(rule: CompiledRule, state: State, now: datetime) -> bool:
    return rule.condition(facts(state, now))


def facts(state: State, now: datetime) -> Facts:
    return Facts(state.counts, state.newest, now, state.near_counts, state.near_newest)


def _evaluate(
    rule: CompiledRule, state: State, moment: datetime, *, by_version: bool
) -> list[Happened]:
    """The outcome at `moment`: `when` holds, or from the deadline on the
    fallback does; else, the deadline passing before either held is late."""
    if not rule.every and state.status == Status.FIRED:
        return []
    known = facts(state, moment)
    overdue = state.deadline is not None and moment >= state.deadline
    is_ready = rule.condition(known)
    settles = (
        not is_ready and overdue and rule.fallback is not None and rule.fallback(known)
    )
    holds = is_ready or settles
    happened = []
    if holds and (by_version or not state.was_ready or not rule.every):
        reason = RuleEvent.Reason.READY if is_ready else RuleEvent.Reason.FALLBACK
        happened.append(_event(state, RuleEvent.Kind.FIRED, reason, overdue, moment))
        state.fired_version = state.version
        _set(state, Status.READY if rule.every else Status.FIRED, moment)
    elif not holds and overdue and not state.late and state.fired_version is None:
        state.late = True  # the deadline passed before it was ever ready
        if rule.fire_at_deadline:
            happened.append(
                _event(state, RuleEvent.Kind.FIRED, "deadline", True, moment)
            )
            state.fired_version = state.version
            _set(state, Status.LATE if rule.every else Status.FIRED, moment)
        else:
            happened.append(_event(state, RuleEvent.Kind.LATE, None, True, moment))
            _set(state, Status.LATE, moment)
    elif not holds and rule.every:
        _set(state, Status.LATE if state.late else Status.WAITING, moment)
    state.was_ready = holds
    return happened


def _set(state: State, status: str, moment: datetime) -> None:
    if state.status != status:
        state.status = status
        state.changed_at = moment


def _event(
    state: State, event: str, reason: str | None, late: bool, moment: datetime
) -> Happened:
    return Happened(
        event, reason, state.version, state.position, late, moment, dict(state.counts)
    )
