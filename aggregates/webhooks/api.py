"""The webhooks API: create (the secret, once), read with health, change, remove,
the delivery log, replay."""

from django.http import HttpRequest, HttpResponse
from ninja import Query, Router

from aggregates import db, idempotency
from aggregates.access import (
    ERRORS,
    WRITE_ERRORS,
    IdPage,
    Page,
    json_response,
    needs,
    require_read,
    require_write,
    spend_write,
)
from aggregates.schemas import (
    DeliveryList,
    Error,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from aggregates.webhooks import read, write
from aggregates.webhooks.write import ReplayIn, WebhookChange, WebhookIn

router = Router(tags=["webhooks"])
WEBHOOKS = "/domains/{domain}/webhooks"


@router.post(
    WEBHOOKS,
    response={201: WebhookCreated, 422: Error, **WRITE_ERRORS},
    summary="Create a webhook; its signing secret is in this answer only",
    openapi_extra=needs("write", parameters=[idempotency.PARAMETER]),
)
async def create_webhook(request: HttpRequest, domain: str, payload: WebhookIn):
    require_write(request, domain)
    spend_write(request)
    await write.check_target_async(payload.url)
    return await idempotency.respond(
        request, 201, write.create_webhook, domain, payload
    )


@router.get(
    WEBHOOKS,
    response={200: WebhookList, **ERRORS},
    summary="Webhooks",
    openapi_extra=needs("read"),
)
async def list_webhooks(request: HttpRequest, domain: str, query: Query[IdPage]):
    require_read(request, domain)
    webhooks = await db.read(
        read.list_webhooks, domain, limit=query.limit, after=query.after
    )
    return json_response({"webhooks": webhooks})


@router.get(
    f"{WEBHOOKS}/{{webhook}}",
    response={200: WebhookOut, **ERRORS},
    summary="A webhook and its health",
    openapi_extra=needs("read"),
)
async def get_webhook(request: HttpRequest, domain: str, webhook: int):
    require_read(request, domain)
    return json_response(await db.read(read.read_webhook, domain, webhook))


@router.put(
    f"{WEBHOOKS}/{{webhook}}",
    response={200: WebhookOut, **WRITE_ERRORS},
    summary="Change any of url, events, rule, description, paused",
    openapi_extra=needs("write"),
)
async def change_webhook(
    request: HttpRequest, domain: str, webhook: int, payload: WebhookChange
):
    require_write(request, domain)
    spend_write(request)
    if payload.url is not None:
        await write.check_target_async(payload.url)
    changed = await db.write(write.change_webhook, domain, webhook, payload)
    return json_response(changed)


@router.delete(
    f"{WEBHOOKS}/{{webhook}}",
    response={204: None, **WRITE_ERRORS},
    summary="Remove a webhook",
    openapi_extra=needs("write"),
)
async def delete_webhook(request: HttpRequest, domain: str, webhook: int):
    require_write(request, domain)
    spend_write(request)
    await db.write(write.delete_webhook, domain, webhook)
    return HttpResponse(status=204)


@router.get(
    f"{WEBHOOKS}/{{webhook}}/deliveries",
    response={200: DeliveryList, **ERRORS},
    summary="The webhook's delivery attempts, newest first",
    openapi_extra=needs("read"),
)
async def list_deliveries(
    request: HttpRequest, domain: str, webhook: int, query: Query[Page]
):
    require_read(request, domain)
    deliveries = await db.read(read.list_deliveries, domain, webhook, limit=query.limit)
    return json_response({"deliveries": deliveries})


@router.post(
    f"{WEBHOOKS}/{{webhook}}/replay",
    response={200: WebhookOut, **WRITE_ERRORS},
    summary="Deliver again, in order, everything after a position or seq",
    openapi_extra=needs("write"),
)
async def replay(request: HttpRequest, domain: str, webhook: int, payload: ReplayIn):
    require_write(request, domain)
    spend_write(request)
    return json_response(await db.write(write.replay, domain, webhook, payload))
