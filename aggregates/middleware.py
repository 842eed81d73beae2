"""The API's gateway: authenticate first, then let routing run, then shape errors."""

import json
import logging
import time

from asgiref.sync import markcoroutinefunction
from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from aggregates import metrics, tokens
from aggregates.errors import error_response, unauthorized

logger = logging.getLogger("botlnek.api")
# One JSON line per request: method, path, status, duration, token *name*.
request_log = logging.getLogger("botlnek.requests")

# API paths anyone may read: the OpenAPI document and its browsable docs.
PUBLIC_API_PATHS = {"/api/openapi.json", "/api/docs"}
# Prometheus' scrape path: a read token too, unless BOTLNEK_PUBLIC_METRICS=1.
METRICS_PATH = "/metrics"
_REASONS = {
    404: ("not_found", "no such path in the API; see /api/docs"),
    405: ("method_not_allowed", "this path does not accept {method}"),
}


def _routine(request: HttpRequest, response: HttpResponse) -> bool:
    """A watcher's lease taken or renewed (every 10 s per `watch --rule`): logged
    at debug, so that the log shows what happened rather than that time passed."""
    return (
        response.status_code == 200
        and request.method == "POST"
        and request.path_info.endswith("/leases")
    )


def needs_token(path: str) -> bool:
    if path.startswith("/api/"):
        return path not in PUBLIC_API_PATHS
    return path == METRICS_PATH and not settings.BOTLNEK_PUBLIC_METRICS


class ApiGatewayMiddleware:
    """Authenticates every /api/ request (and /metrics) before routing, gives every
    API error response, the framework's own 404 and 405 included, the API's JSON
    error shape, and logs and counts each request."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self._respond(request)
        seconds = time.perf_counter() - started
        metrics.request_served(request, response.status_code, seconds)
        level = logging.DEBUG if _routine(request, response) else logging.INFO
        if request_log.isEnabledFor(level):
            token = getattr(request, "api_token", None)
            line = {
                "method": request.method,
                "path": request.path_info,
                "status": response.status_code,
                "ms": round(seconds * 1000, 2),
                "token": token.name if token is not None else None,
            }
            request_log.log(level, json.dumps(line, ensure_ascii=False))
        return response

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        if not needs_token(request.path_info):
            return await self.get_response(request)
        raw = tokens.bearer(request)
        if raw is None:
            return unauthorized("send 'Authorization: Bearer <token>'")
        try:
            token = await tokens.authenticate(raw)
        except DatabaseError:
            logger.exception("token lookup failed")
            return error_response(
                503, "unavailable", "the database is unreachable; retry shortly"
            )
        if token is None:
            return unauthorized("the token is unknown or revoked")
        request.api_token = token
        response = await self.get_response(request)
        if response.status_code in _REASONS and not _is_json(response):
            error, detail = _REASONS[response.status_code]
            shaped = error_response(
                response.status_code, error, detail.format(method=request.method)
            )
            if "Allow" in response:
                shaped["Allow"] = response["Allow"]
            return shaped
        return response


def _is_json(response: HttpResponse) -> bool:
    if not response.get("Content-Type", "").startswith("application/json"):
        return False
    try:
        return "error" in json.loads(response.content)
    except (ValueError, AttributeError):
        return False


class WebsocketAuthMiddleware:
    """Programs authenticate with a bearer token on the handshake, and need no Origin
    (a token is no ambient credential a foreign page could borrow). Browsers use
    their session, and their Origin must be an allowed host."""

    def __init__(self, inner):
        self.inner = inner
        self.browser = AllowedHostsOriginValidator(AuthMiddlewareStack(inner))

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        scheme, _, raw = headers.get(b"authorization", b"").decode().partition(" ")
        if scheme.lower() != "bearer":
            return await self.browser(scope, receive, send)
        raw = raw.strip()
        token = await tokens.authenticate(raw) if raw else None
        return await self.inner({**scope, "api_token": token}, receive, send)


class ContentSecurityPolicyMiddleware:
    """Sends BOTLNEK_CSP with the dashboard's pages (not the admin's)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not request.path_info.startswith("/admin/"):
            response.headers.setdefault("Content-Security-Policy", settings.BOTLNEK_CSP)
        return response
