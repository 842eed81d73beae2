"""What every API endpoint checks and answers with: the token's reach, the write
rate, pages, the documented error statuses, JSON responses."""

from typing import Any

from django.http import HttpRequest, JsonResponse
from pydantic import BaseModel, Field

from aggregates import limits
from aggregates.errors import ApiError
from aggregates.models import ApiToken
from aggregates.schemas import Error

ERRORS = {
    **{status: Error for status in (400, 401, 403, 404, 413, 415)},
    503: Error,  # the database is unreachable: retry
}
# Writes may also be rate limited (BOTLNEK_WRITE_RATE).
WRITE_ERRORS = {**ERRORS, 429: Error}


class Page(BaseModel):
    limit: int = Field(100, ge=1, le=1000)


class NamePage(Page):
    """A list of definitions in name order: the next page is `after` the last name."""

    after: str | None = Field(None, max_length=200)


class IdPage(Page):
    """A list of definitions in id order: the next page is `after` the last id."""

    after: int = Field(0, ge=0)


def token_of(request: HttpRequest) -> ApiToken:
    return request.auth  # type: ignore[attr-defined]


def require_read(request: HttpRequest, domain: str) -> None:
    if not token_of(request).can_read(domain):
        raise ApiError(403, "forbidden", f"this token may not read domain {domain!r}")


def require_publish(request: HttpRequest, domain: str) -> None:
    """Posting sources: a publish or write token for the domain."""
    token = token_of(request)
    if token.can_publish(domain):
        return
    if token.scope == ApiToken.Scope.READ:
        raise ApiError(
            403,
            "forbidden",
            "this token has read scope; posting sources needs publish or write",
        )
    raise ApiError(403, "forbidden", f"this token may not post to domain {domain!r}")


def require_write(request: HttpRequest, domain: str | None) -> None:
    token = token_of(request)
    if token.can_write(domain):
        return
    if token.scope != ApiToken.Scope.WRITE:
        only = {
            ApiToken.Scope.READ: "read scope",
            ApiToken.Scope.PUBLISH: "publish scope (it may post sources, nothing else)",
        }[token.scope]
        raise ApiError(403, "forbidden", f"this token has {only}; this needs write")
    target = "every domain" if domain is None else f"domain {domain!r}"
    raise ApiError(403, "forbidden", f"this token may not write to {target}")


_NEEDS = {
    "read": "any token (read, publish or write) that covers the domain",
    "publish": "a publish or write token that covers the domain",
    "write": "a write token that covers the domain",
    "write-all": "a write token that covers every domain",
}


SCOPE_KEY = "x-botlnek-scope"


def needs(scope: str, **extra: Any) -> dict[str, Any]:
    """An operation's OpenAPI additions (`openapi_extra`): which token scope it
    needs, in words and under SCOPE_KEY, which the API turns into the role of
    the operation's security requirement."""
    return {
        **extra,
        "description": f"Needs {_NEEDS[scope]}.",
        SCOPE_KEY: scope.removesuffix("-all"),
    }


def spend_write(request: HttpRequest) -> None:
    """Counts one write against the token's BOTLNEK_WRITE_RATE, if one is set:
    after the route, the method and the token's scope were checked, so only writes
    that would otherwise go ahead spend it."""
    limiter = limits.writes()
    if limiter is None:
        return
    wait = limiter.take(token_of(request).pk)
    if wait:
        raise ApiError(
            429,
            "rate_limited",
            f"this token may write {limiter.rate} on this server; nothing was "
            "written, retry after Retry-After seconds",
            headers={"Retry-After": limits.retry_after(wait)},
        )


def json_response(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, json_dumps_params={"ensure_ascii": False})
