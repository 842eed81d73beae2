"""The API's one error shape: {"error", "detail", "fields"?}."""

from django.http import JsonResponse


def error_response(
    status: int, error: str, detail: str, fields: dict[str, str] | None = None
) -> JsonResponse:
    body: dict = {"error": error, "detail": detail}
    if fields:
        body["fields"] = fields
    return JsonResponse(body, status=status)


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
