"""Rules in real server processes: the clock, restarts, several processes, rule
subscriptions over websockets and SSE, and `botlnek watch --rule`."""

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aggregates.models import Receipt, RuleEvent
from aggregates.store import NewSource, register_sources
from tests.toolkit import ROOT, Subscriber, post, wait_for, watch_command

RULES = "/api/domains/c-inputs/rules"


def define(server, token, **definition):
    response = httpx.post(
        f"{server.url}{RULES}",
        json=definition,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()


def recorded(rule: str) -> list[RuleEvent]:
    return list(RuleEvent.objects.filter(rule__name=rule).order_by("seq"))


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def test_late_within_five_seconds_of_the_deadline_then_a_late_fire(start_server, token):
    server = start_server()
    define(
        server,
        token,
        name="run-c",
        when="A >= 1 and B >= 1",
        deadline={"after": "2s", "from": "first_source"},
    )
    first = post(server, token, "d1", "A")
    (late,) = wait_for(lambda: recorded("run-c"), 15, "the late event")
    deadline = parse(first["at"]) + timedelta(seconds=2)
    assert late.event == "late" and late.late
    assert deadline <= late.at <= deadline + timedelta(seconds=5)
    post(server, token, "d1", "B")
    events = wait_for(lambda: len(recorded("run-c")) == 2 and recorded("run-c"))
    assert [(e.seq, e.event, e.reason, e.version, e.late) for e in events] == [
        (1, "late", "", 1, True),
        (2, "fired", "ready", 2, True),
    ]


def test_age_fires_with_no_new_version(start_server, token):
    server = start_server()
    define(server, token, name="settled", when="age(A) > 3s")
    first = post(server, token, "d1", "A")
    (fired,) = wait_for(lambda: recorded("settled"), 15, "the fire")
    moment = parse(first["at"]) + timedelta(seconds=3)
    assert (fired.event, fired.reason, fired.version) == ("fired", "ready", 1)
    assert moment <= fired.at <= moment + timedelta(seconds=5)


def test_a_deadline_passed_while_no_server_ran_is_recorded_at_start(
    start_server, token
):
    server = start_server()
    define(
        server,
        token,
        name="run-c",
        when="B >= 1",
        deadline={"after": "2s", "from": "first_source"},
    )
    post(server, token, "d1", "A")
    server.stop()
    passed = datetime.now().astimezone() + timedelta(seconds=3)
    wait_for(lambda: datetime.now().astimezone() > passed, 10, "the deadline")
    assert recorded("run-c") == []
    start_server(server.port)  # no request needed: its clock runs from the start
    (late,) = wait_for(lambda: recorded("run-c"), 15, "the late event")
    assert (late.event, late.version) == ("late", 1)


def test_rule_events_over_websockets_and_sse(start_server, token):
    server = start_server(BOTLNEK_POSITION_CHECK_SECONDS="1")
    define(server, token, name="each", when="A >= 1", trigger="every")

    async def scenario():
        async with Subscriber(server, token) as sub:
            reply = await sub.subscribe(rule="each")
            assert reply == {"type": "subscribed", "id": "s1", "seq": 0}
            post(server, token, "d1", "A", n="1")
            post(server, token, "d1", "A", n="2")
            live = [await sub.next(timeout=15) for _ in range(2)]
        async with Subscriber(server, token) as sub:
            await sub.subscribe(rule="each", after_seq=1)
            resumed = await sub.next(timeout=15)
            post(server, token, "d2", "A")  # the very next one: nothing twice
            following = await sub.next(timeout=15)
        async with Subscriber(server, token) as sub:
            await sub.subscribe(rule="each", after_seq=0, mode="delta")
            delta = [await sub.next(timeout=15) for _ in range(3)]
            await sub.send(type="subscribe", id="s2", domain="c-inputs", rule="each")
            await sub.send(
                type="subscribe", id="s3", domain="c-inputs", rule="each", mode="all"
            )
            refused = [await sub.next() for _ in range(2)]
        return live, resumed, following, delta, refused

    live, resumed, following, delta, refused = asyncio.run(scenario())
    # Delta mode: the same events, without the state.
    assert [(f["seq"], f["version"], "state" in f) for f in delta] == [
        (1, 1, False),
        (2, 2, False),
        (3, 1, False),
    ]
    assert {key: value for key, value in live[1].items() if key != "state"} == delta[1]
    error = next(frame for frame in refused if frame["type"] == "error")
    assert (error["error"], error["id"]) == ("invalid", "s3")
    assert "mode" in error["detail"]
    assert [(f["type"], f["seq"], f["version"]) for f in live] == [
        ("rule_event", 1, 1),
        ("rule_event", 2, 2),
    ]
    assert live[1]["state"]["version"] == 2  # the state as of the event's version
    assert live[1]["subscription"] == "s1" and live[1]["rule"] == "each"
    assert (resumed["seq"], following["seq"], following["aggregate"]) == (2, 3, "d2")

    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "1"}
    params = {"domain": "c-inputs", "rule": "each"}
    with httpx.stream(
        "GET", f"{server.url}/api/stream", params=params, headers=headers, timeout=10
    ) as response:
        lines = response.iter_lines()
        event = {}
        while "data" not in event:
            line = next(lines)
            if line and not line.startswith(":"):
                field, _, value = line.partition(": ")
                event[field] = value
    assert (event["id"], event["event"]) == ("2", "rule_event")
    assert json.loads(event["data"])["seq"] == 2
    assert json.loads(event["data"])["state"]["version"] == 2

    params["mode"] = "delta"
    with httpx.stream(
        "GET", f"{server.url}/api/stream", params=params, headers=headers, timeout=10
    ) as response:
        data = next(line for line in response.iter_lines() if line.startswith("data: "))
    unsent = ("subscription", "state")
    expected = {key: value for key, value in live[1].items() if key not in unsent}
    assert json.loads(data.removeprefix("data: ")) == expected
    params["mode"] = "all"
    refused = httpx.get(f"{server.url}/api/stream", params=params, headers=headers)
    assert refused.status_code == 400 and "mode" in refused.json()["fields"]


@pytest.mark.postgres
def test_two_processes_writers_into_neighbouring_keys_every_event_once(
    start_server, token, redis_url
):
    """Rules across keys under concurrency: writers post into neighbouring minutes
    through two server processes while the minutes' deadlines pass."""
    servers = [start_server(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    define(
        servers[0],
        token,
        name="run-c",
        when="A@-2m..0m >= 1 and B >= 1",
        fallback="A@-2m..0m >= 1 and B@-1m >= 1",
        deadline={"after": "20s", "from": "key_date"},
    )
    define(servers[1], token, name="each", when="B and A@-1m", trigger="every")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = [
        (now - timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%MZ") for n in range(8)
    ]

    def writer(n: int) -> None:
        rng = random.Random(n)
        for i in range(25):
            key = rng.choice(minutes)
            post(servers[i % 2], token, key, rng.choice("AB"), w=str(n), i=str(i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def settled() -> bool:
        # Every minute's deadline has passed and been acted on.
        decided = RuleEvent.objects.filter(rule__name="run-c").values("aggregate")
        return len({row["aggregate"] for row in decided}) >= len(minutes)

    wait_for(settled, 60, "every minute's deadline")
    for rule in ("run-c", "each"):
        events = recorded(rule)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    per_minute: dict[str, list[str]] = {}
    for event in recorded("run-c"):
        per_minute.setdefault(event.aggregate, []).append(event.event)
        if event.event == "fired":  # it names what it used
            assert set(event.inputs) == {"A@-2m..0m", "B", "B@-1m"}
    for kinds in per_minute.values():
        assert kinds in (["fired"], ["late"], ["late", "fired"]), kinds
    each = recorded("each")
    # Never twice for one cause: a version (its own or a neighbour's) and its key.
    assert len({(e.aggregate, e.position) for e in each}) == len(each)


@pytest.mark.postgres
def test_two_processes_many_writers_deadlines_passing_every_event_once(
    start_server, token, redis_url
):
    servers = [start_server(BOTLNEK_REDIS_URL=redis_url) for _ in range(2)]
    define(
        servers[0],
        token,
        name="run-c",
        when="A >= 2 and B >= 1",
        deadline={"after": "2s", "from": "first_source"},
    )
    define(servers[1], token, name="each", when="A >= 1", trigger="every")
    aggregates = [f"day-{n}" for n in range(12)]

    def writer(n: int) -> None:
        rng = random.Random(n)
        for i in range(30):
            aggregate = rng.choice(aggregates)
            post(
                servers[i % 2], token, aggregate, rng.choice("AAB"), w=str(n), i=str(i)
            )

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def settled():
        # Every deadline has passed and been acted on; nothing new for a while.
        late = RuleEvent.objects.filter(rule__name="run-c", event="late").count()
        fired = RuleEvent.objects.filter(rule__name="run-c", event="fired").count()
        each = RuleEvent.objects.filter(rule__name="each").count()
        return late + fired >= len(aggregates) and each >= 120 * 2 // 3

    wait_for(settled, 30, "every deadline")
    for rule in ("run-c", "each"):
        events = recorded(rule)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    run_c = recorded("run-c")
    per_aggregate: dict[str, list[str]] = {}
    for event in run_c:
        per_aggregate.setdefault(event.aggregate, []).append(event.event)
    for kinds in per_aggregate.values():
        assert kinds in (["fired"], ["late"], ["late", "fired"]), kinds
    each = recorded("each")
    assert len({(e.aggregate, e.version) for e in each}) == len(each)  # none twice


RECORDER = """
import json, os, sys
names = [
    "DOMAIN", "AGGREGATE", "VERSION", "RULE", "RULE_SEQ", "REASON", "LATE", "INPUTS"
]
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({n: os.environ["BOTLNEK_" + n] for n in names}) + "\\n")
"""


def rule_watcher(server, token, directory, runs, *options):
    """`botlnek watch --rule run-c --name nightly` running RECORDER, once it
    follows the rule; its stderr lines in `.lines`."""
    directory.mkdir(exist_ok=True)
    script = directory / "recorder.py"
    script.write_text(RECORDER)
    process = subprocess.Popen(
        watch_command(
            server,
            token,
            "--rule",
            "run-c",
            "--name",
            "nightly",
            "--lease",
            "5",  # one killed stands in the way for 5 s at most
            *options,
            "--",
            sys.executable,
            str(script),
            str(runs),
        ),
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    wait_for(lambda: any("following rule" in line for line in lines), 15)
    process.lines = lines
    return process


def test_watch_rule_restarted_elsewhere_runs_every_firing_once(
    start_server, token, tmp_path
):
    server = start_server()
    define(server, token, name="run-c", when="A >= 1 and B >= 1")
    runs = tmp_path / "runs.jsonl"

    def watch(directory):
        return rule_watcher(server, token, directory, runs)

    def run_lines():
        return runs.read_text().splitlines() if runs.exists() else []

    first = watch(tmp_path / "one")
    for day in ("d1", "d2"):
        post(server, token, day, "A")
        post(server, token, day, "B")
    wait_for(lambda: len(run_lines()) == 2, 15, "two runs")
    # Killed between two events (after a run and before its receipt, the run
    # would be repeated: the documented price of keeping no local state).
    wait_for(lambda: Receipt.objects.filter(rule="run-c").count() == 2, 15)
    first.kill()  # SIGKILL: no goodbye, its lease simply stops being renewed
    first.wait()
    post(server, token, "d3", "A")
    post(server, token, "d3", "B")  # fires while no watcher runs
    second = watch(tmp_path / "two")  # another directory: no local state at all
    try:
        post(server, token, "d4", "A")
        post(server, token, "d4", "B")
        wait_for(lambda: len(run_lines()) == 4, 60, "four runs")
    finally:
        second.terminate()
        assert second.wait(timeout=10) == 0, "".join(second.lines)
    done = [json.loads(line) for line in run_lines()]
    assert [(r["AGGREGATE"], r["RULE_SEQ"]) for r in done] == [
        ("d1", "1"),
        ("d2", "2"),
        ("d3", "3"),
        ("d4", "4"),
    ]
    assert {r["RULE"] for r in done} == {"run-c"} and done[0]["LATE"] == "0"
    # What the rule used, per reference: each day's own A and B, at version 2.
    assert json.loads(done[0]["INPUTS"]) == {
        "A": [{"aggregate": "d1", "version": 2, "count": 1}],
        "B": [{"aggregate": "d1", "version": 2, "count": 1}],
    }
    receipts = httpx.get(
        f"{server.url}{RULES}/run-c/receipts",
        params={"watcher": "nightly"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()["receipts"]
    assert [r["seq"] for r in receipts] == [4, 3, 2, 1]


def test_history_is_evaluated_by_the_server_in_batches(start_server, token):
    # 300 aggregates, each A, B, A, B: 1,200 versions, more than a step reads.
    register_sources(
        [
            NewSource("c-inputs", f"a{i % 300}", "AB"[i // 300 % 2], {"i": str(i)})
            for i in range(1200)
        ]
    )
    server = start_server()
    define(server, token, name="old", when="A >= 1 and B >= 1", start="history")
    events = wait_for(lambda: len(recorded("old")) == 300 and recorded("old"), 30)
    assert [e.seq for e in events] == list(range(1, 301))
    assert {e.version for e in events} == {2}


def test_watch_rule_runs_a_fallback_for_a_key_nobody_posted_to_once(
    start_server, token, tmp_path
):
    """A minute nobody posted to settles for the previous minute's B at its
    deadline: the watcher runs it (version 0, no state), posts its receipt, and a
    restarted watcher does not run it again."""
    now = datetime.now(UTC)
    if now.second >= 45:  # the minute must not turn before the rule is made
        wait_for(lambda: datetime.now(UTC).second < 45, 20)
        now = datetime.now(UTC)
    minute = now.replace(second=0, microsecond=0)
    server = start_server()
    previous = (minute - timedelta(minutes=1)).strftime("m-%Y-%m-%dT%H:%M")
    post(server, token, previous, "B")
    define(
        server,
        token,
        name="run-c",
        when="A >= 1",
        fallback="B@-1m >= 1",
        deadline={"after": "1s", "from": "key_date"},
        expect={"every": "1m", "key": "m-%Y-%m-%dT%H:%M"},
    )
    runs = tmp_path / "runs.jsonl"
    first = rule_watcher(server, token, tmp_path / "one", runs, "--from-start")
    expected = minute.strftime("m-%Y-%m-%dT%H:%M")
    try:
        wait_for(lambda: runs.exists() and runs.read_text().strip(), 15, "a run")
        wait_for(lambda: Receipt.objects.filter(rule="run-c").exists(), 15)
    finally:
        first.terminate()
        first.wait(timeout=10)
    (run,) = [json.loads(line) for line in runs.read_text().splitlines()]
    assert (run["AGGREGATE"], run["VERSION"], run["REASON"], run["LATE"]) == (
        expected,
        "0",
        "fallback",
        "1",
    )
    assert json.loads(run["INPUTS"])["B@-1m"] == [
        {"aggregate": previous, "version": 1, "count": 1}
    ]
    receipt = Receipt.objects.get(rule="run-c")
    assert (receipt.aggregate.key, receipt.version, receipt.seq) == (expected, 0, 1)

    second = rule_watcher(server, token, tmp_path / "two", runs)
    try:
        post(server, token, "x", "A")  # a later firing, for the restarted one
        wait_for(lambda: len(runs.read_text().splitlines()) >= 2, 15, "a run")
    finally:
        second.terminate()
        assert second.wait(timeout=10) == 0, "".join(second.lines)
    done = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [(r["AGGREGATE"], r["RULE_SEQ"]) for r in done] == [
        (expected, "1"),
        ("x", "2"),
    ]
