"""Prometheus metrics: every metric Botlnek reports is defined here, and served by
GET /metrics (docs/metrics.md says how to scrape them).

Each server process counts what it does itself, in prometheus_client's default
registry (no multiprocess mode): scrape every process at its own address.

    botlnek_versions_committed_total{domain}        counter: versions this process
        committed (a duplicate post commits none)
    botlnek_ingest_seconds{domain,kind}             histogram: time to answer a
        successful POST /api/sources, kind "single" or "batch"
    botlnek_http_requests_total{method,route,status}  counter: API requests
        answered, by route template and status class ("2xx" … "5xx")
    botlnek_live_subscriptions{transport}           gauge: open subscriptions,
        "websocket" (/ws/subscribe) or "sse" (/api/stream)
    botlnek_frames_sent_total{transport,kind}       counter: frames handed to a
        connection, kind "version" or "rule_event"
    botlnek_slow_consumer_disconnects_total{transport}  counter: connections
        ended because their reader fell too far behind
    botlnek_commit_to_send_seconds{transport}       histogram: from a version's
        commit to its live frame being handed to a connection
    botlnek_rule_events_total{domain,event}         counter: rule events this
        process's rules engine recorded, event "fired" or "late"
    botlnek_rule_evaluation_failures_total{domain}  counter: evaluations of a
        (rule, aggregate) that failed (recorded against the pair; others go on)
    botlnek_rule_statuses{domain,status}            gauge: (rule, aggregate)
        statuses by status, from the database when scraped
    botlnek_webhook_deliveries_total{domain,outcome}  counter: delivery attempts
        made by this process's delivery worker, outcome "2xx" … "5xx", "timeout",
        "connection_error" or "not_sent" (its host did not resolve to an allowed
        address)
    botlnek_webhook_lag_events{domain}              gauge: events not yet
        delivered by the domain's most-behind unpaused webhook, from the database
    botlnek_webhooks_paused{domain}                 gauge: paused webhooks, from
        the database

plus prometheus_client's own process_* and python_* metrics of the process.
Label values are bounded: domains are created by operators, and every other label
takes a fixed set of values (a route is a URL pattern, never a path).
"""

import logging
import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence

import httpx
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from aggregates import db, tokens
from aggregates.errors import error_response, unauthorized
from aggregates.models import Rule, RuleStatus, Webhook

logger = logging.getLogger("botlnek.metrics")

# Half the lines of a scrape would be *_created timestamps nobody graphs.
disable_created_metrics()

# Seconds: a single post takes a few milliseconds, a batch of 1,000 a second or so.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

VERSIONS_COMMITTED = Counter(
    "botlnek_versions_committed",
    "Versions committed by this process.",
    ["domain"],
)
INGEST_SECONDS = Histogram(
    "botlnek_ingest_seconds",
    "Time to answer a successful POST /api/sources or of events to an intake.",
    ["domain", "kind"],
    buckets=_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "botlnek_http_requests",
    "API requests answered, by method, route template and status class.",
    ["method", "route", "status"],
)
LIVE_SUBSCRIPTIONS = Gauge(
    "botlnek_live_subscriptions",
    "Open live subscriptions: websocket (/ws/subscribe) or sse (/api/stream).",
    ["transport"],
)
FRAMES_SENT = Counter(
    "botlnek_frames_sent",
    "Frames handed to a live connection.",
    ["transport", "kind"],
)
SLOW_CONSUMER_DISCONNECTS = Counter(
    "botlnek_slow_consumer_disconnects",
    "Live connections ended because their reader fell too far behind.",
    ["transport"],
)
COMMIT_TO_SEND_SECONDS = Histogram(
    "botlnek_commit_to_send_seconds",
    "From a version's commit to its live frame being handed to a connection.",
    ["transport"],
    buckets=(*_BUCKETS, 30, 60),
)
RULE_EVENTS = Counter(
    "botlnek_rule_events",
    "Rule events recorded by this process's rules engine.",
    ["domain", "event"],
)
RULE_EVALUATION_FAILURES = Counter(
    "botlnek_rule_evaluation_failures",
    "Evaluations of a (rule, aggregate) that failed in this process's rules engine.",
    ["domain"],
)
INTAKE_EVENTS = Counter(
    "botlnek_intake_events",
    "Events posted to intakes and answered by this process, accepted or refused.",
    ["domain", "outcome"],
)
WEBHOOK_DELIVERIES = Counter(
    "botlnek_webhook_deliveries",
    "Webhook delivery attempts made by this process's delivery worker, by outcome.",
    ["domain", "outcome"],
)


# Recording, from the places that know: small functions so that each place adds a
# line, and the series a hot path uses are looked up once.


def versions_committed(committed: Sequence) -> None:
    """A listener of announcements.versions_committed (after commit, on the writer)."""
    for domain, count in Tally(version.domain for version in committed).items():
        VERSIONS_COMMITTED.labels(domain).inc(count)


def rule_events_recorded(domain: str, events: Iterable[str]) -> None:
    for event, count in Tally(events).items():
        RULE_EVENTS.labels(domain, event).inc(count)


def rule_evaluations_failed(domain: str, failures: int) -> None:
    if failures:
        RULE_EVALUATION_FAILURES.labels(domain).inc(failures)


def intake_events(domain: str, accepted: int, refused: int) -> None:
    if accepted:
        INTAKE_EVENTS.labels(domain, "accepted").inc(accepted)
    if refused:
        INTAKE_EVENTS.labels(domain, "refused").inc(refused)


def delivery_outcome(status_code: int | None, failure: Exception | None) -> str:
    """How a delivery attempt ended: its answer's class, or why there was none."""
    if status_code:
        return f"{status_code // 100}xx"
    if isinstance(failure, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(failure, httpx.HTTPError | OSError):
        return "connection_error"
    return "not_sent"  # its host did not resolve or is not allowed


def webhooks_delivered(domain: str, outcome: str, attempts: int) -> None:
    """The delivery worker made `attempts` attempts in `domain` ending so."""
    WEBHOOK_DELIVERIES.labels(domain, outcome).inc(attempts)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_requests: dict[tuple[str, str, int], Counter] = {}
_ingests: dict[tuple[str, str], Histogram] = {}


def request_served(request: HttpRequest, status: int, seconds: float) -> None:
    """An API request was answered (ApiGatewayMiddleware, on every request)."""
    method = request.method if request.method in _METHODS else "other"
    match = request.resolver_match  # None: refused before routing, or no route
    route = match.route if match is not None else "unrouted"
    key = (method, route, status // 100)
    counter = _requests.get(key)
    if counter is None:
        counter = _requests[key] = HTTP_REQUESTS.labels(method, route, f"{key[2]}xx")
    counter.inc()
    ingested = getattr(request, "ingested", None)
    if ingested is not None:
        kind, domains = ingested
        for domain in domains:
            histogram = _ingests.get((domain, kind))
            if histogram is None:
                histogram = INGEST_SECONDS.labels(domain, kind)
                _ingests[domain, kind] = histogram
            histogram.observe(seconds)


class LiveSeries:
    """The series one live subscription moves, looked up once: it is open while
    this exists and until close(); each frame sent counts, and a live version's
    delay since its commit is observed."""

    __slots__ = ("_delay", "_open", "_sent")

    def __init__(self, transport: str, kind: str):
        self._sent = FRAMES_SENT.labels(transport, kind)
        self._delay = (
            COMMIT_TO_SEND_SECONDS.labels(transport) if kind == "version" else None
        )
        self._open = LIVE_SUBSCRIPTIONS.labels(transport)
        self._open.inc()

    def sent(self, committed_at: float | None) -> None:
        """A frame was handed to the connection; `committed_at` (Unix time) for a
        live version, None for a replayed one."""
        self._sent.inc()
        if committed_at is not None and self._delay is not None:
            self._delay.observe(max(0.0, time.time() - committed_at))

    def close(self) -> None:
        if self._open is not None:
            self._open.dec()
            self._open = None


def slow_consumer_disconnected(transport: str) -> None:
    SLOW_CONSUMER_DISCONNECTS.labels(transport).inc()


# What the database knows: read when scraped, the same from every process.


class DatabaseGauges:
    """Rule statuses and webhook lag, counted in the database at each scrape (on
    a reader thread: GET /metrics renders there). A failing database leaves them
    out of that scrape rather than failing it."""

    def describe(self):
        return list(self._families())

    def collect(self):
        families = self._families()
        try:
            self._rule_statuses(families[0])
            self._webhooks(families[1], families[2])
        except DatabaseError as exc:
            logger.warning("metrics from the database left out: %s", exc)
            return []
        return families

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "botlnek_rule_statuses",
                "Statuses of (rule, aggregate) pairs, by status.",
                labels=["domain", "status"],
            ),
            GaugeMetricFamily(
                "botlnek_webhook_lag_events",
                "Events not yet delivered by the domain's most-behind unpaused "
                "webhook.",
                labels=["domain"],
            ),
            GaugeMetricFamily(
                "botlnek_webhooks_paused",
                "Paused webhooks of the domain.",
                labels=["domain"],
            ),
        ]

    def _rule_statuses(self, family: GaugeMetricFamily) -> None:
        domain_of = dict(Rule.objects.values_list("id", "domain__key"))
        counts = {
            (domain, status): 0
            for domain in set(domain_of.values())
            for status in RuleStatus.Status.values
        }
        # By (rule, status): the listing index answers it without the table.
        rows = (
            RuleStatus.objects.values_list("rule_id", "status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for rule_id, status, n in rows:
            if rule_id in domain_of:  # else a rule created since the first query
                counts[domain_of[rule_id], status] += n
        for (domain, status), n in sorted(counts.items()):
            family.add_metric([domain, status], n)

    def _webhooks(self, lag: GaugeMetricFamily, paused: GaugeMetricFamily) -> None:
        rows = Webhook.objects.values_list(
            "domain__key",
            "paused",
            "cursor",
            "rule_id",
            "rule__latest_seq",
            "domain__latest_position",
        )
        behind: dict[str, int] = {}
        stopped: dict[str, int] = {}
        for domain, is_paused, cursor, rule_id, seq, position in rows:
            behind.setdefault(domain, 0)
            stopped.setdefault(domain, 0)
            if is_paused:
                stopped[domain] += 1
                continue
            latest = seq if rule_id is not None else position
            behind[domain] = max(behind[domain], latest - cursor)
        for domain in sorted(behind):
            lag.add_metric([domain], behind[domain])
            paused.add_metric([domain], stopped[domain])


REGISTRY.register(DatabaseGauges())


# GET /metrics


@require_safe
async def scrape(request: HttpRequest) -> HttpResponse:
    """The process's metrics in Prometheus' text format (or OpenMetrics, when the
    scraper asks for it), for a read token of every domain unless
    BOTLNEK_PUBLIC_METRICS=1. ApiGatewayMiddleware checked the token already; this
    checks again, so that no route that reaches this view skips it."""
    token = getattr(request, "api_token", None)
    if token is None and not settings.BOTLNEK_PUBLIC_METRICS:
        raw = tokens.bearer(request)
        try:
            token = await tokens.authenticate(raw) if raw else None
        except DatabaseError:
            return error_response(
                503, "unavailable", "the database is unreachable; retry shortly"
            )
        if token is None:
            return unauthorized("send 'Authorization: Bearer <token>' of a read token")
    if token is not None and token.domains:
        return error_response(
            403,
            "forbidden",
            "this token is limited to some domains; metrics cover every domain",
        )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = await db.read(encode, REGISTRY)
    return HttpResponse(body, content_type=content_type)
