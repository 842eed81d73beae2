"""A small HTTP client for the JSON API, on the standard library alone."""

import json
import os
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


class BotlnekError(Exception):
    """The server answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30
    ):
        self.url = (url or os.environ.get("BOTLNEK_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("BOTLNEK_TOKEN")
        self.timeout = timeout

    def post(
        self,
        domain: str,
        aggregate: str,
        collection: str,
        keys: dict[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register one source; answers the SPEC §3 source answer."""
        source = {
            "domain": domain,
            "aggregate": aggregate,
            "collection": collection,
            "keys": keys or {},
            "attrs": attrs or {},
        }
        return self.request("POST", "/api/sources", source)

    def post_batch(self, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Register up to 1,000 sources all or nothing; answers in request order."""
        return self.request("POST", "/api/sources", sources)["results"]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise _error_from(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BotlnekError(f"cannot reach {self.url}: {reason}") from None


def _error_from(exc: urllib.error.HTTPError) -> BotlnekError:
    try:
        body = json.load(exc)
        detail = body.get("detail") or body
    except ValueError:
        body, detail = None, exc.reason
    return BotlnekError(f"HTTP {exc.code}: {detail}", status=exc.code, body=body)
