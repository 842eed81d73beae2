"""API tokens: generated once, stored as a SHA-256 digest, checked in constant time."""

import hashlib
import hmac
import secrets

from django.utils import timezone

from aggregates.models import ApiToken

TOKEN_PREFIX = "bk_"


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_token(
    *, name: str, scope: str, domains: list[str] | None = None
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name,
        scope=scope,
        domains=sorted(set(domains or [])),
        digest=digest(raw),
        prefix=raw[:10],
    )
    return token, raw


def find_token(raw: str) -> ApiToken | None:
    """The active token whose secret is `raw`, or None."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    wanted = digest(raw)
    token = ApiToken.objects.filter(digest=wanted, revoked_at__isnull=True).first()
    # The digest lookup already matched; compare again without timing leaks anyway.
    if token is None or not hmac.compare_digest(token.digest, wanted):
        return None
    return token


def revoke_token(token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
