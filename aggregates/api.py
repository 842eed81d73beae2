"""The JSON API (docs/api.md), served by Django Ninja with async views.

Views stay thin: check the token's scope, run one store function off the event loop,
answer JSON. Errors of every kind leave through the handlers at the bottom in the
one shape {"error", "detail", "fields"?}.
"""

import json
import logging
import math
import re
from typing import Any, Literal

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    StreamingHttpResponse,
)
from ninja import NinjaAPI, Query
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError

from aggregates import db, idempotency, limits, store
from aggregates.access import (
    ERRORS,
    SCOPE_KEY,
    WRITE_ERRORS,
    Page,
    json_response,
    needs,
    require_publish,
    require_read,
    require_write,
    spend_write,
    token_of,
)
from aggregates.errors import (
    ApiError,
    StoreError,
    error_response,
    field_errors,
    summary,
)
from aggregates.live import sse
from aggregates.live.subscription import SubscribeIn
from aggregates.models import ApiToken
from aggregates.rules.api import router as rules_router
from aggregates.rules.read import get_rule
from aggregates.schemas import (
    MAX_BATCH,
    AggregateList,
    AggregateState,
    AggregateVersions,
    BatchAnswer,
    DomainIn,
    DomainKey,
    DomainList,
    DomainOut,
    DomainVersions,
    Error,
    Key,
    Receipt,
    ReceiptIn,
    ReceiptList,
    SourceAnswer,
    SourceIn,
)
from aggregates.store import group_commit
from aggregates.webhooks.api import router as webhooks_router

logger = logging.getLogger("botlnek.api")
MAX_BODY = 1024 * 1024


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no double: it would come back as Infinity, which is not.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


class JsonParser(Parser):
    """Strict JSON bodies: the right Content-Type, at most 1 MiB, no NaN/Infinity."""

    def parse_body(self, request: HttpRequest) -> Any:
        return parse_json(request)


def parse_json(request: HttpRequest) -> Any:
    content_type = request.content_type or ""
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        )
    body = request.body
    if len(body) > MAX_BODY:
        raise _too_large()
    try:
        return json.loads(
            body, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:
        raise ApiError(
            400, "invalid_json", f"the body is not valid JSON: {exc}"
        ) from None


def _too_large() -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body must be at most {MAX_BODY} bytes"
    )


class BearerToken(HttpBearer):
    """Documents the scheme; ApiGatewayMiddleware already matched the token."""

    async def __call__(self, request: HttpRequest) -> ApiToken | None:
        # Async, so that Ninja awaits it instead of hopping to a thread.
        return self.authenticate(request, "")

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return getattr(request, "api_token", None)


class BotlnekAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """The document, each operation's security requirement naming the token
        scope it needs as its role (Ninja would add to the list, not replace)."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                if SCOPE_KEY in operation:
                    operation["security"] = [{"BearerToken": [operation[SCOPE_KEY]]}]
        return schema


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
async def list_domains(request: HttpRequest):
    only = token_of(request).domains
    return json_response({"domains": await db.read(store.list_domains, only)})


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
        raise ApiError(400, "invalid", summary(fields), fields)
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


# Live: Server-Sent Events


class StreamQuery(BaseModel):
    domain: DomainKey
    aggregate: Key | None = None
    mode: Literal["full", "delta"] = "full"
    after_position: int | None = Field(None, ge=0)
    rule: Key | None = None
    after_seq: int | None = Field(None, ge=0)


@api.get(
    "/stream",
    response={200: None, 429: Error, **ERRORS},
    summary="New versions (id: the position), or a rule's events (id: the seq), "
    "as Server-Sent Events",
    openapi_extra=needs("read"),
)
async def stream(request: HttpRequest, query: Query[StreamQuery]):
    require_read(request, query.domain)
    if query.rule is not None:
        await db.read(get_rule, query.domain, query.rule)  # 404 if it is not there
    elif not await db.read(store.latest_positions, [query.domain]):
        raise ApiError(404, "not_found", f"domain {query.domain!r} does not exist")
    after = query.after_seq if query.rule else query.after_position
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:
        if not re.fullmatch(r"[0-9]{1,18}", last_event_id.strip()):
            detail = "must be the id (position or seq) of the last event received"
            raise ApiError(400, "invalid", detail, {"Last-Event-ID": detail})
        after = int(last_event_id)
    cursor = {"after_seq": after} if query.rule else {"after_position": after}
    try:
        subscription = SubscribeIn(
            type="subscribe",
            id="sse",
            domain=query.domain,
            aggregate=query.aggregate,
            mode=query.mode,
            rule=query.rule,
            **cursor,
        )
    except PydanticValidationError as exc:
        fields = field_errors(exc.errors(), whole="query")
        raise ApiError(400, "invalid", summary(fields), fields) from None
    holder = limits.holder_of(token_of(request))
    if not limits.connections().open(holder):
        detail = limits.connections().refusal(holder)
        raise ApiError(429, "too_many_connections", detail, {"token": detail})
    events = sse.EventStream(
        subscription,
        request.http_stream,
        release=lambda: limits.connections().close(holder),
    )
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let proxies pass events on at once
    return response


# Rules and webhooks (aggregates/rules/api.py, aggregates/webhooks/api.py)

api.add_router("", rules_router)
api.add_router("", webhooks_router)


# Errors in one shape


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return exc.response()


@api.exception_handler(StoreError)
def _store_error(request, exc: StoreError):
    fields = {exc.field: exc.detail} if exc.field else None
    return error_response(exc.status, exc.code, exc.detail, fields)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    fields = field_errors(exc.errors)
    return error_response(400, "invalid", summary(fields), fields)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc: AuthenticationError):
    return error_response(401, "unauthorized", "send 'Authorization: Bearer <token>'")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, ApiError):  # raised by JsonParser
        return exc.__cause__.response()
    return error_response(exc.status_code, "error", str(exc))


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc: RequestDataTooBig):
    return _too_large().response()


@api.exception_handler(Http404)
def _not_found(request, exc: Http404):
    return error_response(404, "not_found", str(exc) or "not found")


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request, exc: DatabaseError):
    # A lost connection (PostgreSQL restarting, say), a lock waited out, a full
    # disk. A write committed whole or not at all; if the connection broke during
    # the commit, the client cannot know which, but registering is idempotent.
    logger.warning("database unavailable: %s %s: %s", request.method, request.path, exc)
    return error_response(
        503,
        "unavailable",
        "the database failed or is unreachable; retry (registering a source or a "
        "domain again is safe: it is idempotent)",
    )


@api.exception_handler(Exception)
def _server_error(request, exc: Exception):
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(
        500, "internal_error", "the server failed on this request; retrying is safe"
    )
