"""One bad definition or key never stalls a domain's rules: dates past the last
there is, ages too large to add to a time, conditions nested too deep, and any
evaluation that fails for one (rule, aggregate)."""

import threading

import pytest
from django.db import connections
from prometheus_client import REGISTRY

from aggregates.models import Rule, RuleEvent, RuleStatus
from aggregates.rules import definition, engine
from aggregates.rules.step import Step
from tests.test_rules import RULES, brief, define, events, register

FAR = "9999-12-31T23:59:59Z"


def test_a_key_dated_at_the_end_of_time_has_no_deadline(api, domain):
    define(
        api,
        "late-c",
        "A >= 1 and B >= 1",
        deadline={"after": "30h", "from": "key_date"},
    )
    define(api, "run-a", "A >= 1")
    register(FAR, "A")
    register("2026-11-26", "A")
    engine.catch_up("c-inputs")
    assert brief(events(api, "run-a")) == [
        (FAR, "fired", "ready", 1, False),
        ("2026-11-26", "fired", "ready", 1, False),
    ]
    why = api.get(f"{RULES}/late-c/aggregates/{FAR}").json()
    assert (why["status"], why["deadline"], why["error"]) == ("waiting", None, None)
    preview = api.post(
        f"{RULES}/preview",
        {
            "name": "p",
            "when": "B >= 1",
            "deadline": {"after": "1d", "from": "key_date"},
        },
    )
    assert preview.status_code == 200, preview.text
    assert {
        row["aggregate"]: row["status"] for row in preview.json()["aggregates"]
    } == {
        FAR: "waiting",
        "2026-11-26": "late",
    }
    # Nothing is left behind: the cursors moved past every version.
    assert set(Rule.objects.values_list("position", flat=True)) == {2}


@pytest.mark.parametrize(
    ("when", "column"),
    [("age(A) < 3000000d", 10), ("A >= 1 and 3651d > age(A)", 12)],
)
def test_an_age_bound_past_ten_years_is_refused(api, domain, when, column):
    response = api.post(RULES, {"name": "r", "when": when})
    assert response.status_code == 400, response.text
    assert response.json()["fields"]["when"] == (
        "is not a condition: an age is compared with at most 3650d (ten years) "
        f"at column {column}"
    )
    assert api.post(RULES, {"name": "r", "when": "age(A) < 3650d"}).status_code == 201


def test_a_rule_accepted_before_the_bounds_still_runs(api, domain):
    """A rule stored before ages were bounded compiles as it was accepted."""
    Rule.objects.create(domain=domain, name="old", when="A >= 1 and age(A) < 5000d")
    define(api, "run-a", "A >= 1")
    register("2026-11-26", "A")
    engine.catch_up("c-inputs")
    assert brief(events(api, "old")) == [("2026-11-26", "fired", "ready", 1, False)]
    assert brief(events(api, "run-a")) == [("2026-11-26", "fired", "ready", 1, False)]


def test_conditions_nest_32_levels_and_more_but_not_without_end(api, domain):
    deep = "(" * 32 + "A >= 1" + ")" * 32
    assert api.post(RULES, {"name": "deep", "when": deep}).status_code == 201
    assert (
        api.post(RULES, {"name": "nots", "when": "not " * 32 + "A"}).status_code == 201
    )
    for when in ("(" * 200 + "A" + ")" * 200, "not " * 200 + "A"):
        response = api.post(RULES, {"name": "deeper", "when": when})
        assert response.status_code == 400, response.text
        message = response.json()["fields"]["when"]
        assert message.startswith(
            "is not a condition: nested more than 50 levels deep at column "
        ), message
    assert not Rule.objects.filter(name="deeper").exists()


def failures(domain: str) -> float:
    value = REGISTRY.get_sample_value(
        "botlnek_rule_evaluation_failures_total", {"domain": domain}
    )
    return value or 0


def test_an_evaluation_that_fails_stalls_only_its_own_pair(api, domain, monkeypatch):
    """Whatever goes wrong evaluating one (rule, aggregate) — here a deadline that
    cannot be worked out for one key — is recorded against that pair; every other
    pair, of that rule and the others, goes on, and the cursors move on."""
    deadline = definition.CompiledRule.deadline

    def broken(rule, aggregate, first_at):
        if aggregate == "bad" and rule.name == "run-c":
            raise ValueError("this key breaks the rule")
        return deadline(rule, aggregate, first_at)

    monkeypatch.setattr(definition.CompiledRule, "deadline", broken)
    define(
        api,
        "run-c",
        "A >= 1 and B >= 1",
        deadline={"after": "2d", "from": "first_source"},
    )
    define(api, "run-a", "A >= 1")
    before = failures("c-inputs")
    register("bad", "A")
    register("good", "A")
    register("bad", "B")
    register("good", "B")
    engine.catch_up("c-inputs")

    assert brief(events(api, "run-c")) == [("good", "fired", "ready", 2, False)]
    assert brief(events(api, "run-a")) == [
        ("bad", "fired", "ready", 1, False),
        ("good", "fired", "ready", 1, False),
    ]
    why = api.get(f"{RULES}/run-c/aggregates/bad").json()
    assert why["error"] == (
        "evaluating it failed: ValueError: this key breaks the rule"
    )
    # Its status as it was; its facts as they are (for the next evaluation).
    assert (why["status"], why["version"]) == ("waiting", 2)
    assert failures("c-inputs") == before + 2  # each of its versions, once
    assert set(Rule.objects.values_list("position", flat=True)) == {4}
    assert (
        RuleStatus.objects.get(aggregate__key="bad", rule__name="run-c").next_due_at
        is None
    )

    # Mended, its next version evaluates it; the error is gone.
    monkeypatch.setattr(definition.CompiledRule, "deadline", deadline)
    register("bad", "A", run="pm")
    engine.catch_up("c-inputs")
    assert brief(events(api, "run-c"))[-1] == ("bad", "fired", "ready", 3, False)
    assert api.get(f"{RULES}/run-c/aggregates/bad").json()["error"] is None
    assert RuleEvent.objects.filter(rule__name="run-c").count() == 2


@pytest.mark.postgres
def test_a_rule_created_during_a_step_skips_nothing(api, domain, monkeypatch):
    """A step moves the cursors of the rules it locked, not of one created while it
    ran (on PostgreSQL a step locks the rules' rows, not the table)."""
    define(api, "first", "A >= 1")
    for n in range(3):
        register(f"d{n}", "A")
    inside, go_on = threading.Event(), threading.Event()
    run = Step.run

    def held(self):
        more = run(self)
        inside.set()
        go_on.wait(10)
        return more

    def step() -> None:
        try:
            engine.step("c-inputs")
        finally:
            connections.close_all()

    monkeypatch.setattr(Step, "run", held)
    stepping = threading.Thread(target=step)
    stepping.start()
    try:
        assert inside.wait(10)
        define(api, "second", "A >= 1", start="history")  # while the step runs
    finally:
        go_on.set()
        stepping.join(10)
    monkeypatch.setattr(Step, "run", run)
    engine.catch_up("c-inputs")
    expected = [(f"d{n}", "fired", "ready", 1, False) for n in range(3)]
    assert brief(events(api, "first")) == expected
    assert brief(events(api, "second")) == expected
