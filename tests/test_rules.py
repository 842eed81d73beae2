"""Rules evaluated by the server: the engine step by step (in process, time given),
the API, and what crosses processes and time (real servers)."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from aggregates.keydates import key_moment
from aggregates.models import Rule, RuleEvent, RuleStatus
from aggregates.rules import engine
from aggregates.rules.definition import RuleIn
from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token
from tests.toolkit import ApiClient, post_source

RULES = "/api/domains/c-inputs/rules"


def define(api, name="run-c", when="A >= 2 and B >= 1", **definition):
    response = api.post(RULES, {"name": name, "when": when, **definition})
    assert response.status_code == 201, response.json()
    return response.json()


def events(api, name="run-c", after_seq=0):
    body = api.get(f"{RULES}/{name}/events", after_seq=after_seq).json()
    return body["events"]


def brief(events):
    return [
        (e["aggregate"], e["event"], e["reason"], e["version"], e["late"])
        for e in events
    ]


def register(aggregate, collection, **keys):
    register_sources([NewSource("c-inputs", aggregate, collection, keys)])


def test_seed_story_once_every_and_prefix(api, domain):
    define(api, "run-c", "A >= 2 and B >= 1", aggregate_prefix="2026-")
    define(api, "each", "A >= 1 and B >= 1", trigger="every")
    for aggregate in ("2026-11-26", "other"):
        register(aggregate, "A", run="am")
        register(aggregate, "B")
        register(aggregate, "A", run="pm")
    engine.catch_up("c-inputs")

    assert brief(events(api)) == [("2026-11-26", "fired", "ready", 3, False)]
    assert [e["seq"] for e in events(api)] == [1]
    assert brief(events(api, "each")) == [
        ("2026-11-26", "fired", "ready", 2, False),
        ("2026-11-26", "fired", "ready", 3, False),
        ("other", "fired", "ready", 2, False),
        ("other", "fired", "ready", 3, False),
    ]
    listed = api.get(f"{RULES}/run-c/aggregates").json()["aggregates"]
    assert listed == [
        {
            "aggregate": "2026-11-26",
            "status": "fired",
            "version": 3,
            "deadline": None,
            "fired_at_version": 3,
        }
    ]  # "other" is outside the prefix: never evaluated
    counts = {r["name"]: r["counts"] for r in api.get(RULES).json()["rules"]}
    assert counts["run-c"] == {"late": 0, "waiting": 0, "ready": 0, "fired": 1}
    assert counts["each"]["ready"] == 2


def test_evaluation_is_exactly_once_however_often_it_runs(api, domain):
    define(api)
    register("d1", "A", run="am")
    engine.catch_up("c-inputs")
    engine.catch_up("c-inputs")
    register("d1", "B")
    register("d1", "A", run="pm")
    for _ in range(3):
        engine.catch_up("c-inputs")
    register("d1", "A", run="late")  # fired already: a once rule stays fired
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("d1", "fired", "ready", 3, False)]
    rule = Rule.objects.get()
    assert (rule.latest_seq, rule.position) == (1, 4)


def test_start_now_ignores_the_past_until_the_next_version(api, domain):
    register("d1", "A", run="am")
    register("d1", "B")
    register("d1", "A", run="pm")  # ready before the rule existed
    define(api)
    engine.catch_up("c-inputs")
    assert events(api) == []
    register("d1", "C")  # its next version: evaluated, with all it holds
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("d1", "fired", "ready", 4, False)]


def test_a_deadline_passing_records_late_then_a_late_fire(api, domain):
    define(api, deadline={"after": "1h", "from": "first_source"})
    register("d1", "A", run="am")
    started = timezone.now()
    engine.catch_up("c-inputs", now=started + timedelta(minutes=59))
    assert events(api) == []
    engine.catch_up("c-inputs", now=started + timedelta(minutes=61, seconds=1))
    assert brief(events(api)) == [("d1", "late", None, 1, True)]
    status = RuleStatus.objects.get()
    assert status.status == "late" and status.next_due_at is None
    register("d1", "B")
    register("d1", "A", run="pm")
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [
        ("d1", "late", None, 1, True),
        ("d1", "fired", "ready", 3, True),
    ]


def test_on_deadline_fire_fires_with_what_is_there(api, domain):
    define(
        api,
        deadline={"after": "30m", "from": "first_source"},
        on_deadline="fire",
    )
    register("d1", "A", run="am")
    engine.catch_up("c-inputs", now=timezone.now() + timedelta(minutes=31, seconds=1))
    assert brief(events(api)) == [("d1", "fired", "deadline", 1, True)]
    register("d1", "B")
    register("d1", "A", run="pm")
    engine.catch_up("c-inputs")
    assert len(events(api)) == 1  # fired once, for good


def test_key_date_deadlines(api, domain):
    define(api, deadline={"after": "6h", "from": "key_date"})
    register("2026-11-26", "A")  # due 2026-11-26T06:00: long past
    register("part-2099-01-01T06:00:00Z", "A")  # due 2099-01-01T12:00
    register("no-date-here", "A")
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("2026-11-26", "late", None, 1, True)]
    deadlines = {
        row["aggregate"]: row["deadline"]
        for row in api.get(f"{RULES}/run-c/aggregates").json()["aggregates"]
    }
    assert deadlines == {
        "2026-11-26": "2026-11-26T06:00:00.000000Z",
        "part-2099-01-01T06:00:00Z": "2099-01-01T12:00:00.000000Z",
        "no-date-here": None,
    }


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("2026-11-26", datetime(2026, 11, 26, tzinfo=UTC)),
        ("part-2026-11-26T06:00:00Z", datetime(2026, 11, 26, 6, tzinfo=UTC)),
        ("d:2026-11-26T06:30", datetime(2026, 11, 26, 6, 30, tzinfo=UTC)),
        ("bad-2026-13-40-good-2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("20261-11-26", None),  # part of a longer number
        ("no-date", None),
    ],
)
def test_key_date(key, expected):
    assert key_moment(key) == expected


def test_age_fires_by_time_alone(api, domain):
    define(api, "fresh", "age(A) > 3s", trigger="once")
    register("d1", "A")
    engine.catch_up("c-inputs")
    assert events(api, "fresh") == []
    engine.catch_up("c-inputs", now=timezone.now() + timedelta(seconds=5))
    assert brief(events(api, "fresh")) == [("d1", "fired", "ready", 1, False)]


def test_every_fires_each_time_time_alone_makes_it_true(api, domain):
    define(api, "quiet", "age(A) > 1m", trigger="every")
    register("d1", "A", n="1")
    engine.catch_up("c-inputs", now=timezone.now() + timedelta(minutes=2))
    register("d1", "A", n="2")  # fresh again: false, then true a minute later
    engine.catch_up("c-inputs")
    assert len(events(api, "quiet")) == 1
    engine.catch_up("c-inputs", now=timezone.now() + timedelta(minutes=2))
    assert brief(events(api, "quiet")) == [
        ("d1", "fired", "ready", 1, False),
        ("d1", "fired", "ready", 2, False),
    ]


def test_why_evaluates_every_comparison_now(api, domain):
    define(api, when="A >= 2 and B >= 1 or age(A) < 1h")
    register("d1", "A", run="am")
    register("d1", "C")
    engine.catch_up("c-inputs")
    why = api.get(f"{RULES}/run-c/aggregates/d1").json()
    assert why["status"] == "fired"  # age(A) < 1h held at version 1
    assert why["terms"] == [
        {"expr": "A >= 2", "value": False, "detail": "A = 1"},
        {"expr": "B >= 1", "value": False, "detail": "B = 0"},
        {"expr": "age(A) < 1h", "value": True, "detail": why["terms"][2]["detail"]},
    ]
    assert why["terms"][2]["detail"].startswith("age(A) = ")
    assert [e["seq"] for e in why["events"]] == [1]
    assert why["note"] is None
    assert api.get(f"{RULES}/run-c/aggregates/nope").status_code == 404


def test_a_why_before_the_rule_evaluated_says_so(api, domain):
    register("d1", "A", run="am")
    define(api, when="A >= 1 and B >= 1")  # start: now, after d1's version 1
    why = api.get(f"{RULES}/run-c/aggregates/d1").json()
    assert (why["status"], why["version"]) == (None, 1)
    assert why["note"].startswith("not evaluated yet")
    register("d1", "B")
    engine.catch_up("c-inputs")
    why = api.get(f"{RULES}/run-c/aggregates/d1").json()
    assert (why["status"], why["version"], why["note"]) == ("fired", 2, None)
    register("d1", "A", run="pm")  # the engine has not run since
    why = api.get(f"{RULES}/run-c/aggregates/d1").json()
    assert why["note"] == (
        "evaluated up to version 2; version 3 is being evaluated (the terms "
        "below are of now)"
    )
    engine.catch_up("c-inputs")
    assert api.get(f"{RULES}/run-c/aggregates/d1").json()["note"] is None


def test_preview_equals_what_start_history_records(api, domain):
    for day in range(1, 6):
        key = f"2026-11-{day:02d}"
        register(key, "A", run="am")
        if day % 2:
            register(key, "B")
        if day != 3:
            register(key, "A", run="pm")
    register("other", "A", run="am")
    definition = {
        "name": "replay",
        "when": "A >= 2 and B >= 1",
        "aggregate_prefix": "2026-",
        "deadline": {"after": "1h", "from": "key_date"},
        "start": "history",
    }
    preview = api.post(f"{RULES}/preview", definition).json()["aggregates"]
    assert api.get(f"{RULES}/replay").status_code == 404  # nothing saved
    define(api, **definition)
    engine.catch_up("c-inputs")
    recorded = {}
    for event in events(api, "replay"):
        if event["event"] == "fired":
            recorded.setdefault(event["aggregate"], event)
    statuses = {
        row["aggregate"]: row["status"]
        for row in api.get(f"{RULES}/replay/aggregates").json()["aggregates"]
    }
    assert {row["aggregate"]: row["status"] for row in preview} == statuses
    assert {
        row["aggregate"]: row["would_fire"] for row in preview if row["would_fire"]
    } == {
        key: {"version": event["version"], "reason": event["reason"]}
        for key, event in recorded.items()
    }
    assert statuses == {
        "2026-11-01": "fired",
        "2026-11-02": "late",
        "2026-11-03": "late",
        "2026-11-04": "late",
        "2026-11-05": "fired",
    }
    # In the position order of the versions they are about.
    positions = [event["position"] for event in events(api, "replay")]
    assert positions == sorted(positions)


def test_put_keeps_the_log_and_applies_to_what_comes_next(api, domain):
    define(api, when="A >= 3")
    register("d1", "A", n="1")
    register("d2", "A", n="1")
    register("d2", "A", n="2")
    register("d2", "A", n="3")
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("d2", "fired", "ready", 3, False)]
    changed = api.put(f"{RULES}/run-c", {"name": "run-c", "when": "A >= 1"})
    assert changed.status_code == 200 and changed.json()["latest_seq"] == 1
    register("d1", "B")
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [
        ("d2", "fired", "ready", 3, False),
        ("d1", "fired", "ready", 2, False),
    ]
    gone = api.request("DELETE", f"{RULES}/run-c")
    assert gone.status_code == 204
    assert api.get(f"{RULES}/run-c").status_code == 404
    assert not RuleEvent.objects.exists() and not RuleStatus.objects.exists()


@pytest.mark.parametrize(
    ("definition", "field", "message"),
    [
        ({"when": "A >= and B"}, "when", "at column 6"),
        ({"when": ""}, "when", "must not be empty"),
        ({"name": "bad name"}, "name", "characters from"),
        ({"name": "preview"}, "name", "reserved"),
        ({"when": "A and B@0d..-1d"}, "when", "column 8"),
        ({"deadline": {"after": "30x", "from": "key_date"}}, "deadline.after", "90s"),
        ({"deadline": {"after": "1h", "from": "tomorrow"}}, "deadline.from", ""),
        ({"trigger": "twice"}, "trigger", ""),
        ({"aggregate_prefix": "a/b"}, "aggregate_prefix", "characters from"),
        ({"colour": "red"}, "colour", "not a known field"),
    ],
)
def test_bad_definitions_are_400_and_save_nothing(
    api, domain, definition, field, message
):
    body = {"name": "run-c", "when": "A >= 1", **definition}
    response = api.post(RULES, body)
    assert response.status_code == 400, response.json()
    assert message in response.json()["fields"][field]
    assert not Rule.objects.exists()


def test_a_taken_name_is_409_and_tokens_are_checked(api, domain, read_token):
    define(api)
    again = api.post(RULES, {"name": "run-c", "when": "B >= 1"})
    assert again.status_code == 409
    assert Rule.objects.get().when == "A >= 2 and B >= 1"
    reader = ApiClient(read_token)
    assert reader.get(RULES).status_code == 200
    assert reader.post(RULES, {"name": "mine", "when": "A >= 1"}).status_code == 403
    assert reader.request("DELETE", f"{RULES}/run-c").status_code == 403
    _, elsewhere = create_token(name="other", scope="write", domains=["other"])
    other = ApiClient(elsewhere)
    assert other.get(RULES).status_code == 403
    assert other.get(f"{RULES}/run-c/events").status_code == 403
    assert api.get("/api/domains/nope/rules").status_code == 404


def test_receipts_of_rule_events(api, domain):
    define(api, when="A >= 1")
    post_source(api, collection="A")
    engine.catch_up("c-inputs")
    receipt = {
        "watcher": "run-c",
        "domain": "c-inputs",
        "aggregate": "2026-11-26",
        "version": 1,
        "outcome": "success",
        "rule": "run-c",
        "seq": 1,
    }
    assert api.post("/api/receipts", receipt).status_code == 201
    assert api.post("/api/receipts", {**receipt, "seq": 2}).status_code == 404
    wrong = api.post("/api/receipts", {**receipt, "version": 0 + 1, "aggregate": "x"})
    assert wrong.status_code == 404  # no such aggregate
    half = {key: value for key, value in receipt.items() if key != "seq"}
    assert api.post("/api/receipts", half).status_code == 400
    listed = api.get(f"{RULES}/run-c/receipts", watcher="run-c").json()["receipts"]
    assert [(r["rule"], r["seq"], r["outcome"]) for r in listed] == [
        ("run-c", 1, "success")
    ]


def test_leases_admit_one_holder_at_a_time(api, domain):
    define(api)
    take = {"watcher": "run-c", "holder": "one", "seconds": 5}
    assert api.post(f"{RULES}/run-c/leases", take).status_code == 200
    taken = api.post(f"{RULES}/run-c/leases", {**take, "holder": "two"})
    assert taken.status_code == 409 and taken.json()["holder"] == "one"
    assert api.post(f"{RULES}/run-c/leases", take).status_code == 200  # renewed
    api.request("DELETE", f"{RULES}/run-c/leases/run-c?holder=one")
    assert (
        api.post(f"{RULES}/run-c/leases", {**take, "holder": "two"}).status_code == 200
    )


def test_prune_keeps_what_a_rule_still_waits_for(api, domain):
    from django.core.management import call_command

    define(api, when="A >= 1 and B >= 1", aggregate_prefix="day-")
    register("day-waiting", "A")
    register("day-done", "A")
    register("day-done", "B")
    register("elsewhere", "C")  # no rule's business
    engine.catch_up("c-inputs")
    call_command("prune", "--older-than", "0s")
    remaining = set(domain.aggregates.values_list("key", flat=True))
    assert remaining == {"day-waiting"}
    call_command("prune", "--older-than", "0s", "--include-pending")
    assert not domain.aggregates.exists()
    assert brief(events(api)) == [("day-done", "fired", "ready", 2, False)]


@pytest.mark.postgres
def test_a_step_already_running_elsewhere_is_left_to_do_the_work(api, domain):
    import psycopg

    from tests.toolkit import database_url

    define(api)
    register("d1", "A", run="am")
    register("d1", "B")
    register("d1", "A", run="pm")
    with psycopg.connect(database_url()) as elsewhere:
        # Another process's step, holding the domain's rules.
        elsewhere.execute(f'SELECT 1 FROM "{Rule._meta.db_table}" FOR UPDATE')
        assert engine.step("c-inputs") is False  # no wait, no error
        assert events(api) == []
        elsewhere.rollback()
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("d1", "fired", "ready", 3, False)]


def test_a_step_planned_before_a_put_is_done_again(api, domain):
    """A step reads and evaluates outside the write lock (how SQLite steps): a
    rule changed between that and its writing makes it start again, nothing
    written from the old definition."""
    from aggregates.rules.write import replace_rule

    define(api, when="A >= 1")
    register("d1", "A")
    planned = engine.plan("c-inputs", timezone.now())
    replace_rule("c-inputs", "run-c", RuleIn(name="run-c", when="A >= 2"))
    assert engine.commit(planned) is True  # more to do: planned again
    assert events(api) == []
    engine.catch_up("c-inputs")
    assert events(api) == []  # A >= 2 does not hold: nothing fires
    register("d1", "A", run="pm")
    engine.catch_up("c-inputs")
    assert brief(events(api)) == [("d1", "fired", "ready", 2, False)]
