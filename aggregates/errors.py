"""Every error Botlnek answers with, and its one shape: {"error", "detail", "fields"?}.

StoreError and its kinds come from the store (the write path and the reads);
ApiError from the HTTP edge. Validation errors of pydantic are turned into the
same field messages for the API and for websocket frames.
"""

from django.http import JsonResponse


class StoreError(Exception):
    """A request the store cannot apply; a write is rolled back whole."""

    status = 400
    code = "invalid"

    def __init__(self, detail: str, *, index: int | None = None, field: str = ""):
        super().__init__(detail)
        self.detail = detail
        self.index = index
        self.field = field


class NotFound(StoreError):
    status = 404
    code = "not_found"


class UnknownDomain(NotFound):
    """A source names a domain that does not exist."""


class Conflict(StoreError):
    status = 409
    code = "conflict"


def error_response(
    status: int, error: str, detail: str, fields: dict[str, str] | None = None
) -> JsonResponse:
    body: dict = {"error": error, "detail": detail}
    if fields:
        body["fields"] = fields
    return JsonResponse(body, status=status)


def unauthorized(detail: str) -> JsonResponse:
    """401, and how to authenticate."""
    response = error_response(401, "unauthorized", detail)
    response["WWW-Authenticate"] = "Bearer"
    return response


class ApiError(Exception):
    """Raised anywhere in an API request to answer with this error."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.fields = fields
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        response = error_response(self.status, self.error, self.detail, self.fields)
        for name, value in self.headers.items():
            response[name] = value
        return response


# Pydantic's error types, in words a person reads.
_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "string_type": "must be a string",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "string_too_long": "must be at most {max_length} characters",
    "string_too_short": "must be at least {min_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "too_long": "must hold at most {max_length} items",
    "too_short": "must hold at least {min_length} items",
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "list_type": "must be a JSON array",
    "int_from_float": "must be a whole number",
    "none_required": "must be null",
    "greater_than": "must be more than {gt}",
    "less_than": "must be less than {lt}",
}


def field_errors(
    errors: list[dict], *, prefix: str = "", whole: str = ""
) -> dict[str, str]:
    """Pydantic's errors as {"field.path": "message"}, the first per field, in
    our words (`events[0]`, "must be 'once' or 'every'"); an error about the
    whole object is named `whole` ("": its message says which fields)."""
    fields = {}
    for error in errors:
        loc = list(error.get("loc", ()))
        while loc and loc[0] in {"body", "payload", "query", "path"}:
            loc = loc[1:]
        path = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc
        ).lstrip(".")
        name = prefix + path if path else (prefix.rstrip(".") or whole)
        template = _MESSAGES.get(error.get("type", ""))
        if error.get("type") == "string_too_short" and error["ctx"]["min_length"] == 1:
            template = "must not be empty"
        if template:
            message = template.format(**error.get("ctx", {}))
        else:
            message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        fields.setdefault(name, message)
    return fields


def summary(fields: dict[str, str]) -> str:
    """One sentence for `detail`: the first field's message, and how many more."""
    name, message = next(iter(fields.items()))
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{subject(name, message)}{more}"


_PREDICATES = (
    "must ",
    "is ",
    "has ",
    "takes ",
    "holds ",
    "renders ",
    "reads ",
    "uses ",
)


def subject(name: str, message: str) -> str:
    """`message` said of the field `name`: "trigger must be 'once' or 'every'",
    and for a message that is a sentence of its own, "fallback: a fallback is…"."""
    if not name:
        return message
    joint = " " if message.startswith(_PREDICATES) else ": "
    return f"{name}{joint}{message}"


def named(fields: dict[str, str]) -> dict[str, str] | None:
    """The `fields` of an error answer: those a field names (an error about the
    whole object is in `detail` only)."""
    return {name: message for name, message in fields.items() if name} or None
