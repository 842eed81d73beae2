"""A rule's definition: the shape users send, its checks, and the compiled form the
evaluator runs (its condition parsed, its deadline worked out per aggregate)."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregates.conditions import (
    Condition,
    ConditionError,
    Ref,
    format_duration,
    parse,
    parse_duration,
)
from aggregates.keydates import key_moment
from aggregates.models import Rule
from aggregates.rules.expect import Expectation, ExpectError, parse_from, unit_of
from aggregates.schemas import Key
from aggregates.values import KEY_CHARS, KEY_PATTERN, isoformat


def _prefix_rule(value: str) -> str:
    if value and not KEY_PATTERN.fullmatch(value):
        raise ValueError(f"must be characters from {KEY_CHARS}, or empty")
    return value


def _duration_between(low: int, high: int):
    """A check that a duration lies between `low` and `high` seconds."""

    def check(value: str) -> str:
        if not low <= parse_duration(value) <= high:
            raise ValueError(
                f"must be between {format_duration(low)} and {format_duration(high)}"
            )
        return value

    return check


def _expect_rule(parse):
    """A check that `parse` takes the value (an expectation's part)."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ExpectError as exc:
            raise ValueError(str(exc)) from None
        return value

    return check


class DeadlineIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    after: Annotated[str, AfterValidator(_duration_between(1, 366 * 86400))] = Field(
        description="a duration: 90s, 15m, 6h, 2d"
    )
    from_: Literal["first_source", "key_date"] = Field(alias="from")


class ExpectIn(BaseModel):
    """Expected keys: the pattern's key for `from`, `from + every`, …"""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    every: Annotated[str, AfterValidator(_duration_between(60, 366 * 86400))] = Field(
        description="a duration of at least 1m: 1d, 6h, 15m"
    )
    key: Annotated[str, AfterValidator(_expect_rule(unit_of))] = Field(
        max_length=200,
        description="a strftime pattern holding %Y-%m-%d, optionally followed by "
        "T%H:%M, :%S and Z, between key characters",
    )
    from_: Annotated[str, AfterValidator(_expect_rule(parse_from))] | None = Field(
        None,
        alias="from",
        description="an ISO date or datetime (default: the start of the current "
        "period)",
    )

    def expectation(self) -> Expectation:
        start = parse_from(self.from_) if self.from_ is not None else None
        return Expectation(
            self.key, timedelta(seconds=parse_duration(self.every)), start
        )

    @model_validator(mode="after")
    def _bounds(self) -> "ExpectIn":
        try:
            self.expectation().check(datetime.now(UTC))
        except ExpectError as exc:
            raise ValueError(str(exc)) from None
        return self


class RuleIn(BaseModel):
    """A rule's whole definition (POST and PUT)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Key
    when: str = Field(min_length=1, max_length=1000)
    trigger: Literal["once", "every"] = "once"
    aggregate_prefix: Annotated[str, AfterValidator(_prefix_rule)] = Field(
        "", max_length=200
    )
    deadline: DeadlineIn | None = None
    # After `deadline`: its check reads the deadline.
    fallback: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="what the rule settles for at its deadline, and after it",
    )
    on_deadline: Literal["late", "fire"] = "late"
    start: Literal["now", "history"] = "now"
    expect: ExpectIn | None = None

    @field_validator("when", "fallback")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        try:
            if value is not None:
                parse(value)
        except ConditionError as exc:
            raise ValueError(f"is not a condition: {exc}") from None
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback_needs_a_deadline(cls, value: str | None, info: ValidationInfo):
        if value is not None and info.data.get("deadline") is None:
            raise ValueError(
                "a fallback is what the rule settles for at its deadline: give a "
                "deadline too"
            )
        return value

    @field_validator("expect")
    @classmethod
    def _expected_keys_count_from_their_date(
        cls, value: ExpectIn | None, info: ValidationInfo
    ) -> ExpectIn | None:
        deadline = info.data.get("deadline")
        if value is not None and deadline and deadline.from_ != "key_date":
            raise ValueError(
                "with expect, the deadline counts from key_date (an expected key "
                "may have no first source)"
            )
        return value

    def fields(self) -> dict[str, Any]:
        """The model fields this definition sets."""
        deadline = self.deadline
        return {
            "name": self.name,
            "when": self.when,
            "fallback": self.fallback or "",
            "trigger": self.trigger,
            "aggregate_prefix": self.aggregate_prefix,
            "deadline_seconds": parse_duration(deadline.after) if deadline else None,
            "deadline_from": deadline.from_ if deadline else "",
            "on_deadline": self.on_deadline,
            "start": self.start,
            "expect_key": self.expect.key if self.expect else "",
            "expect_every_seconds": (
                parse_duration(self.expect.every) if self.expect else None
            ),
            "expect_from": (self.expect.expectation().start if self.expect else None),
        }


def definition_json(rule: Rule) -> dict[str, Any]:
    """A rule as the API answers it (without its counts)."""
    deadline = None
    if rule.deadline_seconds is not None:
        deadline = {
            "after": _duration_text(rule.deadline_seconds),
            "from": rule.deadline_from,
        }
    return {
        "name": rule.name,
        "when": rule.when,
        "fallback": rule.fallback or None,
        "trigger": rule.trigger,
        "aggregate_prefix": rule.aggregate_prefix,
        "deadline": deadline,
        "on_deadline": rule.on_deadline,
        "start": rule.start,
        "expect": expect_json(rule),
        "created_at": isoformat(rule.created_at),
    }


def expect_json(rule: Rule) -> dict[str, Any] | None:
    if not rule.expect_key or rule.expect_every_seconds is None:
        return None
    found = {
        "every": _duration_text(rule.expect_every_seconds),
        "key": rule.expect_key,
    }
    if rule.expect_from is not None:
        found["from"] = isoformat(rule.expect_from)
    return found


def expectation(rule: Rule) -> Expectation | None:
    if not rule.expect_key or rule.expect_every_seconds is None:
        return None
    return Expectation(
        rule.expect_key,
        timedelta(seconds=rule.expect_every_seconds),
        rule.expect_from,
    )


def _duration_text(seconds: int) -> str:
    """The largest whole unit: 30h stays 30h, 86400 s reads 1d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class CompiledRule:
    """What the evaluator needs of a rule, parsed once."""

    id: int
    name: str
    condition: Condition
    fallback: Condition | None
    every: bool
    prefix: str
    deadline_after: timedelta | None
    deadline_from: str
    fire_at_deadline: bool
    expect: Expectation | None = None

    @classmethod
    def of(cls, rule: Rule) -> "CompiledRule":
        after = rule.deadline_seconds
        return cls(
            id=rule.pk,
            name=rule.name,
            # A stored rule compiles as it was accepted, bounds or not.
            condition=parse(rule.when, bounded=False),
            fallback=parse(rule.fallback, bounded=False) if rule.fallback else None,
            every=rule.trigger == Rule.Trigger.EVERY,
            prefix=rule.aggregate_prefix,
            deadline_after=timedelta(seconds=after) if after is not None else None,
            deadline_from=rule.deadline_from,
            fire_at_deadline=rule.on_deadline == Rule.OnDeadline.FIRE,
            expect=expectation(rule),
        )

    def matches(self, aggregate: str) -> bool:
        return aggregate.startswith(self.prefix)

    @cached_property
    def conditions(self) -> list[Condition]:
        """`when`, then the fallback if there is one."""
        return [self.condition] + ([self.fallback] if self.fallback else [])

    @cached_property
    def references(self) -> list[Ref]:
        """Every distinct reference of `when` and the fallback, as first written."""
        refs = (ref for condition in self.conditions for ref in condition.references)
        return list(dict.fromkeys(refs))

    @cached_property
    def neighbours(self) -> list[Ref]:
        """The references to other aggregates (`B@-1d`, `A@-2d..0d`)."""
        return [ref for ref in self.references if ref.neighbours]

    @cached_property
    def neighbour_keys(self) -> set[str]:
        return {ref.key for ref in self.neighbours}

    def deadline(self, aggregate: str, first_at: datetime) -> datetime | None:
        """The aggregate's deadline; None without one, or when it would fall
        past the last date there is (a key dated 9999-12-31 counts as no date)."""
        if self.deadline_after is None:
            return None
        base = first_at
        if self.deadline_from == Rule.DeadlineFrom.KEY_DATE:
            base = key_moment(aggregate)
            if base is None:
                return None
        try:
            return base + self.deadline_after
        except OverflowError:
            return None
