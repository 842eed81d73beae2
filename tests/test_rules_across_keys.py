"""Rules across keys: references to neighbouring aggregates by key date, the
re-evaluation a neighbour's version causes, and the inputs an event names (the
engine step by step, in process)."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from aggregates.models import RuleStatus
from aggregates.rules import engine
from tests.test_rules import RULES, brief, define, events, register

D, D1, D2, D3 = "2026-11-26", "2026-11-25", "2026-11-24", "2026-11-23"


def step() -> None:
    engine.catch_up("c-inputs")


def inputs(event: dict) -> dict:
    return {
        ref: [(i["aggregate"], i["version"], i["count"]) for i in covered]
        for ref, covered in event["inputs"].items()
    }


def test_the_seed_consumer_uses_a_recent_a_and_todays_or_yesterdays_b(api, domain):
    """C needs some A of D-2..D, and D's B or D-1's B."""
    define(api, when="A@-2d..0d >= 1 and (B >= 1 or B@-1d >= 1)")
    register(D, "A")
    step()
    assert events(api) == []  # no B anywhere yet

    register(D1, "B")  # yesterday's B: D fires now, D-1 has no A in D-3..D-1
    step()
    (fired,) = events(api)
    assert brief([fired]) == [(D, "fired", "ready", 1, False)]
    assert fired["position"] == 2  # the B's version caused it
    assert inputs(fired) == {
        "A@-2d..0d": [(D, 1, 1)],
        "B": [],
        "B@-1d": [(D1, 1, 1)],
    }

    register(D, "B")  # a later B into D does not fire D again (once)
    step()
    assert len(events(api)) == 1

    register(D2, "A")  # now D-1 has an A within D-3..D-1
    step()
    later = events(api, after_seq=1)
    assert brief(later) == [(D1, "fired", "ready", 1, False)]
    assert inputs(later[0])["A@-2d..0d"] == [(D2, 1, 1)]
    assert RuleStatus.objects.get(aggregate__key=D2).status == "waiting"


def test_hourly_keys_shift_in_their_own_shape(api, domain):
    define(api, when="A and A@-1h")
    register("2026-11-26T04:00Z", "A")
    register("2026-11-26T05:00", "A")  # another shape: not a neighbour
    step()
    assert events(api) == []
    register("2026-11-26T05:00Z", "A")
    step()
    (fired,) = events(api)
    assert fired["aggregate"] == "2026-11-26T05:00Z"
    assert inputs(fired)["A@-1h"] == [("2026-11-26T04:00Z", 1, 1)]


def test_a_neighbours_version_re_evaluates_every_key_whose_window_covers_it(
    api, domain
):
    """Events one version causes are recorded in ascending key order."""
    define(api, when="B and A@-1d..+1d")
    for key in (D3, D2, D1, D):
        register(key, "B")
    step()
    assert events(api) == []
    register(D2, "A")  # covered by the windows of D-3, D-2 and D-1
    step()
    assert [e["aggregate"] for e in events(api)] == [D3, D2, D1]
    assert {e["position"] for e in events(api)} == {5}


def test_every_fires_on_a_neighbour_only_when_the_condition_turns_true(api, domain):
    define(api, name="each", when="B and A@-1d", trigger="every")
    register(D, "B")
    register(D1, "A", run="am")  # turns true: fires
    register(D1, "A", run="pm")  # leaves it true: nothing
    register(D, "B", run="again")  # its own version, true: fires (as in §9)
    step()
    assert brief(events(api, "each")) == [
        (D, "fired", "ready", 1, False),
        (D, "fired", "ready", 2, False),
    ]


def test_a_key_without_a_date_has_no_neighbours(api, domain):
    define(api, when="A@-1d..0d >= 1 or B")
    register("no-date", "A")
    step()
    assert events(api) == []
    register("no-date", "B")
    step()
    (fired,) = events(api)
    assert inputs(fired) == {"A@-1d..0d": [], "B": [("no-date", 2, 1)]}


def test_start_now_meets_an_older_aggregate_through_its_neighbour(api, domain):
    """An aggregate made before the rule is evaluated from the first later version
    that re-evaluates it, its own or a neighbour's; references see every source."""
    register(D, "B")
    register(D1, "A", run="am")
    define(api, when="B and A@-1d >= 2")
    step()
    assert events(api) == []
    register(D1, "A", run="pm")
    step()
    (fired,) = events(api)
    assert brief([fired]) == [(D, "fired", "ready", 1, False)]
    assert inputs(fired)["A@-1d"] == [(D1, 2, 2)]


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("B and A@-1d", "A@-1d = 1"),
        ("B and count(A@-2d..0d) >= 2", "count(A@-2d..0d) = 1"),
        ("B and age(A@-1d) < 1h", "age(A@-1d) = "),
    ],
)
def test_why_explains_neighbour_terms_and_names_the_inputs(api, domain, text, detail):
    define(api, when=text)
    register(D1, "A")
    register(D, "B")
    step()
    why = api.get(f"{RULES}/run-c/aggregates/{D}").json()
    assert why["terms"][1]["detail"].startswith(detail)
    assert why["terms"][1]["detail"] != f"{detail}∞"
    ref = text.split(" and ")[1].split("(")[-1].split(")")[0].split(" ")[0]
    assert [(i["aggregate"], i["count"]) for i in why["inputs"][ref]] == [(D1, 1)]


# The fallback: what the rule settles for at its deadline, and after it. Versions
# are stamped when they commit, so these days lie ahead: every source arrives
# before their deadlines, and the engine is stepped at given moments.

SEED = {
    "when": "A@-2d..0d >= 1 and B >= 1",
    "fallback": "A@-2d..0d >= 1 and B@-1d >= 1",
    "deadline": {"after": "20h", "from": "key_date"},
}


def ahead(days: int) -> str:
    return (timezone.now() + timedelta(days=days)).strftime("%Y-%m-%d")


F, F1, F3 = ahead(3), ahead(2), ahead(0)
DEADLINE = datetime.fromisoformat(F + "T20:00:00+00:00")


def of_day(found: list[dict], *days: str) -> list[dict]:
    return [event for event in found if event["aggregate"] in days]


def step_at(moment: datetime) -> None:
    engine.catch_up("c-inputs", now=moment)


def test_the_fallback_fires_at_the_deadline_never_before(api, domain):
    define(api, **SEED)
    register(F1, "B")
    register(F, "A")
    step_at(DEADLINE - timedelta(hours=1))
    assert of_day(events(api), F) == []  # yesterday's B: only from the deadline
    step_at(DEADLINE + timedelta(seconds=2))
    (fired,) = of_day(events(api), F)
    assert brief([fired]) == [(F, "fired", "fallback", 1, True)]
    assert inputs(fired)["B@-1d"] == [(F1, 1, 1)]


def test_neither_holds_late_then_either_fires_late(api, domain):
    define(api, **SEED)
    register(F, "A")
    step_at(DEADLINE + timedelta(seconds=2))
    assert brief(of_day(events(api), F)) == [(F, "late", None, 1, True)]
    register(F, "B")  # today's B, after the deadline: when holds
    step_at(DEADLINE + timedelta(hours=1))
    assert brief(of_day(events(api), F)) == [
        (F, "late", None, 1, True),
        (F, "fired", "ready", 2, True),
    ]


def test_late_then_the_fallback_fires_with_its_reason(api, domain):
    define(api, name="fb", **SEED)
    register(F, "A")
    step_at(DEADLINE + timedelta(seconds=2))
    register(F1, "B")  # yesterday's B arrives after the deadline
    step_at(DEADLINE + timedelta(hours=1))
    assert brief(of_day(events(api, "fb"), F)) == [
        (F, "late", None, 1, True),
        (F, "fired", "fallback", 1, True),
    ]


def test_on_deadline_fire_says_fallback_when_it_holds(api, domain):
    define(api, name="anyway", on_deadline="fire", **SEED)
    register(F1, "B")
    register(F, "A")
    register(F3, "A")  # three days earlier: no B near it, nothing holds
    step_at(DEADLINE + timedelta(seconds=2))
    assert sorted(brief(of_day(events(api, "anyway"), F3, F))) == [
        (F3, "fired", "deadline", 1, True),
        (F, "fired", "fallback", 1, True),
    ]


@pytest.mark.parametrize(
    ("definition", "field", "says"),
    [
        ({"fallback": "A and B@-1d"}, "fallback", "give a deadline too"),
        (
            {**SEED, "fallback": "A and B@-1d.."},
            "fallback",
            "at column 8",
        ),
        ({"when": "A@ >= 1"}, "when", "at column 2"),
    ],
)
def test_bad_references_and_fallbacks_are_400_naming_the_field(
    api, domain, definition, field, says
):
    response = api.post(RULES, {"name": "bad", "when": "A", **definition})
    assert response.status_code == 400, response.text
    assert says in response.json()["fields"][field]
    assert api.get(RULES).json()["rules"] == []


def test_preview_of_neighbours_equals_what_start_history_records(api, domain):
    days = [ahead(n) for n in range(-4, 3)]
    for n, day in enumerate(days):
        if n % 3 != 1:
            register(day, "A")
        if n % 2:
            register(day, "B")
    definition = {
        "name": "replay",
        "when": "A@-2d..0d >= 1 and B >= 1",
        "fallback": "A@-2d..0d >= 1 and B@-1d >= 1",
        "deadline": {"after": "20h", "from": "key_date"},
        "start": "history",
    }
    preview = api.post(f"{RULES}/preview", definition).json()["aggregates"]
    define(api, **definition)
    step()
    statuses = {
        row["aggregate"]: row["status"]
        for row in api.get(f"{RULES}/replay/aggregates").json()["aggregates"]
    }
    fired = {}
    for event in events(api, "replay"):
        if event["event"] == "fired":
            fired.setdefault(event["aggregate"], event)
    assert {row["aggregate"]: row["status"] for row in preview} == statuses
    assert {
        row["aggregate"]: row["would_fire"] for row in preview if row["would_fire"]
    } == {
        key: {"version": event["version"], "reason": event["reason"]}
        for key, event in fired.items()
    }
    # Neighbours made the difference: day 1 has no A of its own (day 0's is in
    # its window), day 2 no B (it settles for day 1's at its deadline).
    assert fired[days[1]]["reason"] == "ready"
    assert inputs(fired[days[1]])["A@-2d..0d"] == [(days[0], 1, 1)]
    assert fired[days[2]]["reason"] == "fallback"


def test_an_aggregate_made_mid_step_is_covered_from_then_on(api, domain):
    """One step, three versions: D-1's A, D made (its window covers D-1), D-1's
    second A — which D must count."""
    define(api, when="A@-1d..0d >= 2")
    register(D1, "A", n="1")
    register(D, "B")
    register(D1, "A", n="2")
    step()  # all three in one step
    fired = [e for e in events(api) if e["aggregate"] == D]
    assert brief(fired) == [(D, "fired", "ready", 1, False)]
    assert inputs(fired[0])["A@-1d..0d"] == [(D1, 2, 2)]


def test_a_put_that_adds_a_reference_counts_what_it_covers(api, domain):
    """Statuses the rule had already: the new reference's facts are counted, not
    read as 0 (a second read of the engine found this)."""
    define(api, when="B")
    register(D, "C")
    register(D1, "A", n="1")
    register(D1, "A", n="2")
    step()
    definition = {"name": "run-c", "when": "C and A@-1d >= 3"}
    replaced = api.put(f"{RULES}/run-c", definition)
    assert replaced.status_code == 200, replaced.text
    step()
    assert events(api) == []
    register(D1, "A", n="3")  # the third: D fires
    step()
    (fired,) = of_day(events(api), D)
    assert inputs(fired)["A@-1d"] == [(D1, 3, 3)]


def test_an_evaluation_that_failed_loses_no_neighbour(api, domain, monkeypatch):
    from aggregates.rules import evaluate

    define(api, when="B and A@-1d >= 2")
    register(D, "B")
    step()
    touch = evaluate.touch

    def fails_once(*args, **kwargs):
        monkeypatch.setattr(evaluate, "touch", touch)
        raise ValueError("once")

    monkeypatch.setattr(evaluate, "touch", fails_once)
    register(D1, "A", n="1")  # its evaluation of D fails
    step()
    register(D1, "A", n="2")  # counted again: D has two
    step()
    (fired,) = events(api)
    assert inputs(fired)["A@-1d"] == [(D1, 2, 2)]


def test_inputs_of_one_step_equal_the_databases_as_of_each_position(api, domain):
    """A step works out its events' inputs from its own versions; the database,
    asked as of each event's position, must say the same."""
    from aggregates.rules import neighbours
    from aggregates.rules.definition import CompiledRule

    define(api, "each", "B and A@-1d..0d", trigger="every")
    define(api, "near", "A@-2d..0d >= 2 and (B or B@-1d)", trigger="every")
    register(D3, "A")
    step()  # some history before the step
    days = [D2, D1, D, D1, D2, D, D3, D]
    for n, day in enumerate(days):
        register(day, "AB"[n % 2], n=str(n))
    step()  # one step: every event's inputs worked out in memory
    checked = 0
    for name in ("each", "near"):
        rule = CompiledRule.of(domain.rules.get(name=name))
        for event in events(api, name):
            expected = neighbours.inputs(
                domain.pk, event["aggregate"], rule.references, event["position"]
            )
            assert event["inputs"] == expected, event
            checked += 1
    assert checked >= 6


def test_an_event_caused_by_time_alone_carries_where_the_rule_stood(api, domain):
    define(api, when="B", deadline={"after": "20h", "from": "key_date"})
    register(F, "A")  # position 1
    register("other", "A")  # positions 2 and 3: nothing to do with F
    register("other", "A", run="2")
    step()
    step_at(DEADLINE + timedelta(seconds=2))
    (late,) = of_day(events(api), F)
    assert (late["event"], late["version"], late["position"]) == ("late", 1, 3)
