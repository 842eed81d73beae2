"""Webhooks and their delivery log."""

from django.db import models
from django.utils import timezone

from aggregates.models.history import Domain
from aggregates.models.rules import Rule


class Webhook(models.Model):
    """A receiver called for each event of a domain's stream (its versions, or one
    rule's events), in order, at least once, as Botlnek's own JSON or as
    CloudEvents (`format`). `cursor` is the position or seq of
    the last event delivered; only the holder of the webhook's lease moves it."""

    domain = models.ForeignKey(
        Domain, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField()  # ["version"], or of a rule: rule.fired, rule.late
    rule = models.ForeignKey(
        Rule, on_delete=models.CASCADE, related_name="webhooks", null=True, blank=True
    )
    description = models.CharField(max_length=500, blank=True, default="")

    class Format(models.TextChoices):
        STANDARD = "standard", "Botlnek's JSON"
        CLOUDEVENTS = "cloudevents", "CloudEvents (structured mode)"

    format = models.CharField(
        max_length=11, choices=Format.choices, default=Format.STANDARD
    )
    # Kept to sign with; shown once, when the webhook is created.
    secret = models.CharField(max_length=100, editable=False)
    paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=500, blank=True, default="")
    cursor = models.BigIntegerField(default=0)
    # Moved on each replay or change of stream: the deliverer saves its progress
    # only over the cursor it started from *and* this, so a replay back to that
    # very cursor is not overwritten by a run that began before it.
    rewinds = models.PositiveIntegerField(default=0, editable=False)
    attempts = models.PositiveIntegerField(default=0)  # failed, of the next event
    failing_since = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return f"{self.domain_id}: {self.url}"


class WebhookDelivery(models.Model):
    """One attempt to deliver one event; the newest are kept (see webhooks/)."""

    webhook = models.ForeignKey(
        Webhook, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event_id = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField()
    at = models.DateTimeField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")
    ms = models.FloatField()

    class Meta:
        indexes = [
            models.Index(fields=["webhook", "-id"], name="webhook_delivery_newest_idx")
        ]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event_id} #{self.attempt}: {self.status_code or self.error}"
