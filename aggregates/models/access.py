"""Tokens, leases and idempotent answers: who may, who holds, what was answered."""

from django.db import models
from django.utils import timezone


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
        verbose_name = "API token"

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
