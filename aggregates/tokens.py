"""API tokens: generated once, stored as a SHA-256 digest, checked in constant time."""

import hashlib
import hmac
import secrets
import threading
import time

from django.http import HttpRequest
from django.utils import timezone

from aggregates import db
from aggregates.models import ApiToken

TOKEN_PREFIX = "bk_"


def bearer(request: HttpRequest) -> str | None:
    """The token a request carries in its Authorization header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


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


# Tokens found recently, by digest, so that a request costs no database round trip
# for authentication. Only found tokens are kept (a new token works at once); a
# revoked one stops working within CACHE_SECONDS on every server process.
CACHE_SECONDS = 5.0
_cache: dict[str, tuple[float, ApiToken]] = {}
_cache_lock = threading.Lock()


def cached_token(raw: str) -> ApiToken | None:
    """The token find_token() found for `raw` lately, if any."""
    wanted = digest(raw)
    hit = _cache.get(wanted)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


def remember(raw: str, token: ApiToken) -> None:
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest(raw)] = (time.monotonic() + CACHE_SECONDS, token)


def forget_all() -> None:
    with _cache_lock:
        _cache.clear()


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


async def authenticate(raw: str) -> ApiToken | None:
    """The active token whose secret is `raw`: from this process's cache, else
    from the database (which may raise DatabaseError)."""
    token = cached_token(raw)
    if token is None:
        token = await db.read(find_token, raw)
        if token is not None:
            remember(raw, token)
    return token


def revoke_token(token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    forget_all()  # this process at once; others within CACHE_SECONDS
