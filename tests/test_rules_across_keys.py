"""Rules across keys: references to neighbouring aggregates by key date, the
re-evaluation a neighbour's version causes, and the inputs an event names (the
engine step by step, in process)."""

import pytest

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
