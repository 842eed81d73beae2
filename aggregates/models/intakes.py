"""Intakes: a domain's declared mapping from publishers' own events to sources."""

from django.db import models
from django.utils import timezone

from aggregates.models.history import KEY_VALIDATOR, Domain


class Intake(models.Model):
    """How events posted to it become sources: templates for the aggregate, the
    collection, the keys and the attrs (aggregates/intakes/). The counts and the
    last refusal are added to by every process, within a second of the events."""

    domain = models.ForeignKey(
        Domain, on_delete=models.CASCADE, related_name="intakes", db_index=False
    )
    name = models.CharField(max_length=200, validators=[KEY_VALIDATOR])
    aggregate = models.TextField()
    collection = models.TextField()
    # {"name": template}; null: the CloudEvents default (ce_source and ce_id).
    keys = models.JSONField(null=True, blank=True)
    attrs = models.JSONField(default=dict, blank=True)
    # A dotted path into the data: each element of the list there is an event.
    each = models.CharField(max_length=200, blank=True, default="")
    # {"type": glob, "source": glob}, either or neither.
    match = models.JSONField(default=dict, blank=True)
    accepted = models.BigIntegerField(default=0, editable=False)
    refused = models.BigIntegerField(default=0, editable=False)
    last_refusal = models.TextField(blank=True, default="", editable=False)
    last_refusal_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "name"], name="intake_unique_name_in_domain"
            )
        ]

    def __str__(self) -> str:
        return self.name
