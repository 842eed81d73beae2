"""Botlnek's client: posting over HTTP (standard library), subscribing over a
websocket that reconnects and resumes by itself."""

import asyncio
import http.client
import json
import logging
import math
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import websockets

logger = logging.getLogger("botlnek.client")

DEFAULT_URL = "http://127.0.0.1:8000"
# A 429 answer is waited out (its Retry-After) and retried this many times.
RATE_LIMIT_RETRIES = 5
CHUNK = 1 << 16  # bytes a download copies at a time


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
        """Register one source; answers the API's source answer."""
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

    def subscribe(
        self,
        domain: str,
        aggregate: str | None = None,
        *,
        after_position: int | None = None,
        mode: str = "full",
        max_backoff: float = 30.0,
        on_subscribed: Callable[[int], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Version frames, in position order, each exactly once.

        Without `after_position` it starts with what arrives from now on. When the
        connection drops it reconnects with backoff and resumes after the last
        position it yielded, so nothing is lost and nothing repeats.
        `on_subscribed(latest_position)` is called each time the server confirms
        the subscription (at the start and after every reconnection).
        """
        request = {"domain": domain, "mode": mode}
        if aggregate is not None:
            request["aggregate"] = aggregate
        return self._follow(
            request, "position", after_position, max_backoff, on_subscribed
        )

    def subscribe_rule(
        self,
        domain: str,
        rule: str,
        *,
        after_seq: int | None = None,
        mode: str = "full",
        max_backoff: float = 30.0,
        on_subscribed: Callable[[int], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """A rule's events (`rule_event` frames; in full mode each with the
        aggregate's state as of the event's version), in seq order, each exactly
        once; resumed after the last seq yielded whenever the connection drops."""
        request = {"domain": domain, "rule": rule, "mode": mode}
        return self._follow(request, "seq", after_seq, max_backoff, on_subscribed)

    async def _follow(
        self,
        request: dict[str, Any],
        cursor: str,
        after: int | None,
        max_backoff: float,
        on_subscribed: Callable[[int], None] | None,
    ) -> AsyncIterator[dict[str, Any]]:
        last = after
        backoff = 0.5
        url = "ws" + self.url.removeprefix("http") + "/ws/subscribe"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        while True:
            try:
                # No size limit: a full-mode frame carries the whole state.
                async with websockets.connect(
                    url, additional_headers=headers, max_size=None
                ) as ws:
                    frame = {"type": "subscribe", "id": "s", **request}
                    if last is not None:
                        frame[f"after_{cursor}"] = last
                    await ws.send(json.dumps(frame))
                    async for text in ws:
                        message = json.loads(text)
                        if message["type"] == "error":
                            raise BotlnekError(
                                f"{message['error']}: {message['detail']}"
                            )
                        if message["type"] == "subscribed":
                            backoff = 0.5
                            if on_subscribed is not None:
                                on_subscribed(message[cursor])
                            if last is None:  # live only: from here, also on resume
                                last = message[cursor]
                        elif message[cursor] > (last or 0):
                            last = message[cursor]
                            yield message
            except websockets.InvalidStatus as exc:
                status = exc.response.status_code
                raise BotlnekError(
                    f"{url} refused the subscription (HTTP {status}); check the token",
                    status=status,
                ) from None
            except (TimeoutError, OSError, websockets.ConnectionClosed) as exc:
                logger.info("connection lost (%s); resuming after %s", exc, last)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        rate_limit_retries: int = RATE_LIMIT_RETRIES,
        idempotency_key: str | None = None,
    ) -> Any:
        """Send a request; its JSON answer. With `idempotency_key`, a retry of a
        write whose answer was lost writes nothing more (the server answers the
        first answer)."""
        headers = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        with self._open(method, path, data, headers, rate_limit_retries) as response:
            answer = response.read()
        return json.loads(answer) if answer else None

    def download(self, path: str, destination: Path) -> None:
        """GET `path` into the file `destination` as it arrives: an answer of any
        size (an aggregate's whole state, say) without holding it in memory."""
        with self._open("GET", path, None, {}, RATE_LIMIT_RETRIES) as response:
            try:
                with destination.open("wb") as file:
                    shutil.copyfileobj(response, file, CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                destination.unlink(missing_ok=True)  # never half a file
                raise BotlnekError(f"could not download {path}: {exc!r}") from None

    def _open(
        self,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        rate_limit_retries: int,
    ) -> Any:
        """The response to a request, once it is not a 429 (waited out and sent
        again, at most `rate_limit_retries` times); an error answer raises."""
        headers = {"Accept": "application/json", **headers}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method=method
        )
        retries = 0
        while True:
            try:
                return urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 429 or retries == rate_limit_retries:
                    raise _error_from(exc) from None
                # Rate limited: nothing was written, and registering is idempotent.
                retries += 1
                wait = _retry_after(exc.headers.get("Retry-After"))
                exc.close()
                time.sleep(wait)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise BotlnekError(f"cannot reach {self.url}: {reason}") from None


def _retry_after(value: str | None) -> float:
    """Seconds to wait: Retry-After's, within 0.1-60 s; 1 s when it is missing or
    not a number (an HTTP date, say)."""
    try:
        seconds = float(value or 1)
    except ValueError:
        return 1.0
    return min(max(seconds, 0.1), 60.0) if math.isfinite(seconds) else 1.0


def _error_from(exc: urllib.error.HTTPError) -> BotlnekError:
    try:
        body = json.load(exc)
        detail = body.get("detail") or body
    except ValueError:
        body, detail = None, exc.reason
    return BotlnekError(f"HTTP {exc.code}: {detail}", status=exc.code, body=body)
