"""What every endpoint of the JSON API shares: strict JSON bodies, the bearer
scheme, each operation's token scope as its OpenAPI role, and errors of every
kind in the one shape {"error", "detail", "fields"?} (install_error_handlers)."""

import json
import logging
import math
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.security import HttpBearer

from aggregates.access import SCOPE_KEY
from aggregates.errors import (
    ApiError,
    StoreError,
    error_response,
    field_errors,
    named,
    summary,
)
from aggregates.models import ApiToken

logger = logging.getLogger("botlnek.api")
MAX_BODY = 1024 * 1024


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but no double: it would come back as Infinity, which is not.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


class JsonParser(Parser):
    """Strict JSON bodies: the right Content-Type, at most 1 MiB, no NaN/Infinity."""

    def parse_body(self, request: HttpRequest) -> Any:
        return parse_json(request)


def parse_json(request: HttpRequest) -> Any:
    content_type = request.content_type or ""
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        )
    return loads(request.body)


def loads(body: bytes) -> Any:
    """A request's JSON body, strictly: at most MAX_BODY bytes, no NaN/Infinity."""
    if len(body) > MAX_BODY:
        raise _too_large()
    try:
        return json.loads(
            body, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:
        raise ApiError(
            400, "invalid_json", f"the body is not valid JSON: {exc}"
        ) from None


def _too_large() -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body must be at most {MAX_BODY} bytes"
    )


class BearerToken(HttpBearer):
    """Documents the scheme; ApiGatewayMiddleware already matched the token."""

    async def __call__(self, request: HttpRequest) -> ApiToken | None:
        # Async, so that Ninja awaits it instead of hopping to a thread.
        return self.authenticate(request, "")

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return getattr(request, "api_token", None)


class BotlnekAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """The document, each operation's security requirement naming the token
        scope it needs as its role (Ninja would add to the list, not replace)."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                if SCOPE_KEY in operation:
                    operation["security"] = [{"BearerToken": [operation[SCOPE_KEY]]}]
        return schema


def install_error_handlers(api: NinjaAPI) -> None:
    """Errors of every kind leave `api` in the one shape."""

    @api.exception_handler(ApiError)
    def _api_error(request, exc: ApiError):
        return exc.response()

    @api.exception_handler(StoreError)
    def _store_error(request, exc: StoreError):
        fields = {exc.field: exc.detail} if exc.field else None
        return error_response(exc.status, exc.code, exc.detail, fields)

    @api.exception_handler(ValidationError)
    def _validation_error(request, exc: ValidationError):
        fields = field_errors(exc.errors)
        return error_response(400, "invalid", summary(fields), named(fields))

    @api.exception_handler(AuthenticationError)
    def _unauthenticated(request, exc: AuthenticationError):
        return error_response(
            401, "unauthorized", "send 'Authorization: Bearer <token>'"
        )

    @api.exception_handler(HttpError)
    def _http_error(request, exc: HttpError):
        if isinstance(exc.__cause__, ApiError):  # raised by JsonParser
            return exc.__cause__.response()
        return error_response(exc.status_code, "error", str(exc))

    @api.exception_handler(RequestDataTooBig)
    def _too_big(request, exc: RequestDataTooBig):
        return _too_large().response()

    @api.exception_handler(Http404)
    def _not_found(request, exc: Http404):
        return error_response(404, "not_found", str(exc) or "not found")

    @api.exception_handler(OperationalError)
    @api.exception_handler(InterfaceError)
    def _database_unavailable(request, exc: DatabaseError):
        # A lost connection (PostgreSQL restarting, say), a lock waited out, a full
        # disk. A write committed whole or not at all; if the connection broke during
        # the commit, the client cannot know which, but registering is idempotent.
        logger.warning(
            "database unavailable: %s %s: %s", request.method, request.path, exc
        )
        return error_response(
            503,
            "unavailable",
            "the database failed or is unreachable; retry (registering a source or a "
            "domain again is safe: it is idempotent)",
        )

    @api.exception_handler(Exception)
    def _server_error(request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", "the server failed on this request; retrying is safe"
        )
