"""Webhooks as the API shows them: what they are, their health, their attempts."""

from typing import Any

from aggregates.errors import NotFound
from aggregates.models import Webhook, WebhookDelivery
from aggregates.store.read import get_domain
from aggregates.values import isoformat


def get_webhook(domain: str, webhook_id: int) -> Webhook:
    try:
        return Webhook.objects.select_related("domain", "rule").get(
            domain__key=domain, pk=webhook_id
        )
    except Webhook.DoesNotExist:
        get_domain(domain)
        raise NotFound(f"webhook {webhook_id} does not exist in {domain!r}") from None


def _time(moment) -> str | None:
    return isoformat(moment) if moment else None


def lag(webhook: Webhook) -> int:
    """Events of its stream not yet delivered (for a rule: not yet looked at)."""
    latest = webhook.rule.latest_seq if webhook.rule else webhook.domain.latest_position
    return max(0, latest - webhook.cursor)


def webhook_json(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.pk,
        "url": webhook.url,
        "events": webhook.events,
        "rule": webhook.rule.name if webhook.rule else None,
        "description": webhook.description,
        "format": webhook.format,
        "paused": webhook.paused,
        "paused_reason": webhook.paused_reason or None,
        "lag": lag(webhook),
        "last_status": webhook.last_status,
        "last_error": webhook.last_error or None,
        "last_attempt_at": _time(webhook.last_attempt_at),
        "last_success_at": _time(webhook.last_success_at),
        "next_attempt_at": _time(webhook.next_attempt_at),
        "failing_since": _time(webhook.failing_since),
        "created_at": isoformat(webhook.created_at),
    }


def list_webhooks(domain: str, *, limit: int, after: int) -> list[dict[str, Any]]:
    found = get_domain(domain)
    rows = Webhook.objects.filter(domain=found, id__gt=after)
    rows = rows.select_related("domain", "rule").order_by("id")[:limit]
    return [webhook_json(webhook) for webhook in rows]


def read_webhook(domain: str, webhook_id: int) -> dict[str, Any]:
    return webhook_json(get_webhook(domain, webhook_id))


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "event_id": delivery.event_id,
        "attempt": delivery.attempt,
        "at": isoformat(delivery.at),
        "status_code": delivery.status_code,
        "error": delivery.error or None,
        "ms": round(delivery.ms, 1),
    }


def list_deliveries(domain: str, webhook_id: int, *, limit: int) -> list[dict]:
    """The newest attempts first."""
    webhook = get_webhook(domain, webhook_id)
    rows = WebhookDelivery.objects.filter(webhook=webhook).order_by("-id")[:limit]
    return [delivery_json(delivery) for delivery in rows]
