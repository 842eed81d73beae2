"""Dashboard pages: server-rendered, their live parts pushed over /ws/dashboard.

A page with live parts says so with @live_parts(render): the dashboard socket
resolves the page's own URL to its view and calls `render` with the URL's
arguments whenever the page's domain (or aggregate) moves.
"""

import json
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views.decorators.http import require_safe

from aggregates import store
from aggregates.errors import ApiError, NotFound, StoreError
from aggregates.intakes import read as intake_read
from aggregates.intakes.read import intake_json
from aggregates.intakes.take import saved_preview
from aggregates.models import (
    Aggregate,
    Domain,
    Intake,
    Receipt,
    Rule,
    RuleEvent,
    RuleStatus,
    Version,
    Webhook,
)
from aggregates.picture import picture
from aggregates.rules import read as rules_read
from aggregates.rules.definition import CompiledRule, definition_json
from aggregates.values import utc
from aggregates.webhooks.read import webhook_json

TIMELINE_PAGE = 25
NEWEST_SOURCES = 50
FEED = 20


def dashboard_view(view):
    """Login required, unless the operator made the dashboard public (read-only)."""

    @require_safe  # the dashboard only reads
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not (settings.BOTLNEK_PUBLIC_DASHBOARD or request.user.is_authenticated):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapped


LiveRender = Callable[..., str]


def live_parts(render_live: LiveRender):
    """Mark a page as live: `render_live(query, **url kwargs)` answers its live
    parts as htmx out-of-band swaps — whole replacements of the current state, so
    a duplicate push changes nothing and a missed one is made good by the next."""

    def mark(view):
        view.live_parts = render_live
        return view

    return mark


def _oob(template: str, context: dict) -> str:
    return render_to_string(template, {**context, "oob": True})


def _found_or_404(find: Callable, *args):
    try:
        return find(*args)
    except NotFound as exc:
        raise Http404(exc.detail) from None


# Home: every domain and the newest versions


def _feed(domain: Domain | None = None) -> list[Version]:
    versions = Version.objects.select_related("aggregate", "domain", "source")
    if domain is not None:
        versions = versions.filter(domain=domain)
    return list(versions.order_by("-id")[:FEED])


def home_context() -> dict:
    return {"domains": list(Domain.objects.all()), "feed": _feed()}


def home_live(query: QueryDict) -> str:
    return _oob("dashboard/partials/home_live.html", home_context())


@live_parts(home_live)
@dashboard_view
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/home.html", {**home_context(), "live": True})


# A domain: its aggregates, newest first


def domain_context(domain: Domain, prefix: str = "", cursor: str = "") -> dict:
    try:
        page = store.list_aggregates(
            domain, limit=50, cursor=cursor or None, prefix=prefix or None
        )
    except StoreError:  # a cursor that is not one: the first page
        page = store.list_aggregates(domain, limit=50, cursor=None, prefix=None)
    return {
        "domain": domain,
        "aggregates": page["aggregates"],
        "next_cursor": page["next_cursor"],
        "prefix": prefix,
        **_readiness(domain, page["aggregates"]),
        "webhooks": _webhooks(domain),
        "intakes": [
            intake_json(intake)
            for intake in Intake.objects.filter(domain=domain).order_by("name")
        ],
    }


def _webhooks(domain: Domain) -> list[dict]:
    """Each webhook's health at a glance, and its latest attempts."""
    found = []
    for webhook in Webhook.objects.filter(domain=domain).select_related(
        "domain", "rule"
    ):
        health = webhook_json(webhook)
        if webhook.paused:
            state = "paused"
        elif webhook.failing_since:
            state = "failing"
        elif health["lag"]:
            state = "lagging"
        else:
            state = "healthy"
        health["state"] = state
        health["recent"] = list(webhook.deliveries.order_by("-id")[:5])
        found.append(health)
    return found


def _readiness(domain: Domain, aggregates: list[dict]) -> dict:
    """The readiness matrix: each aggregate's status under each rule, and each
    rule's counts, late first."""
    rules = list(Rule.objects.filter(domain=domain).order_by("name"))
    if not rules:
        return {"rules": []}
    counts = rules_read.status_counts(rules)
    statuses = rules_read.statuses_of(domain.key, [row["key"] for row in aggregates])
    compiled = [CompiledRule.of(rule) for rule in rules]  # once, not once a row
    for row in aggregates:
        by_rule = statuses.get(row["key"], {})
        row["readiness"] = [
            {
                "rule": rule.name,
                "applies": rule.matches(row["key"]),
                "status": by_rule.get(rule.name),
            }
            for rule in compiled
        ]
    for rule in rules:
        rule.counts = counts[rule.pk]
    return {"rules": rules}


def domain_live(query: QueryDict, domain: str) -> str:
    context = domain_context(store.get_domain(domain), query.get("prefix", ""))
    return _oob("dashboard/partials/domain_live.html", context)


@live_parts(domain_live)
@dashboard_view
def domain_page(request: HttpRequest, domain: str) -> HttpResponse:
    found = _found_or_404(store.get_domain, domain)
    cursor = request.GET.get("cursor", "")
    context = domain_context(found, request.GET.get("prefix", ""), cursor)
    context["live"] = not cursor  # later pages stay as they were rendered
    if request.htmx and request.htmx.target == "aggregate-rows":
        return render(request, "dashboard/partials/aggregate_rows.html", context)
    return render(request, "dashboard/domain.html", context)


# An aggregate: its state, timeline and picture, as of a version


def _number(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _timeline(found: Aggregate, before: int) -> list[Version]:
    """A page of versions below `before`, newest first, each with its receipts."""
    timeline = list(
        Version.objects.filter(aggregate=found, number__lt=before)
        .select_related("source")
        .order_by("-number")[:TIMELINE_PAGE]
    )
    receipts: dict[int, list[Receipt]] = {}
    if timeline:
        numbers = [v.number for v in timeline]
        for receipt in found.receipts.filter(
            version__gte=min(numbers), version__lte=max(numbers)
        ).order_by("-id"):
            receipts.setdefault(receipt.version, []).append(receipt)
    for version in timeline:
        version.receipt_list = receipts.get(version.number, [])
    return timeline


def _newest_by_collection(found: Aggregate, as_of: int) -> dict[str, list[Version]]:
    # Versions, not sources: the (aggregate, number) index serves the newest first
    # without sorting every source of a big aggregate.
    newest = (
        Version.objects.filter(aggregate=found, number__lte=as_of)
        .select_related("source")
        .order_by("-number")[:NEWEST_SOURCES]
    )
    collections: dict[str, list[Version]] = {}
    for version in newest:
        collections.setdefault(version.source.collection, []).append(version)
    return collections


def _counts_as_of(found: Aggregate, as_of: int) -> dict[str, int]:
    counts = (
        Version.objects.filter(aggregate=found, number=as_of)
        .values_list("counts", flat=True)
        .first()
    )
    return dict(sorted((counts or {}).items()))


def _added(found: Aggregate, after: int, up_to: int) -> list[Version]:
    """The first sources added after version `after`, up to version `up_to`."""
    return list(
        Version.objects.filter(aggregate=found, number__gt=after, number__lte=up_to)
        .select_related("source")
        .order_by("number")[:NEWEST_SOURCES]
    )


def _why(found: Aggregate) -> list[dict]:
    """Each rule of the domain that matches the aggregate: where it stands, why,
    and the receipts of its events."""
    whys = []
    rows = {row.rule_id: row for row in found.rule_statuses.all()}
    for rule in Rule.objects.filter(domain=found.domain_id).order_by("name"):
        compiled = CompiledRule.of(rule)
        if not compiled.matches(found.key):
            continue
        why = rules_read.why(found.domain.key, rule.name, found.key)
        why["mentions"] = sorted({ref.collection for ref in compiled.references})
        why["row"] = rows.get(rule.pk)
        why["receipts"] = list(
            found.receipts.filter(rule=rule.name).order_by("-id")[:10]
        )
        whys.append(why)
    return whys


def aggregate_context(
    found: Aggregate,
    as_of: int | None = None,
    before: int | None = None,
    diff_from: int | None = None,
) -> dict:
    """The aggregate page as of a version (default: the latest)."""
    as_of = min(as_of or found.version, found.version)
    timeline = _timeline(found, min(before or as_of + 1, as_of + 1))
    counts = _counts_as_of(found, as_of)
    collections = _newest_by_collection(found, as_of)
    diff = None
    if diff_from is not None and diff_from < as_of:
        diff = _added(found, diff_from, as_of)
    # Rules speak of the latest version only.
    whys = _why(found) if as_of == found.version else []
    # A lane for each collection the aggregate's rules look for, there or not.
    lanes = list(counts)
    for why in whys:
        lanes += [ref for ref in why["mentions"] if ref not in lanes]
    deadlines = [(why["rule"], utc(why["deadline"])) for why in whys if why["deadline"]]
    return {
        "domain": found.domain,
        "aggregate": found,
        "as_of": as_of,
        "latest": as_of == found.version,
        "counts": counts,
        "collections": [(name, collections.get(name, [])) for name in counts],
        "timeline": timeline,
        "older": timeline[-1].number if timeline and timeline[-1].number > 1 else None,
        "picture": picture(timeline, lanes, deadlines),
        "diff_from": diff_from,
        "diff": diff,
        # Sources added between the two versions beyond the ones listed.
        "diff_more": as_of - diff_from - len(diff) if diff is not None else 0,
        "whys": whys,
    }


def aggregate_live(query: QueryDict, domain: str, aggregate: str) -> str:
    context = aggregate_context(store.get_aggregate(domain, aggregate))
    return _oob("dashboard/partials/aggregate_live.html", context)


@live_parts(aggregate_live)
@dashboard_view
def aggregate_page(request: HttpRequest, domain: str, aggregate: str) -> HttpResponse:
    found = _found_or_404(store.get_aggregate, domain, aggregate)
    context = aggregate_context(
        found,
        as_of=_number(request, "version"),
        before=_number(request, "before"),
        diff_from=_number(request, "diff"),
    )
    # As of an older version, or an older page of the timeline: nothing newer.
    context["live"] = context["latest"] and not request.GET.get("before")
    return render(request, "dashboard/aggregate.html", context)


# A rule: its definition, counts (late first) and event log


EVENT_LOG = 50


def rule_context(domain: str, rule: str) -> dict:
    found = rules_read.get_rule(domain, rule)
    counts = rules_read.status_counts([found])[found.pk]
    late = list(
        RuleStatus.objects.filter(rule=found, status=RuleStatus.Status.LATE)
        .select_related("aggregate")
        .order_by("deadline", "id")[:20]
    )
    events = list(RuleEvent.objects.filter(rule=found).order_by("-seq")[:EVENT_LOG])
    return {
        "domain": found.domain,
        "rule": found,
        "definition": definition_json(found),
        # A once rule is never `ready` (it fires); an every rule never `fired`.
        "counts": [
            (status, counts[status])
            for status in rules_read.STATUS_ORDER
            if status != ("ready" if found.trigger == Rule.Trigger.ONCE else "fired")
        ],
        "late": late,
        "events": events,
    }


def rule_live(query: QueryDict, domain: str, rule: str) -> str:
    return _oob("dashboard/partials/rule_live.html", rule_context(domain, rule))


@live_parts(rule_live)
@dashboard_view
def rule_page(request: HttpRequest, domain: str, rule: str) -> HttpResponse:
    context = _found_or_404(rule_context, domain, rule)
    return render(request, "dashboard/rule.html", {**context, "live": True})


# An intake: its definition, and a preview of what an event would register


def _header_lines(text: str) -> dict[str, str]:
    lines = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, _, value in lines}


@dashboard_view
def intake_page(request: HttpRequest, domain: str, intake: str) -> HttpResponse:
    """The preview runs on GET: it saves nothing (the dashboard only reads)."""
    found = _found_or_404(intake_read.get_intake, domain, intake)
    body, headers = request.GET.get("body", ""), request.GET.get("headers", "")
    context = {
        "domain": found.domain,
        "intake": intake_json(found),
        "body": body,
        "headers": headers,
    }
    if body.strip():
        context.update(_preview(domain, found.name, body, _header_lines(headers)))
    return render(request, "dashboard/intake.html", context)


def _preview(domain: str, intake: str, text: str, headers: dict[str, str]) -> dict:
    binary = any(name.lower() in ("ce-id", "ce-specversion") for name in headers)
    try:
        body = json.loads(text)
    except ValueError as exc:
        if not binary:
            return {"problem": f"The body is not JSON: {exc}."}
        body = text  # binary mode takes any content
    try:
        results = saved_preview(domain, intake, body, headers)
    except ApiError as exc:
        return {"problem": exc.detail}
    for result in results:
        result["keys_json"] = json.dumps(result.get("keys"), ensure_ascii=False)
        result["attrs_json"] = json.dumps(result.get("attrs"), ensure_ascii=False)
    return {"results": results}
