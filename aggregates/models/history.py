"""Domains, aggregates, their append-only versions and sources, and receipts.

Rows of Aggregate, Version and Source are written only by aggregates.store, and
by a restore of a backup (aggregates/management/restore.py).
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
    # The key's date (aggregates/keydates.py), written when the aggregate is made:
    # the key with its date replaced by a mark, the date's shape, the date; "",
    # "" and null when the key holds no date. Rules find neighbours by them (an
    # exact key for an offset, a date range for a window).
    key_template = models.CharField(max_length=200, default="", editable=False)
    key_shape = models.CharField(max_length=8, default="", editable=False)
    key_at = models.DateTimeField(null=True, editable=False)

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
            models.Index(
                fields=["domain", "key_template", "key_shape", "key_at"],
                name="aggregate_key_date_idx",
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
