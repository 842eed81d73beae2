"""The JSON API (docs/api.md), served by Django Ninja with async views.

Views stay thin: check the token's scope, run one store function off the event loop,
answer JSON. Errors of every kind leave in the one shape {"error", "detail",
"fields"?} (api_base.py). The domains, aggregates, sources and receipts are here;
the live stream, rules and webhooks are routers of their packages.
"""

import logging
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponse,
)
from ninja import Query
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError

from aggregates import db, idempotency, store
from aggregates.access import (
    ERRORS,
    WRITE_ERRORS,
    NamePage,
    Page,
    json_response,
    needs,
    require_publish,
    require_read,
    require_write,
    spend_write,
    token_of,
)
from aggregates.api_base import (
    BearerToken,
    BotlnekAPI,
    JsonParser,
    install_error_handlers,
    parse_json,
)
from aggregates.errors import (
    ApiError,
    StoreError,
    field_errors,
    named,
    summary,
)
from aggregates.intakes.api import router as intakes_router
from aggregates.live.api import router as live_router
from aggregates.rules.api import router as rules_router
from aggregates.schemas import (
    MAX_BATCH,
    AggregateList,
    AggregateState,
    AggregateVersions,
    BatchAnswer,
    DomainIn,
    DomainList,
    DomainOut,
    DomainVersions,
    Error,
    Receipt,
    ReceiptIn,
    ReceiptList,
    SourceAnswer,
    SourceIn,
)
from aggregates.store import group_commit
from aggregates.webhooks.api import router as webhooks_router

logger = logging.getLogger("botlnek.api")


api = BotlnekAPI(
    title="Botlnek",
    version="1",
    description="Aggregates asynchronous data-availability events.",
    parser=JsonParser(),
    auth=BearerToken(),
    urls_namespace="api",
)

# Domains


@api.post(
    "/domains",
    response={200: DomainOut, 201: DomainOut, 409: Error, **WRITE_ERRORS},
    summary="Create a domain",
    openapi_extra=needs("write-all"),
)
async def create_domain(request: HttpRequest, payload: DomainIn):
    require_write(request, None)
    spend_write(request)
    domain, created = await db.write(store.create_domain, payload.key, payload.attrs)
    return json_response(store.domain_json(domain), 201 if created else 200)


@api.get(
    "/domains",
    response={200: DomainList, **ERRORS},
    summary="List domains",
    openapi_extra=needs("read"),
)
async def list_domains(request: HttpRequest, query: Query[NamePage]):
    only = token_of(request).domains
    domains = await db.read(
        store.list_domains, only, limit=query.limit, after=query.after
    )
    return json_response({"domains": domains})


@api.get(
    "/domains/{domain}",
    response={200: DomainOut, **ERRORS},
    summary="A domain",
    openapi_extra=needs("read"),
)
async def get_domain(request: HttpRequest, domain: str):
    require_read(request, domain)
    return json_response(store.domain_json(await db.read(store.get_domain, domain)))


# Aggregates and their versions


class AggregatePage(Page):
    cursor: str | None = None
    prefix: str | None = Field(None, max_length=200)


def _aggregate_page(domain: str, query: AggregatePage) -> dict:
    return store.list_aggregates(
        store.get_domain(domain),
        limit=query.limit,
        cursor=query.cursor,
        prefix=query.prefix,
    )


@api.get(
    "/domains/{domain}/aggregates",
    response={200: AggregateList, **ERRORS},
    summary="Aggregates of a domain, most recently updated first",
    openapi_extra=needs("read"),
)
async def list_aggregates(
    request: HttpRequest, domain: str, query: Query[AggregatePage]
):
    require_read(request, domain)
    return json_response(await db.read(_aggregate_page, domain, query))


class AsOf(BaseModel):
    version: int | None = Field(None, ge=1)


@api.get(
    "/domains/{domain}/aggregates/{aggregate}",
    response={200: AggregateState, **ERRORS},
    summary="An aggregate's state, latest or as of a version",
    openapi_extra=needs("read"),
)
async def get_aggregate(
    request: HttpRequest, domain: str, aggregate: str, query: Query[AsOf]
):
    require_read(request, domain)
    state = await db.read(store.state_json_as_of, domain, aggregate, query.version)
    return HttpResponse(state, content_type="application/json")


class AfterVersion(Page):
    after: int = Field(0, ge=0)


def _aggregate_versions(domain: str, key: str, query: AfterVersion) -> dict:
    versions = store.aggregate_versions(
        store.get_aggregate(domain, key), after=query.after, limit=query.limit
    )
    return {"versions": versions}


@api.get(
    "/domains/{domain}/aggregates/{aggregate}/versions",
    response={200: AggregateVersions, **ERRORS},
    summary="An aggregate's versions after version N, oldest first",
    openapi_extra=needs("read"),
)
async def list_aggregate_versions(
    request: HttpRequest, domain: str, aggregate: str, query: Query[AfterVersion]
):
    require_read(request, domain)
    return json_response(await db.read(_aggregate_versions, domain, aggregate, query))


class AfterPosition(Page):
    after_position: int = Field(0, ge=0)


def _domain_versions(key: str, query: AfterPosition) -> dict:
    domain = store.get_domain(key)
    versions = store.domain_versions(
        domain, after_position=query.after_position, limit=query.limit
    )
    return {"versions": versions, "latest_position": domain.latest_position}


@api.get(
    "/domains/{domain}/versions",
    response={200: DomainVersions, **ERRORS},
    summary="Catch-up: every version of a domain after a position",
    openapi_extra=needs("read"),
)
async def list_domain_versions(
    request: HttpRequest, domain: str, query: Query[AfterPosition]
):
    require_read(request, domain)
    return json_response(await db.read(_domain_versions, domain, query))


# Sources

_SOURCE_SCHEMA = SourceIn.model_json_schema()
_SOURCES_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _SOURCE_SCHEMA,
                    {
                        "type": "array",
                        "items": _SOURCE_SCHEMA,
                        "minItems": 1,
                        "maxItems": MAX_BATCH,
                    },
                ]
            }
        }
    },
}


def _validate_sources(payload: Any) -> tuple[list[store.NewSource], bool]:
    """The sources of a body holding one object or a batch, and whether a batch."""
    batch = isinstance(payload, list)
    items = payload if batch else [payload]
    if batch and len(items) > MAX_BATCH:
        raise ApiError(
            413,
            "payload_too_large",
            f"a batch holds at most {MAX_BATCH} sources, not {len(items)}",
        )
    if batch and not items:
        raise ApiError(400, "invalid", "a batch must hold at least one source")
    sources = []
    fields: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"[{index}]." if batch else ""
        try:
            valid = SourceIn.model_validate(item)
        except PydanticValidationError as exc:
            fields.update(field_errors(exc.errors(), prefix=where))
            continue
        sources.append(
            store.NewSource(
                valid.domain, valid.aggregate, valid.collection, valid.keys, valid.attrs
            )
        )
    if fields:
        raise ApiError(400, "invalid", summary(fields), named(fields))
    return sources, batch


@api.post(
    "/sources",
    response={
        200: SourceAnswer | BatchAnswer,
        201: SourceAnswer,
        409: Error,
        **WRITE_ERRORS,
    },
    summary="Register a source, or a batch of them all or nothing",
    openapi_extra=needs("publish", requestBody=_SOURCES_BODY),
)
async def post_sources(request: HttpRequest):
    sources, batch = _validate_sources(parse_json(request))
    for domain in {source.domain for source in sources}:
        require_publish(request, domain)
    spend_write(request)
    if not batch:
        # Posts arriving together share one transaction, each answered alone.
        result = await group_commit.register(sources[0])
        request.ingested = ("single", (result.domain,))  # timed by the middleware
        return json_response(result.as_json(), 201 if result.created else 200)
    try:
        results = await db.write(store.register_sources, sources)
    except StoreError as exc:
        if exc.index is None:
            raise
        field = f"[{exc.index}].{exc.field}"
        detail = f"item {exc.index}: {exc.detail}; nothing was written"
        raise ApiError(exc.status, exc.code, detail, {field: exc.detail}) from None
    request.ingested = ("batch", sorted({r.domain for r in results}))
    return json_response({"results": [r.as_json() for r in results]})


# Receipts


@api.post(
    "/receipts",
    response={201: Receipt, 422: Error, **WRITE_ERRORS},
    summary="Record that a subscriber acted (or failed to act) on a version",
    openapi_extra=needs("write", parameters=[idempotency.PARAMETER]),
)
async def post_receipt(request: HttpRequest, payload: ReceiptIn):
    require_write(request, payload.domain)
    spend_write(request)
    return await idempotency.respond(
        request, 201, store.record_receipt, **payload.model_dump()
    )


@api.get(
    "/domains/{domain}/aggregates/{aggregate}/receipts",
    response={200: ReceiptList, **ERRORS},
    summary="An aggregate's receipts, newest first",
    openapi_extra=needs("read"),
)
async def list_receipts(
    request: HttpRequest, domain: str, aggregate: str, query: Query[Page]
):
    require_read(request, domain)
    receipts = await db.read(store.list_receipts, domain, aggregate, limit=query.limit)
    return json_response({"receipts": receipts})


# Live, rules, webhooks and intakes (their packages' api.py)

api.add_router("", live_router)
api.add_router("", rules_router)
api.add_router("", webhooks_router)
api.add_router("", intakes_router)
install_error_handlers(api)
