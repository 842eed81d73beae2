"""Expected keys: a rule evaluates the keys its `expect` names when their moment
comes, whether anybody posted to them or not (the engine step by step, in
process)."""

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from aggregates.models import Aggregate, Rule
from aggregates.rules import engine
from tests.test_rules import RULES, brief, define, events, register
from tests.test_rules_across_keys import SEED, inputs

DAILY = {"every": "1d", "key": "%Y-%m-%d"}


def day(offset: int) -> str:
    return (timezone.now() + timedelta(days=offset)).strftime("%Y-%m-%d")


def midnight(key: str) -> datetime:
    return datetime.fromisoformat(key).replace(tzinfo=UTC)


def step_at(moment: datetime | None = None) -> None:
    engine.catch_up("c-inputs", now=moment)


def of_days(found: list[dict], *days: str) -> list[dict]:
    return [event for event in found if event["aggregate"] in days]


def test_history_three_past_days_one_with_data(api, domain):
    """Two days nobody posted to end late; the one with data is late at its
    deadline, then fired by the version it already had (committed later)."""
    d3, d2, d1 = day(-3), day(-2), day(-1)
    register(d2, "A")  # posted now: after d2's deadline
    define(
        api,
        when="A >= 1",
        deadline={"after": "20h", "from": "key_date"},
        expect={**DAILY, "from": d3},
        start="history",
    )
    step_at()
    assert brief(of_days(events(api), d3, d2, d1)) == [
        (d3, "late", None, 0, True),
        (d2, "late", None, 0, True),
        (d1, "late", None, 0, True),
        (d2, "fired", "ready", 1, True),
    ]
    listing = api.get(f"{RULES}/run-c/aggregates", limit=10).json()["aggregates"]
    found = {row["aggregate"]: (row["status"], row["version"]) for row in listing}
    assert [found[d3], found[d2], found[d1]] == [("late", 0), ("fired", 1), ("late", 0)]
    why = api.get(f"{RULES}/run-c/aggregates/{d3}")
    assert why.status_code == 200, why.text
    assert (why.json()["status"], why.json()["version"]) == ("late", 0)
    assert why.json()["terms"][0]["detail"] == "A = 0"
    counts = api.get(f"{RULES}/run-c").json()["counts"]
    assert counts["late"] >= 2 and counts["fired"] == 1


def test_a_fallback_fires_at_the_deadline_for_a_key_nobody_posted_to(api, domain):
    f = day(3)
    deadline = midnight(f) + timedelta(hours=20)
    register(day(2), "A")
    register(day(2), "B")
    define(api, **SEED, expect=DAILY)
    step_at(deadline - timedelta(hours=1))
    assert of_days(events(api), f) == []  # expected, waiting: never before
    step_at(deadline + timedelta(seconds=2))
    (fired,) = of_days(events(api), f)
    assert brief([fired]) == [(f, "fired", "fallback", 0, True)]
    assert inputs(fired)["B@-1d"] == [(day(2), 2, 1)]
    assert inputs(fired)["B"] == []


def test_the_clock_makes_no_keys_ahead_of_their_moment(api, domain):
    define(api, when="A", expect=DAILY)
    step_at()
    assert list(Aggregate.objects.values_list("key", "version")) == [(day(0), 0)]
    step_at(midnight(day(2)) + timedelta(seconds=2))
    assert sorted(Aggregate.objects.values_list("key", flat=True)) == [
        day(0),
        day(1),
        day(2),
    ]


def test_an_expected_key_keeps_its_status_when_its_first_source_comes(api, domain):
    """The source dates the aggregate (created_at) and counts it."""
    define(api, when="A >= 1", expect=DAILY)
    step_at()
    expected = Aggregate.objects.get(key=day(0))
    assert api.get("/api/domains/c-inputs").json()["aggregates"] == 0
    register(day(0), "A")
    step_at()
    assert brief(events(api)) == [(day(0), "fired", "ready", 1, False)]
    made = Aggregate.objects.get(key=day(0))
    assert (made.pk, made.version) == (expected.pk, 1)
    assert made.created_at > expected.created_at  # its first version's time
    assert api.get("/api/domains/c-inputs").json()["aggregates"] == 1


def test_aggregate_prefix_limits_expected_keys(api, domain):
    define(
        api, when="A", expect={"every": "1d", "key": "x-%Y-%m-%d"}, aggregate_prefix="y"
    )
    step_at()
    assert not Aggregate.objects.exists()
    assert Rule.objects.get().expect_next == midnight(day(1))


@pytest.mark.parametrize(
    ("expect", "field", "says"),
    [
        ({"every": "1d", "key": "%Y%m%d"}, "expect.key", "must hold %Y-%m-%d"),
        ({"every": "1d", "key": "%d-%m-%Y"}, "expect.key", "must hold %Y-%m-%d"),
        ({"every": "1d", "key": "run1%Y-%m-%d"}, "expect.key", "no digit"),
        ({"every": "1d", "key": "a/%Y-%m-%d"}, "expect.key", "key characters"),
        ({"every": "1h", "key": "%Y-%m-%d"}, "expect", "every 1h is finer than"),
        ({"every": "30s", "key": "%Y-%m-%dT%H:%M:%S"}, "expect.every", "1m"),
        ({"every": "1x", "key": "%Y-%m-%d"}, "expect.every", "duration"),
        ({"every": "1d", "key": "%Y-%m-%d", "from": "soon"}, "expect.from", "ISO"),
        (
            {"every": "1m", "key": "%Y-%m-%dT%H:%M", "from": "1900-01-01"},
            "expect",
            "100,000",
        ),
        ({"every": "1d"}, "expect.key", "required"),
    ],
)
def test_bad_expectations_are_400_naming_the_field(api, domain, expect, field, says):
    response = api.post(RULES, {"name": "bad", "when": "A", "expect": expect})
    assert response.status_code == 400, response.text
    assert says in response.json()["fields"][field], response.json()
    assert api.get(RULES).json()["rules"] == []


def test_expect_needs_a_key_date_deadline(api, domain):
    response = api.post(
        RULES,
        {
            "name": "bad",
            "when": "A",
            "expect": DAILY,
            "deadline": {"after": "1h", "from": "first_source"},
        },
    )
    assert response.status_code == 400, response.text
    assert "key_date" in response.json()["fields"]["expect"]


def test_a_put_that_changes_expect_starts_from_the_current_period(api, domain):
    define(api, when="A", expect={**DAILY, "from": day(-5)}, start="history")
    step_at()
    assert Aggregate.objects.count() == 6
    definition = {
        "name": "run-c",
        "when": "A",
        "expect": {**DAILY, "key": "b-%Y-%m-%d"},
    }
    response = api.put(f"{RULES}/run-c", definition)
    assert response.status_code == 200, response.text
    assert response.json()["expect"] == {"every": "1d", "key": "b-%Y-%m-%d"}
    step_at()
    assert Aggregate.objects.filter(key__startswith="b-").count() == 1


def test_preview_of_expected_keys_equals_what_start_history_records(api, domain):
    days = [day(n) for n in range(-5, 1)]
    register(days[1], "A")
    register(days[2], "B")
    register(days[3], "A")
    register(days[3], "B")
    definition = {
        "name": "replay",
        **SEED,
        "expect": {**DAILY, "from": days[0]},
        "start": "history",
    }
    preview = api.post(f"{RULES}/preview", definition).json()["aggregates"]
    define(api, **definition)
    step_at()
    statuses = {
        row["aggregate"]: (row["status"], row["version"])
        for row in api.get(f"{RULES}/replay/aggregates").json()["aggregates"]
    }
    fired = {}
    for event in events(api, "replay"):
        if event["event"] == "fired":
            fired.setdefault(event["aggregate"], event)
    assert {row["aggregate"]: row["status"] for row in preview} == {
        key: status for key, (status, _) in statuses.items()
    }
    assert set(statuses) == set(days)  # every expected day, posted to or not
    assert {
        row["aggregate"]: row["would_fire"] for row in preview if row["would_fire"]
    } == {
        key: {"version": event["version"], "reason": event["reason"]}
        for key, event in fired.items()
    }
    assert statuses[days[0]] == ("late", 0)  # nothing near it at all
    # Yesterday nobody posted to: late at its deadline, then fired by the
    # fallback when day -2's B came (everything was posted just now).
    assert (fired[days[4]]["version"], fired[days[4]]["reason"]) == (0, "fallback")


def test_a_rule_event_about_a_key_with_no_sources_carries_no_state(api, domain):
    from aggregates.streams import RuleFrame

    define(api, when="A >= 0", expect=DAILY)  # holds at once, with nothing
    step_at()
    (event,) = events(api)
    assert (event["aggregate"], event["version"]) == (day(0), 0)
    frame = json.loads(asyncio.run(RuleFrame(event).text()))
    assert frame["state"] is None and frame["seq"] == 1


def test_version_0_receipts_are_only_for_a_rules_event(api, domain):
    define(api, when="A >= 0", expect=DAILY)
    step_at()
    receipt = {
        "watcher": "w",
        "domain": "c-inputs",
        "aggregate": day(0),
        "version": 0,
        "outcome": "success",
    }
    refused = api.post("/api/receipts", receipt)
    assert refused.status_code == 400, refused.text
    assert "only for a receipt of a rule's event" in refused.json()["fields"]["version"]
    taken = api.post("/api/receipts", {**receipt, "rule": "run-c", "seq": 1})
    assert taken.status_code == 201, taken.text
    assert taken.json()["version"] == 0


@pytest.mark.postgres
def test_a_first_source_racing_the_engine_making_its_key_waits_and_lands(domain):
    """The engine makes an expected key's aggregate in a transaction of its own:
    a writer posting the key's first source meanwhile waits for it (no deadlock,
    no unique violation), then gives that aggregate its first version."""
    from django.db import connection, transaction

    from aggregates import store
    from aggregates.store import NewSource, register_sources

    made, release, found, failed = threading.Event(), threading.Event(), [], []
    moment = midnight("2026-12-01")

    def engine_side():
        try:
            with transaction.atomic():
                store.expect_aggregates(domain.pk, [("2026-12-01", moment)])
                made.set()
                release.wait(10)
        except Exception as exc:  # a deadlock, at commit
            failed.append(exc)
        finally:
            made.set()
            connection.close()

    def writer():
        try:
            found.extend(register_sources([NewSource("c-inputs", "2026-12-01", "A")]))
        except Exception as exc:  # a deadlock or a unique violation
            failed.append(exc)
        finally:
            connection.close()

    engine_thread = threading.Thread(target=engine_side)
    engine_thread.start()
    assert made.wait(10)
    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    writer_thread.join(1.5)  # longer than PostgreSQL's deadlock_timeout (1 s)
    assert writer_thread.is_alive()  # held back until the engine commits
    release.set()
    engine_thread.join(10)
    writer_thread.join(10)
    assert failed == []
    assert [(r.created, r.version) for r in found] == [(True, 1)]
    aggregate = Aggregate.objects.get(key="2026-12-01")
    assert (aggregate.version, aggregate.counts) == (1, {"A": 1})
    domain.refresh_from_db()
    assert domain.aggregate_count == 1
