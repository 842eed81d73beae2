"""Creating, replacing and removing rules: the one way to, for the API, the admin
and the commands alike. Each checks what the API checks, writes, and announces the
change once committed (the engine then steps the domain). The engine does the rest."""

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from aggregates import announcements
from aggregates.errors import Conflict, StoreError
from aggregates.models import Domain, Rule, RuleEvent, RuleStatus
from aggregates.rules.definition import RuleIn
from aggregates.rules.read import get_rule, read_rule
from aggregates.store.read import get_domain

# Rule names that would read as the API's own paths.
RESERVED_NAMES = {"preview"}


def check_name(name: str) -> None:
    if name in RESERVED_NAMES:
        raise StoreError(f"{name!r} is a reserved name", field="name")


def create_rule(domain: str, definition: RuleIn) -> dict:
    """A new rule. With `start: now` it evaluates what comes after the domain's
    current position; with `start: history`, everything from position 0."""
    check_name(definition.name)
    found = get_domain(domain)
    with transaction.atomic():
        position = start_position(found, definition.start)
        try:
            with transaction.atomic():
                rule = Rule.objects.create(
                    domain=found,
                    position=position,
                    expect_next=first_expected(definition, definition.start),
                    **definition.fields(),
                )
        except IntegrityError:
            raise Conflict(
                f"domain {domain!r} already has a rule named {definition.name!r}",
                field="name",
            ) from None
        announcements.on_commit(announcements.rules_changed, [domain])
    return read_rule(domain, rule.name)


def replace_rule(domain: str, name: str, definition: RuleIn) -> dict:
    """A whole new definition; the log, its seq and the statuses stay. Every status
    the rule may still change is re-examined at once under the new definition."""
    rule = get_rule(domain, name)
    if definition.name != name:
        raise Conflict(
            f"a rule's name is its identity: this is {name!r}, not "
            f"{definition.name!r} (create a new rule to use another name)",
            field="name",
        )
    fields = definition.fields()
    fields.pop("start")  # where a rule started is history
    expected = [fields[name] for name in EXPECT_FIELDS]
    if expected != [getattr(rule, name) for name in EXPECT_FIELDS]:
        # New expected keys: from the current period on (what came before is
        # history, as a PUT's `start` is).
        fields["expect_next"] = first_expected(definition, Rule.Start.NOW)
    with transaction.atomic():
        Rule.objects.filter(pk=rule.pk).update(**fields)  # the engine's lock, too
        reexamine(rule, definition.trigger)
        announcements.on_commit(announcements.rules_changed, [domain])
    return read_rule(domain, name)


EXPECT_FIELDS = ("expect_key", "expect_every_seconds", "expect_from")


def first_expected(definition: RuleIn, start: str) -> datetime | None:
    """The moment of the first expected key a rule evaluates."""
    if definition.expect is None:
        return None
    history = start == Rule.Start.HISTORY
    return definition.expect.expectation().first(timezone.now(), history=history)


def start_position(domain: Domain, start: str) -> int:
    """Where a new rule starts reading its domain: now, or from the beginning."""
    if start == Rule.Start.NOW:
        return Domain.objects.get(pk=domain.pk).latest_position
    return 0


def reexamine(rule: Rule, trigger: str) -> None:
    """After a new definition: every status the rule may still change is due now
    (a once-rule's fired aggregates stay fired)."""
    waiting = RuleStatus.objects.filter(rule=rule)
    if trigger == Rule.Trigger.ONCE:
        waiting = waiting.exclude(status=RuleStatus.Status.FIRED)
    waiting.update(next_due_at=timezone.now())


def delete_rule(domain: str, name: str) -> None:
    """The rule, its statuses and its events."""
    rule = get_rule(domain, name)
    with transaction.atomic():
        # The engine's lock first: a step in flight ends before, none starts
        # during (it would record statuses for a rule being deleted).
        rule = Rule.objects.select_for_update().filter(pk=rule.pk).first()
        if rule is None:  # deleted meanwhile
            return
        RuleStatus.objects.filter(rule=rule).delete()
        RuleEvent.objects.filter(rule=rule).delete()
        rule.delete()
        announcements.on_commit(announcements.rules_changed, [domain])
