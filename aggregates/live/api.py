"""The live API endpoint: `GET /api/stream`, Server-Sent Events (sse.py)."""

import re
from typing import Literal

from django.http import HttpRequest, StreamingHttpResponse
from ninja import Query, Router
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError

from aggregates import db, limits, store
from aggregates.access import ERRORS, needs, require_read, token_of
from aggregates.errors import ApiError, field_errors, named, summary
from aggregates.live import sse
from aggregates.live.subscription import SubscribeIn
from aggregates.schemas import DomainKey, Error, Key
from aggregates.streams import get_rule

router = Router()


class StreamQuery(BaseModel):
    domain: DomainKey
    aggregate: Key | None = None
    mode: Literal["full", "delta"] = "full"
    after_position: int | None = Field(None, ge=0)
    rule: Key | None = None
    after_seq: int | None = Field(None, ge=0)


@router.get(
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
        fields = field_errors(exc.errors())
        raise ApiError(400, "invalid", summary(fields), named(fields)) from None
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
