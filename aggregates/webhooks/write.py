"""Creating, changing, removing and replaying webhooks: the one way to, for the API
and the admin alike. Each writes what WebhookIn / WebhookChange / ReplayIn let
through, and announces the change once committed (the delivery worker then looks
at the domain). A URL must have passed check_target (or check_target_async) first:
resolving a host must not hold the database's writer."""

import base64
import secrets
from typing import Annotated, Literal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from aggregates import announcements
from aggregates.errors import StoreError
from aggregates.models import Domain, Rule, Webhook
from aggregates.rules.read import get_rule
from aggregates.schemas import Key
from aggregates.store.read import get_domain
from aggregates.webhooks import targets
from aggregates.webhooks.read import get_webhook, webhook_json

RULE_EVENTS = {"rule.fired", "rule.late"}


def check_target(url: str) -> None:
    """Refuse a URL whose host is not one BOTLNEK_WEBHOOK_ALLOWED_HOSTS allows, or
    that does not resolve (a 400 naming the host and the setting). It resolves the
    host: from async code, use check_target_async."""
    try:
        targets.check(url, settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS)
    except targets.Refused as exc:
        raise StoreError(str(exc), field="url") from None


async def check_target_async(url: str) -> None:
    """check_target, resolving off the event loop (and off the database's
    writer), for at most a few seconds."""
    try:
        await targets.check_async(url, settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS)
    except targets.Refused as exc:
        raise StoreError(str(exc), field="url") from None


Url = Annotated[str, AfterValidator(targets.url_rule), Field(max_length=2000)]
Events = list[Literal["version", "rule.fired", "rule.late"]]
# Botlnek's own JSON, or CloudEvents in structured mode.
Format = Literal["standard", "cloudevents"]


def _check_events(events: list[str], rule: str | None) -> None:
    if not events or len(set(events)) != len(events):
        raise ValueError("events must name each event once, and at least one")
    if set(events) == {"version"}:
        if rule is not None:
            raise ValueError("a webhook of versions takes no rule")
    elif set(events) <= RULE_EVENTS:
        if rule is None:
            raise ValueError(
                'events rule.fired and rule.late need "rule": the rule they are of'
            )
    else:
        raise ValueError('events are ["version"], or rule.fired and/or rule.late')


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: Url
    events: Events
    rule: Key | None = None
    description: str = Field("", max_length=500)
    format: Format = "standard"

    @model_validator(mode="after")
    def _events(self):
        _check_events(self.events, self.rule)
        return self


class WebhookChange(BaseModel):
    """Any subset of what a webhook is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: Url | None = None
    events: Events | None = None
    rule: Key | None = None
    description: str | None = Field(None, max_length=500)
    format: Format | None = None
    paused: bool | None = None


def new_secret() -> str:
    """A signing secret as Standard Webhooks spell it: whsec_ + base64 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def start_cursor(domain: Domain, rule: Rule | None) -> int:
    """A new webhook (or one switched to another stream) starts with the events
    recorded from now on."""
    if rule is None:
        return Domain.objects.get(pk=domain.pk).latest_position
    return Rule.objects.get(pk=rule.pk).latest_seq


def create_webhook(domain: str, definition: WebhookIn) -> dict:
    found = get_domain(domain)
    rule = get_rule(domain, definition.rule) if definition.rule else None
    secret = new_secret()
    with transaction.atomic():
        webhook = Webhook.objects.create(
            domain=found,
            url=definition.url,
            events=definition.events,
            rule=rule,
            description=definition.description,
            format=definition.format,
            secret=secret,
            cursor=start_cursor(found, rule),
        )
        announcements.on_commit(announcements.webhooks_changed, [domain])
    return {**webhook_json(get_webhook(domain, webhook.pk)), "secret": secret}


def change_webhook(
    domain: str,
    webhook_id: int,
    change: WebhookChange,
    *,
    paused_reason: str = "paused through the API",
) -> dict:
    webhook = get_webhook(domain, webhook_id)
    fields = change.model_dump(exclude_unset=True)
    changed = set()
    with transaction.atomic():
        if "url" in fields:
            webhook.url = fields["url"]
            changed.add("url")
        if "description" in fields:
            webhook.description = fields["description"] or ""
            changed.add("description")
        if fields.get("format"):
            webhook.format = fields["format"]
            changed.add("format")
        if "events" in fields or "rule" in fields:
            events = fields.get("events", webhook.events)
            rule_name = fields.get("rule", webhook.rule.name if webhook.rule else None)
            try:
                _check_events(events, rule_name)
            except ValueError as exc:
                raise StoreError(str(exc), field="events") from None
            rule = get_rule(domain, rule_name) if rule_name else None
            if rule != webhook.rule:  # another stream: from what comes next on
                webhook.cursor = start_cursor(webhook.domain, rule)
                webhook.rewinds = F("rewinds") + 1
                changed |= {"cursor", "rewinds"}
            webhook.events, webhook.rule = events, rule
            changed |= {"events", "rule"}
        if fields.get("paused") is False and webhook.paused:
            resume(webhook)
            changed |= RESUMED
        elif fields.get("paused"):
            webhook.paused, webhook.paused_reason = True, paused_reason
            changed |= {"paused", "paused_reason"}
        # Only what changed: the deliverer moves the cursor and the health meanwhile.
        webhook.save(update_fields=sorted(changed))
        announcements.on_commit(announcements.webhooks_changed, [domain])
    return webhook_json(get_webhook(domain, webhook_id))


# What resume() sets.
RESUMED = {"paused", "paused_reason", "attempts", "failing_since", "next_attempt_at"}


def resume(webhook: Webhook) -> None:
    """Un-paused: it resumes where it stopped, with the same event, at once."""
    webhook.paused, webhook.paused_reason = False, ""
    webhook.attempts, webhook.failing_since = 0, None
    webhook.next_attempt_at = None


def delete_webhook(domain: str, webhook_id: int) -> None:
    with transaction.atomic():
        get_webhook(domain, webhook_id).delete()
        announcements.on_commit(announcements.webhooks_changed, [domain])


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    after_position: int | None = Field(None, ge=0)
    after_seq: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.after_position is None) == (self.after_seq is None):
            raise ValueError("give after_position (versions) or after_seq (a rule)")
        return self


def replay(domain: str, webhook_id: int, replay: ReplayIn) -> dict:
    """Deliver again, in order, everything after that point (with the original
    webhook-ids): the cursor goes back."""
    webhook = get_webhook(domain, webhook_id)
    if webhook.rule is None:
        if replay.after_position is None:
            raise StoreError(
                "a webhook of versions replays after_position", field="after_seq"
            )
        point, latest = replay.after_position, webhook.domain.latest_position
        field = "after_position"
    else:
        if replay.after_seq is None:
            raise StoreError(
                "a webhook of rule events replays after_seq", field="after_position"
            )
        point, latest = replay.after_seq, webhook.rule.latest_seq
        field = "after_seq"
    if point > latest:
        raise StoreError(f"must be at most {latest}, the stream's latest", field=field)
    with transaction.atomic():
        Webhook.objects.filter(pk=webhook.pk).update(
            cursor=point,
            rewinds=F("rewinds") + 1,
            attempts=0,
            failing_since=None,
            next_attempt_at=None,
        )
        announcements.on_commit(announcements.webhooks_changed, [domain])
    return webhook_json(get_webhook(domain, webhook_id))
