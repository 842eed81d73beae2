"""Tables for domains, aggregates, their append-only versions and sources, and tokens.

Rows of Aggregate, Version and Source are written only by aggregates.store.
"""

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from aggregates.values import KEY_CHARS, KEY_PATTERN

KEY_VALIDATOR = RegexValidator(
    f"^{KEY_PATTERN.pattern}$", f"Use only {KEY_CHARS} (no / and no spaces)."
)


class Domain(models.Model):
    key = models.CharField(max_length=100, unique=True, validators=[KEY_VALIDATOR])
    attrs = models.JSONField(default=dict, blank=True)
    # Counters kept by the write path under this row's lock: the lock is what makes
    # positions gapless and in commit order.
    latest_position = models.BigIntegerField(default=0, editable=False)
    aggregate_count = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


# Foreign keys below carry no index of their own where a unique constraint already
# starts with their column: the extra index slows every insert and, on PostgreSQL,
# can lure the planner into scanning a whole aggregate instead of one identity.


class Aggregate(models.Model):
    domain = models.ForeignKey(
        Domain, on_delete=models.CASCADE, related_name="aggregates", db_index=False
    )
    key = models.CharField(max_length=200)
    version = models.PositiveIntegerField(default=0)
    # Sources per collection, e.g. {"A": 2, "B": 1}; kept by the write path.
    counts = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["domain", "key"], name="aggregate_unique_key_in_domain"
            ),
        ]
        indexes = [
            models.Index(
                fields=["domain", "-updated_at", "-id"], name="aggregate_recent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.domain_id}/{self.key}"


class Version(models.Model):
    aggregate = models.ForeignKey(
        Aggregate, on_delete=models.CASCADE, related_name="versions", db_index=False
    )
    # Denormalized from the aggregate so that positions are unique per domain.
    domain = models.ForeignKey(
        Domain, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    number = models.PositiveIntegerField()
    position = models.BigIntegerField()
    at = models.DateTimeField()
    # Sources per collection as of this version: delta-mode subscribers get them
    # without reading the aggregate's history.
    counts = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate", "number"], name="version_unique_number"
            ),
            models.UniqueConstraint(
                fields=["domain", "position"], name="version_unique_position"
            ),
            models.CheckConstraint(
                condition=models.Q(number__gte=1) & models.Q(position__gte=1),
                name="version_numbers_start_at_one",
            ),
        ]

    def __str__(self) -> str:
        return f"v{self.number} @{self.position}"


class Source(models.Model):
    version = models.OneToOneField(
        Version, on_delete=models.CASCADE, related_name="source"
    )
    aggregate = models.ForeignKey(
        Aggregate, on_delete=models.CASCADE, related_name="sources", db_index=False
    )
    collection = models.CharField(max_length=200)
    key = models.CharField(max_length=64, help_text="SHA-256 of the canonical keys")
    keys = models.JSONField(default=dict)
    attrs = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                # key before collection: the write path looks sources up by
                # (aggregate, key) and this index serves it.
                fields=["aggregate", "key", "collection"],
                name="source_unique_identity",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.collection}:{self.key[:12]}"


class Receipt(models.Model):
    """A subscriber's report that it acted (or failed to act) on a version.

    Append-only, and never a version: receipts tell why something did or did not
    run, beside the history they are about.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"
        TIMEOUT = "timeout"

    aggregate = models.ForeignKey(
        Aggregate, on_delete=models.CASCADE, related_name="receipts", db_index=False
    )
    watcher = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    outcome = models.CharField(max_length=7, choices=Outcome.choices)
    exit_code = models.IntegerField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    detail = models.TextField(blank=True, default="")
    # A receipt of a rule's event: the rule's name and the event's seq.
    rule = models.CharField(max_length=200, blank=True, default="")
    seq = models.BigIntegerField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["aggregate", "-id"], name="receipt_newest_idx"),
            models.Index(
                fields=["rule", "watcher", "-seq"],
                name="receipt_rule_idx",
                condition=~models.Q(rule=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.watcher} v{self.version} {self.outcome}"


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


class Webhook(models.Model):
    """A receiver called for each event of a domain's stream (its versions, or one
    rule's events), in order, at least once. `cursor` is the position or seq of
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
    # Kept to sign with; shown once, when the webhook is created.
    secret = models.CharField(max_length=100, editable=False)
    paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=500, blank=True, default="")
    cursor = models.BigIntegerField(default=0)
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

    def __str__(self) -> str:
        return f"{self.event_id} #{self.attempt}: {self.status_code or self.error}"


class Lease(models.Model):
    """One holder at a time for a named piece of work, across every process and
    machine; a holder that stops renewing loses it when it expires."""

    name = models.CharField(max_length=500, unique=True)
    holder = models.CharField(max_length=100)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} ({self.holder})"


class IdempotentRequest(models.Model):
    """The first answer to a write sent with an `Idempotency-Key` (per token), kept
    for a day: the same key with the same request answers it again."""

    token = models.ForeignKey(
        "ApiToken", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # SHA-256: method, path, body
    status = models.PositiveSmallIntegerField()
    body = models.TextField()  # the answer, JSON
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["token", "key"], name="idempotent_request_token_key"
            )
        ]
        indexes = [
            models.Index(fields=["created_at"], name="idempotent_request_age_idx")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class ApiToken(models.Model):
    class Scope(models.TextChoices):
        READ = "read", "read"
        PUBLISH = "publish", "publish (read, and post sources)"
        WRITE = "write", "write (implies read and publish)"

    name = models.CharField(max_length=100)
    # Only the SHA-256 of the token is kept; the prefix helps people tell tokens apart.
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False)
    scope = models.CharField(max_length=7, choices=Scope.choices, default=Scope.READ)
    domains = models.JSONField(
        default=list,
        blank=True,
        help_text="Domain keys this token is limited to; empty means every domain.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def can_read(self, domain_key: str) -> bool:
        return self.is_active and (not self.domains or domain_key in self.domains)

    def can_publish(self, domain_key: str) -> bool:
        """May post sources into the domain (publish or write scope)."""
        publishers = (self.Scope.PUBLISH, self.Scope.WRITE)
        return self.scope in publishers and self.can_read(domain_key)

    def can_write(self, domain_key: str | None) -> bool:
        """Write access to a domain; None asks for write access to every domain."""
        if not self.is_active or self.scope != self.Scope.WRITE:
            return False
        if domain_key is None:
            return not self.domains
        return not self.domains or domain_key in self.domains
