"""`manage.py demo --live`: a real process posting simulated days until Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import threading

from aggregates.models import Aggregate, Receipt, Version
from tests.toolkit import ROOT, database_url, wait_for

DEMO = "demo-c-inputs"
POSTED = re.compile(r"^(\S+) ([AB])(?: run=(\w+))? → v(\d+), position (\d+)$")


def test_demo_live_posts_days_until_interrupted(transactional_db, tmp_path):
    command = ["demo", "--days", "1", "--live", "--interval", "0.3"]
    process = subprocess.Popen(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env={
            **os.environ,
            "BOTLNEK_DATABASE_URL": database_url(),
            "BOTLNEK_DATA_DIR": str(tmp_path),
            "PYTHONIOENCODING": "utf-8",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(line.rstrip("\n") for line in process.stdout)
    )
    reader.start()
    try:
        # Today's B and afternoon A, then a whole simulated day and the next A.
        wait_for(
            lambda: sum(1 for line in lines if POSTED.match(line)) >= 6,
            timeout=30,
            what="six posts",
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    errors = process.stderr.read()
    assert "Traceback" not in errors, errors
    assert lines[-1] == "Stopped.", lines

    posted = [POSTED.match(line).groups() for line in lines if POSTED.match(line)]
    for day, collection, run, number, position in posted:
        version = Version.objects.select_related("source").get(
            aggregate__key=day, number=int(number)
        )
        assert version.position == int(position)
        assert version.source.collection == collection
        assert version.source.keys == ({"run": run} if run else {})

    positions = list(
        Version.objects.filter(domain__key=DEMO)
        .order_by("position")
        .values_list("position", flat=True)
    )
    assert positions == list(range(1, len(positions) + 1))  # gapless
    for aggregate in Aggregate.objects.filter(domain__key=DEMO):
        numbers = list(
            aggregate.versions.order_by("number").values_list("number", flat=True)
        )
        assert numbers == list(range(1, aggregate.version + 1))

    # A twice and B once a simulated day, and C ran once they were there.
    days = sorted({day for day, *_ in posted})
    assert len(days) >= 2
    assert [(c, r) for d, c, r, *_ in posted if d == days[1]] == [
        ("A", "am"),
        ("B", None),
        ("A", "pm"),
    ]
    assert Version.objects.get(aggregate__key=days[1], number=3).counts == {
        "A": 2,
        "B": 1,
    }
    # C ran as B came (version 2), when the rule run-c fires too.
    assert Receipt.objects.filter(
        aggregate__key=days[1], version=2, outcome="success", watcher="run-c"
    ).exists()


def run_live_until(posts: int, tmp_path) -> list[str]:
    """`demo --days 1 --live --interval 0.3` until it printed `posts` posts."""
    live = ["demo", "--days", "1", "--live", "--interval", "0.3"]
    process = subprocess.Popen(
        [sys.executable, "manage.py", *live],
        cwd=ROOT,
        env={
            **os.environ,
            "BOTLNEK_DATABASE_URL": database_url(),
            "BOTLNEK_DATA_DIR": str(tmp_path),
            "PYTHONIOENCODING": "utf-8",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        encoding="utf-8",
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(line.rstrip("\n") for line in process.stdout)
    )
    reader.start()
    try:
        wait_for(lambda: sum(1 for line in lines if POSTED.match(line)) >= posts, 30)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    return lines


def test_demo_live_again_carries_on_where_it_stopped(transactional_db, tmp_path):
    first = run_live_until(5, tmp_path)
    last = max(POSTED.match(line).group(1) for line in first if POSTED.match(line))
    again = run_live_until(2, tmp_path)
    assert not [line for line in again if "already there" in line]
    days = [POSTED.match(line).group(1) for line in again if POSTED.match(line)]
    assert min(days) >= last  # no day before where it stopped


def test_the_demos_history_is_dated_at_its_days(transactional_db):
    from datetime import UTC, datetime, time, timedelta

    import pytest
    from django.core.management import call_command
    from django.utils import timezone

    from aggregates import store
    from aggregates.errors import StoreError

    call_command("demo", "--days", "3")
    day = timezone.now().date() - timedelta(days=2)
    versions = Version.objects.filter(aggregate__key=day.isoformat()).order_by("number")
    assert [v.at.astimezone(UTC).time() for v in versions] == [
        time(6),
        time(7, 30),
        time(15),
    ]
    (receipt,) = Receipt.objects.filter(aggregate__key=day.isoformat())
    assert receipt.at == datetime.combine(day, time(7, 30, 45), tzinfo=UTC)
    times = list(
        Version.objects.filter(domain__key=DEMO)
        .order_by("position")
        .values_list("at", flat=True)
    )
    assert times == sorted(times)  # commit order is still time order
    with pytest.raises(StoreError):
        store.backdate(DEMO, {1: times[1], 2: times[0]})
