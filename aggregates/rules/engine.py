"""The rules engine: a durable consumer of each domain's positions, and a clock.

step(domain) is one transaction on PostgreSQL. It locks every rule of the domain
(FOR UPDATE NOWAIT: a step already running elsewhere is left to finish the work),
reads the versions after the rules' cursors (`Rule.position`) in position order,
and for each applies first the time-based transitions due before it (across the
domain's aggregates, in time order; an expected key's first evaluation at its
moment is one), then the version itself to every rule that matches. Caught up,
it applies what the clock has made due (`RuleStatus.next_due_at`, an index, and
each rule's next expected key, `Rule.expect_next`; never a scan of every
aggregate or key). Events get the next `seq` of their rule, and cursors,
statuses and events are written in the same transaction: a step that fails
records nothing and moves no cursor, and one that commits is never redone. Why
it can neither skip nor double-record: positions become visible in order (the
domain's write lock is held to commit), so the versions after a cursor are read
without gaps; the rule rows' lock admits one step per domain at a time; and the
unique (rule, seq) constraint is the last line of defence.

On SQLite, whose write lock every writer of the database waits for, a step reads
and evaluates first, outside any transaction (plan), and then, under the write
lock, writes what it found only if the domain's rules are exactly as it read
them — their cursors included, so a step elsewhere, a PUT or a DELETE makes it
start again (commit). What it read can have changed in no other way: only steps
write statuses and events, and versions after the cursor only add to what a
later step reads (a prune deleting an aggregate meanwhile fails the step, which
is then done again).

An evaluation that fails for one (rule, aggregate) — a bug, a date past the last
there is — is recorded against that pair (its `error`, shown by "why", and a
metric) and leaves its status as it was; the step goes on with every other pair
and moves the cursors on, so one bad key never stalls a domain. The pair is tried
again at its next version.

Each server process runs an Engine (on a streams.Runner): it steps a domain soon
after a commit there (and coalesces bursts), and every CLOCK_SECONDS looks for
domains whose rules are behind or have something due, so a transition is
recorded within a few seconds of its moment, and whatever fell due while no
server ran is recorded as soon as one does.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from aggregates import announcements, db, metrics
from aggregates.models import Rule, RuleStatus
from aggregates.rules.step import GRACE, Step, make_expected
from aggregates.streams import Runner

logger = logging.getLogger("botlnek.rules")

# A commit is followed by a step this much later, so that the versions of a burst
# share one step (most of a step's cost is per step, not per version).
STEP_DELAY = 0.2
CLOCK_SECONDS = 1.0
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's answer to FOR UPDATE NOWAIT


def step(domain_key: str, now: datetime | None = None) -> bool:
    """One step of the domain's rules; True when there is more to do at once."""
    now = now or timezone.now()
    make_expected(domain_key, now)
    if connection.vendor == "sqlite":
        return commit(plan(domain_key, now))
    with transaction.atomic():
        rules = _lock_rules(domain_key)
        if rules is None:
            return False  # another process is stepping this domain
        if not rules:
            return False
        work = Step(rules, now)
        more = work.run()
        _save(domain_key, work)
    return more


# On SQLite a step reads and evaluates outside the write lock (which every
# writer of the database waits for) and takes it only to write what it found,
# if the rules are as it read them; else it is done again.


@dataclass
class Planned:
    domain: str
    work: Step
    more: bool
    rules: list[tuple]  # the rules' rows as the step read them


RULE_FIELDS = [field.attname for field in Rule._meta.concrete_fields]


def plan(domain_key: str, now: datetime) -> Planned | None:
    """A step, read and evaluated, not written (SQLite)."""
    rules = list(
        Rule.objects.filter(domain__key=domain_key)
        .select_related("domain")
        .order_by("id")
    )
    if not rules:
        return None
    work = Step(rules, now)
    more = work.run()
    return Planned(domain_key, work, more, _rows(rules))


def commit(planned: Planned | None) -> bool:
    """Write what a planned step found, under the write lock, unless a rule
    changed meanwhile (a PUT, a DELETE, a step elsewhere): then True, to step
    again at once."""
    if planned is None:
        return False
    with transaction.atomic():
        current = Rule.objects.filter(domain__key=planned.domain).order_by("id")
        if _rows(list(current)) != planned.rules:
            return True
        _save(planned.domain, planned.work)
    return planned.more


def _rows(rules: list[Rule]) -> list[tuple]:
    return [tuple(getattr(rule, name) for name in RULE_FIELDS) for rule in rules]


def _save(domain_key: str, work: Step) -> None:
    """Write a step's outcome (inside its transaction), announced once
    committed."""
    committed = work.save()
    recorded = [happened.event for _, happened in work.happened]
    if committed or work.failures:
        transaction.on_commit(
            lambda: _announce(domain_key, committed, recorded, work.failures)
        )


def _announce(
    domain: str,
    committed: list[announcements.RuleEventsCommitted],
    recorded: list[str],
    failures: int,
) -> None:
    metrics.rule_events_recorded(domain, recorded)
    metrics.rule_evaluations_failed(domain, failures)
    if committed:
        announcements.rule_events_committed.send(committed)


def _lock_rules(domain_key: str) -> list[Rule] | None:
    rules = Rule.objects.filter(domain__key=domain_key).select_related("domain")
    rules = rules.order_by("id")
    if connection.features.has_select_for_update_nowait:
        rules = rules.select_for_update(nowait=True, of=("self",))
    try:
        with transaction.atomic():  # a savepoint: a refused lock spoils nothing
            return list(rules)
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return None  # locked: the step running elsewhere does the work
        raise


# Which domains have work, for the clock.


def domains_with_work(now: datetime | None = None) -> list[str]:
    """Domains whose rules are behind their positions, or have something due
    (a status's transition, an expected key's moment)."""
    horizon = (now or timezone.now()) - GRACE
    behind = Rule.objects.filter(
        Q(position__lt=F("domain__latest_position")) | Q(expect_next__lte=horizon)
    )
    due = RuleStatus.objects.filter(next_due_at__lte=horizon)
    keys = set(behind.values_list("domain__key", flat=True))
    keys |= set(due.values_list("rule__domain__key", flat=True).distinct())
    return sorted(keys)


def domains_with_rules() -> set[str]:
    return set(Rule.objects.values_list("domain__key", flat=True).distinct())


def catch_up(domain_key: str, now: datetime | None = None) -> None:
    """Step until nothing is left to do now (commands and tests)."""
    while step(domain_key, now):
        pass


class Engine:
    """A process's rules engine: steps domains after commits and on the clock
    (a streams.Runner keyed by domain)."""

    def __init__(self) -> None:
        self.ruled: set[str] = set()
        self.steps: Runner[str] = Runner(
            "rules",
            self._step,
            self._look,
            every=CLOCK_SECONDS,
            again=True,
            delay=STEP_DELAY,
        )

    def versions_committed(self, committed: Sequence[announcements.VersionCommitted]):
        """After a commit (on the writer's thread): step the domains with rules."""
        for domain in {version.domain for version in committed}:
            if domain in self.ruled:
                self.steps.poke_threadsafe(domain)

    def rules_changed(self, domains: Sequence[str]) -> None:
        """After a commit of rules (on the writer's thread): step those domains from
        now on, and now."""
        self.ruled.update(domains)
        if self.steps.started:
            for domain in domains:
                self.steps.poke_threadsafe(domain)

    async def _step(self, domain: str) -> bool:
        now = timezone.now()
        if connection.vendor != "sqlite":
            return await db.write(step, domain, now)
        # The reading and evaluating on a reader thread: the writer's thread
        # (and SQLite's write lock) only for what writes.
        await db.write(make_expected, domain, now)
        return await db.write(commit, await db.read(plan, domain, now))

    async def _look(self) -> list[str]:
        self.ruled = await db.read(domains_with_rules)
        return await db.read(domains_with_work)

    async def clock(self) -> None:
        await self.steps.clock()


engine = Engine()
