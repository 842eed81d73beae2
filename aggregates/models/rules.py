"""Rules, each aggregate's status under them, and their event logs."""

from django.db import models
from django.utils import timezone

from aggregates.models.history import Aggregate, Domain


class Rule(models.Model):
    """A declared readiness condition of one consumer, evaluated by the server.

    `position` and `latest_seq` are kept by the rules engine under this row's lock:
    the last domain position evaluated, and the last event's number.
    """

    class Trigger(models.TextChoices):
        ONCE = "once"
        EVERY = "every"

    class DeadlineFrom(models.TextChoices):
        FIRST_SOURCE = "first_source"
        KEY_DATE = "key_date"

    class OnDeadline(models.TextChoices):
        LATE = "late"
        FIRE = "fire"

    class Start(models.TextChoices):
        NOW = "now"
        HISTORY = "history"

    domain = models.ForeignKey(
        Domain, on_delete=models.CASCADE, related_name="rules", db_index=False
    )
    name = models.CharField(max_length=200)
    when = models.TextField()
    # What the rule settles for at its deadline (and after it); "" for nothing.
    fallback = models.TextField(blank=True, default="")
    trigger = models.CharField(
        max_length=5, choices=Trigger.choices, default=Trigger.ONCE
    )
    aggregate_prefix = models.CharField(max_length=200, blank=True, default="")
    deadline_seconds = models.PositiveIntegerField(null=True, blank=True)
    deadline_from = models.CharField(
        max_length=12, choices=DeadlineFrom.choices, blank=True, default=""
    )
    on_deadline = models.CharField(
        max_length=4, choices=OnDeadline.choices, default=OnDeadline.LATE
    )
    start = models.CharField(max_length=7, choices=Start.choices, default=Start.NOW)
    # Expected keys (rules/expect.py): the key pattern applied to `expect_from`
    # (or the period a rule started in), every `expect_every_seconds`; "" and
    # nulls for none.
    expect_key = models.CharField(max_length=200, blank=True, default="")
    expect_every_seconds = models.PositiveIntegerField(null=True, blank=True)
    expect_from = models.DateTimeField(null=True, blank=True)
    # Kept by the rules engine under this row's lock: the moment of the next
    # expected key to evaluate.
    expect_next = models.DateTimeField(null=True, blank=True, editable=False)
    position = models.BigIntegerField(default=0, editable=False)
    latest_seq = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "name"], name="rule_unique_name_in_domain"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class RuleStatus(models.Model):
    """Where one rule stands for one aggregate, and what it needs to go on.

    The facts (counts, newest source per collection) are those of `version`; a
    time-based transition is due at `next_due_at`, which the engine's clock finds
    by this column's index instead of scanning every aggregate.
    """

    class Status(models.TextChoices):
        WAITING = "waiting"
        READY = "ready"
        LATE = "late"
        FIRED = "fired"

    rule = models.ForeignKey(
        Rule, on_delete=models.CASCADE, related_name="statuses", db_index=False
    )
    aggregate = models.ForeignKey(
        Aggregate, on_delete=models.CASCADE, related_name="rule_statuses"
    )
    status = models.CharField(max_length=7, choices=Status.choices)
    version = models.PositiveIntegerField()
    position = models.BigIntegerField()
    counts = models.JSONField(default=dict)
    newest = models.JSONField(default=dict)  # collection: ISO time of its newest
    # The same for each reference to neighbours (`B@-1d`: the sum over the
    # aggregates it covers), by the reference as written; kept up to date as
    # their versions arrive.
    near_counts = models.JSONField(default=dict)
    near_newest = models.JSONField(default=dict)
    deadline = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField()  # time is applied up to here
    was_ready = models.BooleanField(default=False)
    late = models.BooleanField(default=False)  # its deadline passed before ready
    fired_version = models.PositiveIntegerField(null=True, blank=True)
    next_due_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField()
    # Why its last evaluation failed (the rules engine goes on with other pairs).
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "aggregate"], name="rule_status_unique_aggregate"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_due_at"],
                name="rule_status_due_idx",
                condition=models.Q(next_due_at__isnull=False),
            ),
            models.Index(
                fields=["rule", "status", "-changed_at", "-id"],
                name="rule_status_listing_idx",
            ),
            models.Index(
                fields=["rule", "-changed_at", "-id"], name="rule_status_recent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}/{self.aggregate_id}: {self.status}"


class RuleEvent(models.Model):
    """A rule's append-only log: `seq` is gapless per rule, in recording order.

    The aggregate is kept by key: pruning an aggregate leaves the log whole.
    """

    class Kind(models.TextChoices):
        FIRED = "fired"
        LATE = "late"

    class Reason(models.TextChoices):
        READY = "ready"
        DEADLINE = "deadline"
        FALLBACK = "fallback"

    rule = models.ForeignKey(
        Rule, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    seq = models.BigIntegerField()
    aggregate = models.CharField(max_length=200)
    event = models.CharField(max_length=5, choices=Kind.choices)
    # Empty for a `late` event (null in the API).
    reason = models.CharField(
        max_length=8, choices=Reason.choices, blank=True, default=""
    )
    version = models.PositiveIntegerField()
    position = models.BigIntegerField()
    late = models.BooleanField()
    at = models.DateTimeField()
    # For each reference of the rule's conditions, the aggregates it covered that
    # hold its collection, newest key first, as of `position`:
    # {"B@-1d": [{"aggregate": "2026-11-25", "version": 2, "count": 1}], "A": []}.
    inputs = models.JSONField(default=dict)

    class Meta:
        constraints = [
            # The last line of defence: no event is recorded twice.
            models.UniqueConstraint(
                fields=["rule", "seq"], name="rule_event_unique_seq"
            ),
            models.CheckConstraint(
                condition=models.Q(seq__gte=1), name="rule_event_seq_starts_at_one"
            ),
        ]
        indexes = [
            models.Index(
                fields=["rule", "aggregate", "seq"], name="rule_event_aggregate_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}#{self.seq} {self.event} {self.aggregate}"
