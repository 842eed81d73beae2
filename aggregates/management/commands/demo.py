import contextlib
import json
import signal
import threading
from datetime import UTC, date, datetime, time, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from aggregates import store
from aggregates.errors import Conflict
from aggregates.intakes import take as intake
from aggregates.intakes import write as intake_write
from aggregates.intakes.definition import IntakeIn
from aggregates.models import Aggregate
from aggregates.rules import engine
from aggregates.rules import write as rule_write
from aggregates.rules.definition import RuleIn
from aggregates.store import NewSource, Registration, register_sources
from aggregates.values import utc

WATCHER = "run-c"


def demo_rule(first: str) -> RuleIn:
    """The seed's consumer: C can use a recent A (within two days) and today's B;
    at 20:00 UTC on the day it settles for yesterday's B; else the day is late.
    Every day from `first` on is expected, posted to or not."""
    return RuleIn(
        name="run-c",
        when="A@-2d..0d >= 1 and B >= 1",
        fallback="A@-2d..0d >= 1 and B@-1d >= 1",
        deadline={"after": "20h", "from": "key_date"},
        expect={"every": "1d", "key": "%Y-%m-%d", "from": first},
        start="history",
    )


def day_sources(domain: str, day: str) -> list[NewSource]:
    """One day of the story, in the order it arrives: A's morning run, B, A's
    afternoon run."""
    return [
        NewSource(domain, day, "A", {"run": "am"}, {"path": f"s3://a/{day}/am"}),
        NewSource(domain, day, "B", {}, {"path": f"s3://b/{day}", "rows": 1200}),
        NewSource(domain, day, "A", {"run": "pm"}, {"path": f"s3://a/{day}/pm"}),
    ]


# Pipeline A announces its runs as CloudEvents; the demo's intake maps them.
A_INTAKE = IntakeIn(
    name="pipeline-a",
    aggregate="{{ data.partition }}",
    collection="A",
    keys={"run": "{{ data.run }}"},
    attrs={"path": "{{ data.path }}"},
    match={"type": "com.example.pipeline.finished"},
)


def register(source: NewSource) -> Registration:
    """B posts its sources; A's orchestrator posts a CloudEvent (binary mode) to
    the intake, which makes the same source of it."""
    if source.collection != "A":
        return register_sources([source])[0]
    run, day = source.keys["run"], source.aggregate
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"pipeline-a/{day}/{run}",
        "ce-source": "//orchestrator.example/pipeline-a",
        "ce-type": "com.example.pipeline.finished",
    }
    data = {"partition": day, "run": run, "path": source.attrs["path"]}
    answer = intake.post_now(
        source.domain,
        A_INTAKE.name,
        "application/json",
        headers,
        json.dumps(data).encode(),
    )[0]
    if answer["status"] >= 400:
        raise CommandError(f"the intake refused A's event: {answer['detail']}")
    fields = {k: v for k, v in answer.items() if k not in ("status", "at")}
    return Registration(**fields, at=utc(answer["at"]))


# When each source comes, in a day of the story (UTC).
ARRIVALS = {("A", "am"): time(6), ("B", None): time(7, 30), ("A", "pm"): time(15)}


def arrival(day: date, source: NewSource) -> datetime:
    at = ARRIVALS[source.collection, source.keys.get("run")]
    return datetime.combine(day, at, tzinfo=UTC)


def ran_c(
    domain: str,
    day: str,
    version: int,
    *,
    failed: bool = False,
    at: datetime | None = None,
) -> None:
    """C's watcher reports a run, through the write path's receipts; in the
    story's past, when the run ended after the version `at` came."""
    if at is not None:
        at += timedelta(seconds=3.2 if failed else 45)
    store.record_receipt(
        at=at,
        watcher=WATCHER,
        domain=domain,
        aggregate=day,
        version=version,
        outcome="failure" if failed else "success",
        exit_code=1 if failed else 0,
        duration_s=3.2 if failed else 41.0,
        detail="s3: connection reset; retried" if failed else "",
    )


def last_day(domain: str) -> date:
    """The latest day the domain has an aggregate of (date.min: none)."""
    days = []
    for key in Aggregate.objects.filter(domain__key=domain).values_list(
        "key", flat=True
    ):
        with contextlib.suppress(ValueError):
            days.append(date.fromisoformat(key))
    return max(days, default=date.min)


class Command(BaseCommand):
    help = (
        "Fill a demo domain with the A/B/C story: A publishes twice a day, B once, "
        "and C ran once both were there; a rule says when C may run (a recent A, "
        "and today's B, or yesterday's at 20:00): two days B never came, so the "
        "first settles for the day before's B and the second is late. With --live, "
        "keep posting a simulated day every few seconds until Ctrl-C."
    )

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="demo-c-inputs")
        parser.add_argument("--days", type=int, default=7)
        parser.add_argument(
            "--live",
            action="store_true",
            help="then post like a realistic day (A twice, B once) until Ctrl-C",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=6.0,
            help="seconds per simulated day with --live (default 6)",
        )

    def handle(self, *args, domain, days, live, interval, **options):
        if not interval > 0:
            raise CommandError("--interval must be more than 0 seconds")
        self.fill(domain, days)
        self.stdout.write(
            f"Demo domain {domain!r} is ready: open http://127.0.0.1:8000/d/{domain}/ "
            "(or that path on whichever address `manage.py serve` printed); "
            f"pipeline A posts CloudEvents to /api/domains/{domain}/intakes/"
            "pipeline-a/events"
        )
        if live:
            self.stdout.flush()
            self.live(domain, interval)

    def fill(self, domain: str, days: int) -> None:
        """The story of the last `days` days, each source and receipt at the
        moment of its day it would have come (A at 06:00 and 15:00 UTC, B at
        07:30, C's run 41 s after B), so that pictures, ages and deadlines read
        as they did on those days."""
        store.create_domain(domain, {"about": "the A/B/C story: C needs A and B"})
        with contextlib.suppress(Conflict):  # run before: the intake is there
            intake_write.create_intake(domain, A_INTAKE)
        now = timezone.now()
        today = now.date()
        # The days B never came: the first settles for the B of the day before
        # (the rule's fallback), the second has none the day before either: late.
        missing_b = {(today - timedelta(days=n)).isoformat() for n in (5, 4)}
        moments: dict[int, datetime] = {}
        for offset in range(days, 0, -1):
            day = today - timedelta(days=offset)
            sources = day_sources(domain, day.isoformat())
            if day.isoformat() in missing_b:
                sources.pop(1)
            results = []
            for source in sources:
                results.append(register(source))
                if results[-1].created:
                    moments[results[-1].position] = arrival(day, source)
            b = results[1]
            if day.isoformat() not in missing_b and b.created:  # C ran when B came
                came = arrival(day, sources[1])
                if offset == days and days > 2:  # the first time, after a retry
                    ran_c(domain, day.isoformat(), b.version, failed=True, at=came)
                ran_c(domain, day.isoformat(), b.version, at=came)
        # Today: A has arrived (if it is past 06:00), B not yet: C is waiting.
        first = day_sources(domain, today.isoformat())[0]
        result = register(first)
        if result.created:
            moments[result.position] = min(arrival(today, first), now)
        store.backdate(domain, moments)
        with contextlib.suppress(Conflict):  # run before: the rule is there
            start = (today - timedelta(days=days)).isoformat()
            rule_write.create_rule(domain, demo_rule(start))
        engine.catch_up(domain)

    def live(self, domain: str, interval: float) -> None:
        """A simulated day every `interval` seconds, from today on (or from the
        last day an earlier run got to): its three sources a third of the
        interval apart, and C's run as B comes (every fourth day it fails once
        first). Sources already there are skipped, unsaid and without waiting,
        so running it again carries on where it stopped."""
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.say(
            f"Posting a simulated day every {interval:g} s into {domain!r}; "
            "Ctrl-C stops."
        )
        try:
            day = max(timezone.now().date(), last_day(domain))
            while not stop.is_set():
                self.post_day(domain, day, interval / 3, stop)
                day += timedelta(days=1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.say("Stopped.")

    def post_day(
        self, domain: str, day: date, pause: float, stop: threading.Event
    ) -> None:
        key = day.isoformat()
        for source in day_sources(domain, key):
            if stop.is_set():
                return
            result = register(source)
            if not result.created:
                continue  # an earlier run posted it
            engine.catch_up(domain)
            self.say(self.describe(source, result))
            if source.collection == "B":  # a recent A and today's B: C runs
                if day.toordinal() % 4 == 0:
                    ran_c(domain, key, result.version, failed=True)
                    self.say(f"{key} {WATCHER} ran on v{result.version}: failure")
                ran_c(domain, key, result.version)
                self.say(f"{key} {WATCHER} ran on v{result.version}: success")
            if stop.wait(pause):
                return

    @staticmethod
    def describe(source: NewSource, result: Registration) -> str:
        keys = " ".join(f"{k}={v}" for k, v in sorted(source.keys.items()))
        what = f"{source.aggregate} {source.collection}{' ' + keys if keys else ''}"
        if not result.created:
            return f"{what}: already there as v{result.version}"
        return f"{what} → v{result.version}, position {result.position}"

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # a pipe buffers: whoever watches sees each post now
