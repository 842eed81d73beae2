"""What the rules engine recorded, and what a rule would say: listings, "why",
the event log, receipts, and the preview (the evaluator run on history, nothing
saved)."""

from collections import Counter
from datetime import datetime
from typing import Any

from django.db.models import Count, Max
from django.utils import timezone

from aggregates.conditions import Facts
from aggregates.errors import NotFound
from aggregates.models import (
    Aggregate,
    Receipt,
    Rule,
    RuleEvent,
    RuleStatus,
    Source,
    Version,
)
from aggregates.rules import evaluate, neighbours
from aggregates.rules.definition import CompiledRule, RuleIn, definition_json
from aggregates.rules.evaluate import VersionFacts
from aggregates.store.read import (
    encode_cursor,
    get_aggregate,
    get_domain,
    newest_first,
    receipt_json,
    with_prefix,
)
from aggregates.streams import event_json, get_rule
from aggregates.values import isoformat, utc

STATUS_ORDER = ["late", "waiting", "ready", "fired"]  # what needs a look first
EVENTS_PER_AGGREGATE = 100


def status_counts(rules: list[Rule]) -> dict[int, dict[str, int]]:
    rows = (
        RuleStatus.objects.filter(rule__in=rules)
        .values("rule_id", "status")
        .annotate(n=Count("id"))
    )
    counts: dict[int, dict[str, int]] = {
        rule.pk: dict.fromkeys(STATUS_ORDER, 0) for rule in rules
    }
    for row in rows:
        counts[row["rule_id"]][row["status"]] = row["n"]
    return counts


def rule_json(rule: Rule, counts: dict[str, int]) -> dict[str, Any]:
    return {**definition_json(rule), "latest_seq": rule.latest_seq, "counts": counts}


def list_rules(domain: str, *, limit: int, after: str | None) -> list[dict[str, Any]]:
    rows = Rule.objects.filter(domain=get_domain(domain)).order_by("name")
    if after is not None:
        rows = rows.filter(name__gt=after)
    rules = list(rows[:limit])
    counts = status_counts(rules)
    return [rule_json(rule, counts[rule.pk]) for rule in rules]


def read_rule(domain: str, name: str) -> dict[str, Any]:
    rule = get_rule(domain, name)
    return rule_json(rule, status_counts([rule])[rule.pk])


# Statuses


def status_json(row: RuleStatus) -> dict[str, Any]:
    return {
        "aggregate": row.aggregate.key,
        "status": row.status,
        "version": row.version,
        "deadline": isoformat(row.deadline) if row.deadline else None,
        "fired_at_version": row.fired_version,
    }


def list_statuses(
    domain: str, rule: str, *, status: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    """The aggregates a rule has evaluated, most recently changed first."""
    found = get_rule(domain, rule)
    rows = RuleStatus.objects.filter(rule=found).select_related("aggregate")
    if status:
        rows = rows.filter(status=status)
    page = list(newest_first(rows, "changed_at", cursor)[: limit + 1])
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = encode_cursor(page[-1].changed_at, page[-1].pk)
    return {
        "aggregates": [status_json(row) for row in page],
        "next_cursor": next_cursor,
    }


def statuses_of(domain: str, aggregates: list[str]) -> dict[str, dict[str, RuleStatus]]:
    """For the dashboard's matrix: aggregate key → rule name → its status."""
    rows = RuleStatus.objects.filter(
        rule__domain__key=domain, aggregate__key__in=aggregates
    ).select_related("rule", "aggregate")
    found: dict[str, dict[str, RuleStatus]] = {}
    for row in rows:
        found.setdefault(row.aggregate.key, {})[row.rule.name] = row
    return found


# Why


def why(domain: str, rule: str, aggregate: str) -> dict[str, Any]:
    """Where the rule stands for an aggregate, and every comparison evaluated now."""
    found = get_rule(domain, rule)
    target = get_aggregate(domain, aggregate)
    compiled = CompiledRule.of(found)
    if not compiled.matches(aggregate):
        raise NotFound(
            f"aggregate {aggregate!r} does not start with rule {rule!r}'s "
            f"aggregate_prefix {found.aggregate_prefix!r}"
        )
    now = timezone.now()
    row = RuleStatus.objects.filter(rule=found, aggregate=target).first()
    if row is not None:
        counts = row.counts
        newest = {name: utc(at) for name, at in row.newest.items()}
        near = (row.near_counts, {ref: utc(at) for ref, at in row.near_newest.items()})
        status, version, deadline = row.status, row.version, row.deadline
        position = row.position
    else:  # not evaluated yet: a rule that started after its last version
        counts = dict(target.counts)
        newest = newest_by_collection(target.pk, target.version)
        position = target.domain.latest_position
        near = neighbours.near_facts(
            target.domain_id, aggregate, compiled.neighbours, position
        )
        status, version = None, target.version
        deadline = compiled.deadline(aggregate, target.created_at)
    error = row.error if row is not None else ""
    note = None
    if row is None:
        note = (
            f"not evaluated yet: the rule evaluates the versions that come after "
            f"its start, and has not evaluated version {target.version} of "
            f"{aggregate!r}; status is null until it does"
        )
    elif row.version < target.version:
        note = (
            f"evaluated up to version {row.version}; version {target.version} is "
            "being evaluated (the terms below are of now)"
        )
    facts = Facts(counts, newest, now, *near)
    terms = compiled.condition.terms(facts)
    events = RuleEvent.objects.filter(rule=found, aggregate=aggregate).order_by("-seq")
    return {
        "rule": found.name,
        "aggregate": aggregate,
        "status": status,
        "version": version,
        "deadline": isoformat(deadline) if deadline else None,
        "ready": compiled.condition(facts),
        "error": error or None,
        "note": note,
        "events": [
            event_json(event, rule, domain)
            for event in reversed(events[:EVENTS_PER_AGGREGATE])
        ],
        "terms": [
            {"expr": term.expr, "value": term.value, "detail": term.detail}
            for term in terms
        ],
        # What each reference covers, as of what the rule last evaluated.
        "inputs": neighbours.inputs(
            target.domain_id, aggregate, compiled.references, position
        ),
    }


def newest_by_collection(aggregate_id: int, version: int) -> dict[str, datetime]:
    """An aggregate's newest source time per collection, as of a version."""
    rows = (
        Source.objects.filter(aggregate_id=aggregate_id, version__number__lte=version)
        .values("collection")
        .annotate(newest=Max("version__at"))
    )
    return {row["collection"]: row["newest"] for row in rows}


# Receipts of a rule's events


def rule_receipts(
    domain: str, rule: str, *, watcher: str | None, limit: int
) -> list[dict[str, Any]]:
    """Receipts carrying this rule, highest seq first."""
    found = get_rule(domain, rule)
    rows = Receipt.objects.filter(
        aggregate__domain_id=found.domain_id, rule=found.name, seq__isnull=False
    ).select_related("aggregate")
    if watcher:
        rows = rows.filter(watcher=watcher)
    return [
        receipt_json(receipt, domain, receipt.aggregate.key)
        for receipt in rows.order_by("-seq", "-id")[:limit]
    ]


# Preview: the evaluator on history, nothing saved


def preview(domain: str, definition: RuleIn, *, limit: int) -> dict[str, Any]:
    """What the rule would record for the most recently updated aggregates it
    matches, had it existed since their first versions."""
    found = get_domain(domain)
    rule = CompiledRule.of(Rule(domain=found, pk=0, **definition.fields()))
    now = timezone.now()
    recent = (
        with_prefix(Aggregate.objects.filter(domain=found), rule.prefix)
        .filter(version__gt=0)
        .order_by("-updated_at", "-id")
        .values_list("id", "key", "created_at", "updated_at")[:limit]
    )
    # The most recent of them and of the expected keys, with each one's moment.
    candidates = {
        key: (pk, created_at, updated_at) for pk, key, created_at, updated_at in recent
    }
    expected = _expected_keys(rule, definition, now, limit)
    for key, moment in expected.items():
        if key not in candidates:
            candidates[key] = (None, moment, moment)
    chosen = sorted(candidates.items(), key=lambda item: item[1][2], reverse=True)
    chosen = chosen[:limit]
    missing = [key for key, (pk, _, _) in chosen if pk is None]
    known = dict(
        Aggregate.objects.filter(domain=found, key__in=missing).values_list("key", "id")
    )
    aggregates = [
        (pk or known.get(key), key, created_at) for key, (pk, created_at, _) in chosen
    ]
    versions = (
        Version.objects.filter(aggregate_id__in=[a[0] for a in aggregates])
        .order_by("aggregate_id", "number")
        .values_list(
            "aggregate_id", "number", "position", "at", "source__collection", "counts"
        )
    )
    by_aggregate: dict[int, list[tuple]] = {}
    for row in versions:
        by_aggregate.setdefault(row[0], []).append(row)
    answers = []
    for aggregate_id, key, created_at in aggregates:
        versions = [
            VersionFacts(key, number, position, at, collection, counts, created_at)
            for _, number, position, at, collection, counts in by_aggregate.get(
                aggregate_id, []
            )
        ]
        moment = expected.get(key)
        if not versions and moment is None:
            continue
        try:
            near = _near_timeline(found.pk, key, rule)
            status, happened = _replay(rule, key, versions, near, now, moment)
        except Exception as exc:  # as the engine records it against the pair
            answers.append(
                {
                    "aggregate": key,
                    "status": "waiting",
                    "would_fire": None,
                    "error": f"evaluating it failed: {type(exc).__name__}: {exc}",
                }
            )
            continue
        fired = next((h for h in happened if h.event == RuleEvent.Kind.FIRED), None)
        answers.append(
            {
                "aggregate": key,
                "status": status,
                "would_fire": (
                    {"version": fired.version, "reason": fired.reason}
                    if fired
                    else None
                ),
            }
        )
    return {
        "aggregates": answers,
        "counts": dict(Counter(a["status"] for a in answers)),
    }


def _expected_keys(
    rule: CompiledRule, definition: RuleIn, now: datetime, limit: int
) -> dict[str, datetime]:
    """The newest `limit` keys the rule expects by now, with their moments (from
    `from`, or the current period: what it would evaluate)."""
    if rule.expect is None:
        return {}
    first = rule.expect.first(now, history=definition.start == Rule.Start.HISTORY)
    periods = max(0, (now - first) // rule.expect.every - limit + 1)
    moments = rule.expect.moments(first + periods * rule.expect.every, now, limit)
    keys = ((rule.expect.key(moment), moment) for moment in moments)
    return {key: moment for key, moment in keys if key and rule.matches(key)}


def _near_timeline(
    domain_id: int, key: str, rule: CompiledRule
) -> dict[int, tuple[datetime, list[str]]]:
    """The versions the rule's references to neighbours see from `key`: position →
    (its time, the references it adds a source to)."""
    timeline: dict[int, tuple[datetime, list[str]]] = {}
    for ref in rule.neighbours:
        ids = neighbours.covered(domain_id, key, ref)
        rows = Version.objects.filter(
            aggregate_id__in=ids, source__collection=ref.collection
        ).values_list("position", "at")
        for position, at in rows:
            timeline.setdefault(position, (at, []))[1].append(ref.key)
    return timeline


def _replay(
    rule: CompiledRule,
    key: str,
    versions: list[VersionFacts],
    near: dict[int, tuple[datetime, list[str]]],
    now: datetime,
    expected: datetime | None = None,
) -> tuple[str, list[evaluate.Happened]]:
    """An aggregate's history under the rule, up to now — from its first version
    or, when the rule expects it earlier, from that moment with no sources; then
    its own versions and its neighbours', in position order, as the engine
    applies them: its status, and what would have been recorded."""
    if expected is not None and (not versions or expected < versions[0].at):
        # Where the domain stood at that moment, as far as the rule can see.
        seen = [position for position, (at, _) in near.items() if at <= expected]
        first = VersionFacts(key, 0, max(seen, default=0), expected, "", {}, expected)
        newest: dict[str, datetime] = {}
        rest = versions
    else:
        first = versions[0]
        newest = {first.collection: first.at}
        rest = versions[1:]
    counts: dict[str, int] = {}
    near_newest: dict[str, datetime] = {}
    for position, (at, refs) in near.items():
        if position <= first.position:  # before it was evaluated: its first facts
            for ref in refs:
                counts[ref] = counts.get(ref, 0) + 1
                near_newest[ref] = max(at, near_newest.get(ref, at))
    state, happened = evaluate.begin(rule, first, newest, (counts, near_newest))
    own = {facts.position: facts for facts in rest}
    later = sorted({*own, *(p for p in near if p > first.position)})
    for position in later:
        at, refs = near.get(position, (None, []))
        if position in own:
            happened += evaluate.apply(rule, state, own[position], refs)
        else:
            happened += evaluate.touch(rule, state, refs, at, position)
    happened += evaluate.advance(rule, state, now)
    return state.status, happened
