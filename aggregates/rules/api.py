"""The rules API: definitions, the event log, statuses, why, receipts, preview."""

from typing import Literal

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router
from pydantic import BaseModel, ConfigDict, Field, field_validator

from aggregates import db, idempotency, leases
from aggregates.access import (
    ERRORS,
    WRITE_ERRORS,
    NamePage,
    Page,
    json_response,
    needs,
    require_read,
    require_write,
    spend_write,
)
from aggregates.rules import read, write
from aggregates.rules.definition import RuleIn
from aggregates.schemas import (
    Error,
    LeaseOut,
    PreviewOut,
    ReceiptList,
    RuleEventList,
    RuleList,
    RuleOut,
    RuleStatusList,
    WhyOut,
)
from aggregates.streams import RuleLog
from aggregates.values import isoformat

router = Router(tags=["rules"])
RULES = "/domains/{domain}/rules"


# The preview's path comes first: it would otherwise read as a rule named preview.
@router.post(
    f"{RULES}/preview",
    response={200: PreviewOut, **ERRORS},
    summary="Dry run: what a rule would record on the whole history, nothing saved",
    openapi_extra=needs("read"),
)
async def preview_rule(
    request: HttpRequest, domain: str, payload: RuleIn, query: Query[Page]
):
    require_read(request, domain)
    return json_response(
        await db.read(read.preview, domain, payload, limit=query.limit)
    )


@router.post(
    RULES,
    response={201: RuleOut, 409: Error, 422: Error, **WRITE_ERRORS},
    summary="Create a rule",
    openapi_extra=needs("write", parameters=[idempotency.PARAMETER]),
)
async def create_rule(request: HttpRequest, domain: str, payload: RuleIn):
    require_write(request, domain)
    spend_write(request)
    return await idempotency.respond(request, 201, write.create_rule, domain, payload)


@router.get(
    RULES,
    response={200: RuleList, **ERRORS},
    summary="A domain's rules",
    openapi_extra=needs("read"),
)
async def list_rules(request: HttpRequest, domain: str, query: Query[NamePage]):
    require_read(request, domain)
    rules = await db.read(read.list_rules, domain, limit=query.limit, after=query.after)
    return json_response({"rules": rules})


@router.get(
    f"{RULES}/{{rule}}",
    response={200: RuleOut, **ERRORS},
    summary="A rule",
    openapi_extra=needs("read"),
)
async def get_rule(request: HttpRequest, domain: str, rule: str):
    require_read(request, domain)
    return json_response(await db.read(read.read_rule, domain, rule))


@router.put(
    f"{RULES}/{{rule}}",
    response={200: RuleOut, 409: Error, **WRITE_ERRORS},
    summary="Replace a rule's definition (its log and seq are kept)",
    openapi_extra=needs("write"),
)
async def replace_rule(request: HttpRequest, domain: str, rule: str, payload: RuleIn):
    require_write(request, domain)
    spend_write(request)
    return json_response(await db.write(write.replace_rule, domain, rule, payload))


@router.delete(
    f"{RULES}/{{rule}}",
    response={204: None, **WRITE_ERRORS},
    summary="Remove a rule and its events",
    openapi_extra=needs("write"),
)
async def delete_rule(request: HttpRequest, domain: str, rule: str):
    require_write(request, domain)
    spend_write(request)
    await db.write(write.delete_rule, domain, rule)
    return HttpResponse(status=204)


class AfterSeq(Page):
    after_seq: int = Field(0, ge=0)


@router.get(
    f"{RULES}/{{rule}}/events",
    response={200: RuleEventList, **ERRORS},
    summary="A rule's events after a seq, in seq order",
    openapi_extra=needs("read"),
)
async def list_events(
    request: HttpRequest, domain: str, rule: str, query: Query[AfterSeq]
):
    require_read(request, domain)
    log = RuleLog(domain, rule)
    latest, events = await db.read(log.read, query.after_seq, query.limit)
    return json_response({"events": events, "latest_seq": latest})


class StatusPage(Page):
    status: Literal["waiting", "ready", "late", "fired"] | None = None
    cursor: str | None = None


@router.get(
    f"{RULES}/{{rule}}/aggregates",
    response={200: RuleStatusList, **ERRORS},
    summary="Where the rule stands for each aggregate, most recently changed first",
    openapi_extra=needs("read"),
)
async def list_statuses(
    request: HttpRequest, domain: str, rule: str, query: Query[StatusPage]
):
    require_read(request, domain)
    page = await db.read(
        read.list_statuses,
        domain,
        rule,
        status=query.status,
        limit=query.limit,
        cursor=query.cursor,
    )
    return json_response(page)


@router.get(
    f"{RULES}/{{rule}}/aggregates/{{aggregate}}",
    response={200: WhyOut, **ERRORS},
    summary="Why: the rule's status for an aggregate, each comparison evaluated now",
    openapi_extra=needs("read"),
)
async def why(request: HttpRequest, domain: str, rule: str, aggregate: str):
    require_read(request, domain)
    return json_response(await db.read(read.why, domain, rule, aggregate))


class ReceiptPage(Page):
    watcher: str | None = Field(None, max_length=100)


@router.get(
    f"{RULES}/{{rule}}/receipts",
    response={200: ReceiptList, **ERRORS},
    summary="Receipts of the rule's events, highest seq first",
    openapi_extra=needs("read"),
)
async def list_receipts(
    request: HttpRequest, domain: str, rule: str, query: Query[ReceiptPage]
):
    require_read(request, domain)
    receipts = await db.read(
        read.rule_receipts, domain, rule, watcher=query.watcher, limit=query.limit
    )
    return json_response({"receipts": receipts})


# Leases: one `botlnek watch --rule` of a name at a time runs the rule's events.


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    watcher: str = Field(min_length=1, max_length=100)
    holder: str = Field(min_length=1, max_length=100)
    seconds: int = Field(30, ge=5, le=3600)

    @field_validator("seconds", mode="before")
    @classmethod
    def _whole_number(cls, value):
        # JSON has one kind of number: 30.0 is the integer 30.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def _lease(domain: str, rule: str, payload: LeaseIn) -> tuple[bool, dict]:
    found = read.get_rule(domain, rule)
    name = f"watch:{found.pk}:{payload.watcher}"
    held, lease = leases.acquire(name, payload.holder, payload.seconds)
    body = {
        "watcher": payload.watcher,
        "holder": lease.holder,
        "expires_at": isoformat(lease.expires_at),
    }
    return held, body


@router.post(
    f"{RULES}/{{rule}}/leases",
    response={200: LeaseOut, 409: LeaseOut, **WRITE_ERRORS},
    summary="Take or renew the lease that lets one watcher of a name run events",
    openapi_extra=needs("write"),
)
async def take_lease(request: HttpRequest, domain: str, rule: str, payload: LeaseIn):
    require_write(request, domain)
    held, body = await db.write(_lease, domain, rule, payload)
    if not held:
        body |= {
            "error": "conflict",
            "detail": f"watcher {payload.watcher!r} is held by another holder "
            f"until {body['expires_at']}",
        }
    return json_response(body, 200 if held else 409)


def _release(domain: str, rule: str, watcher: str, holder: str) -> None:
    found = read.get_rule(domain, rule)
    leases.release(f"watch:{found.pk}:{watcher}", holder)


@router.delete(
    f"{RULES}/{{rule}}/leases/{{watcher}}",
    response={204: None, **WRITE_ERRORS},
    summary="Give a watcher's lease up (its holder only)",
    openapi_extra=needs("write"),
)
async def release_lease(
    request: HttpRequest, domain: str, rule: str, watcher: str, holder: str
):
    require_write(request, domain)
    await db.write(_release, domain, rule, watcher, holder)
    return HttpResponse(status=204)
