"""The intakes API: definitions, their events, and the preview."""

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router
from pydantic import BaseModel, ConfigDict, Field

from aggregates import db, idempotency
from aggregates.access import (
    ERRORS,
    WRITE_ERRORS,
    NamePage,
    json_response,
    needs,
    require_publish,
    require_read,
    require_write,
    spend_write,
)
from aggregates.intakes import read, write
from aggregates.intakes.definition import IntakeIn
from aggregates.intakes.events import BATCH, STRUCTURED
from aggregates.intakes.take import lower_headers, mappings, preview, take
from aggregates.intakes.tally import tally
from aggregates.schemas import (
    Error,
    EventResults,
    IntakeList,
    IntakeOut,
    IntakePreviewOut,
)

router = Router(tags=["intakes"])
INTAKES = "/domains/{domain}/intakes"


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    intake: IntakeIn
    body: Any = Field(description="the request body: a JSON value")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="the request's headers (ce-* for binary mode, content-type)",
    )


# The preview's path comes first: it would otherwise read as an intake's.
@router.post(
    f"{INTAKES}/preview",
    response={200: IntakePreviewOut, **ERRORS},
    summary="Dry run: what an intake would register for a request, nothing saved",
    openapi_extra=needs("read"),
)
async def preview_intake(request: HttpRequest, domain: str, payload: PreviewIn):
    require_read(request, domain)
    results = await db.read(
        preview, domain, payload.intake, payload.body, payload.headers
    )
    return json_response({"results": results})


@router.post(
    INTAKES,
    response={201: IntakeOut, 409: Error, **WRITE_ERRORS},
    summary="Create an intake; its templates are checked now",
    openapi_extra=needs("write", parameters=[idempotency.PARAMETER]),
)
async def create_intake(request: HttpRequest, domain: str, payload: IntakeIn):
    require_write(request, domain)
    spend_write(request)
    mappings.forget(domain, payload.name)
    return await idempotency.respond(request, 201, write.create_intake, domain, payload)


@router.get(
    INTAKES,
    response={200: IntakeList, **ERRORS},
    summary="A domain's intakes, with their counts and last refusal",
    openapi_extra=needs("read"),
)
async def list_intakes(request: HttpRequest, domain: str, query: Query[NamePage]):
    require_read(request, domain)
    await tally.save()
    intakes = await db.read(
        read.list_intakes, domain, limit=query.limit, after=query.after
    )
    return json_response({"intakes": intakes})


@router.get(
    f"{INTAKES}/{{intake}}",
    response={200: IntakeOut, **ERRORS},
    summary="An intake",
    openapi_extra=needs("read"),
)
async def get_intake(request: HttpRequest, domain: str, intake: str):
    require_read(request, domain)
    await tally.save()
    return json_response(await db.read(read.read_intake, domain, intake))


@router.put(
    f"{INTAKES}/{{intake}}",
    response={200: IntakeOut, 409: Error, **WRITE_ERRORS},
    summary="Replace an intake's definition (its counts are kept)",
    openapi_extra=needs("write"),
)
async def replace_intake(
    request: HttpRequest, domain: str, intake: str, payload: IntakeIn
):
    require_write(request, domain)
    spend_write(request)
    await tally.save()
    answer = await db.write(write.replace_intake, domain, intake, payload)
    mappings.forget(domain, intake)
    return json_response(answer)


@router.delete(
    f"{INTAKES}/{{intake}}",
    response={204: None, **WRITE_ERRORS},
    summary="Remove an intake (what it registered stays)",
    openapi_extra=needs("write"),
)
async def delete_intake(request: HttpRequest, domain: str, intake: str):
    require_write(request, domain)
    spend_write(request)
    await db.write(write.delete_intake, domain, intake)
    mappings.forget(domain, intake)
    return HttpResponse(status=204)


_ANY_JSON = {"schema": {}}
_EVENTS_BODY = {
    "required": True,
    "description": (
        "A CloudEvent in binary mode (ce-id, ce-source, ce-type, ce-specversion "
        "headers; the body, of any content type, is its data), structured mode or "
        "batch mode; or any JSON, one event whose data is the body."
    ),
    "content": {
        "application/json": _ANY_JSON,
        STRUCTURED: {"schema": {"type": "object"}},
        BATCH: {"schema": {"type": "array", "items": {"type": "object"}}},
        "*/*": _ANY_JSON,
    },
}


@router.post(
    f"{INTAKES}/{{intake}}/events",
    response={200: EventResults, **WRITE_ERRORS},
    summary="Post events: one source each, each answered alone",
    openapi_extra=needs("publish", requestBody=_EVENTS_BODY),
)
async def post_events(request: HttpRequest, domain: str, intake: str):
    require_publish(request, domain)
    spend_write(request)
    headers = lower_headers(request.headers)
    results, domains = await take(
        domain, intake, request.content_type or "", headers, request.body
    )
    if domains:  # timed by the middleware as the API's posts are
        request.ingested = ("single" if len(results) == 1 else "batch", domains)
    return json_response({"results": results})
