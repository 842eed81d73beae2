"""One attempt to deliver an event to a webhook's receiver: signed per Standard
Webhooks, to the address its host was checked at (targets.py), ending
ATTEMPT_SECONDS after it started whatever the receiver does, reading at most
BODY_LIMIT bytes of the answer; as Botlnek's JSON or a CloudEvent (structured
mode), as the webhook's format says. Each webhook has its own client (client()), so no
receiver holds up another's connections."""

import asyncio
import functools
import json
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from django.conf import settings
from django.utils import timezone
from standardwebhooks import Webhook as Signer

from aggregates.models import Webhook, WebhookDelivery
from aggregates.webhooks import targets

ATTEMPT_SECONDS = 10  # from connecting to the end of the answer
BODY_LIMIT = 64 * 1024  # of an answer, read and dropped


@dataclass(frozen=True)
class Outbound:
    """An event of the webhook's stream: where it is, and what to send (if any),
    in either format."""

    cursor: int
    event_id: str
    body: str | None  # None: not one this webhook wants (another rule event)
    cloudevent: str | None = None

    @classmethod
    def of(
        cls, domain: str, kind: str, cursor: int, event_id: str, event: dict | None
    ) -> "Outbound":
        """`event` (None when unwanted) of type `kind` (version, rule.fired,
        rule.late) in both formats: Botlnek's, and CloudEvents' structured mode."""
        if event is None:
            return cls(cursor, event_id, None)
        body = json.dumps({"type": kind, **event}, ensure_ascii=False)
        cloudevent = {
            "specversion": "1.0",
            "id": event_id,
            "source": f"/domains/{domain}",
            "type": f"io.botlnek.{kind}",
            "subject": event["aggregate"],
            "time": event["at"],
            "datacontenttype": "application/json",
            # CloudEvents' sequence extension is a string that orders as text.
            "sequence": f"{cursor:020d}",
            "data": event,
        }
        return cls(cursor, event_id, body, json.dumps(cloudevent, ensure_ascii=False))

    def content(self, format: str) -> tuple[str, str]:
        """The content type and body a webhook of `format` is sent."""
        if format == Webhook.Format.CLOUDEVENTS:
            return CLOUDEVENTS_JSON, self.cloudevent  # type: ignore[return-value]
        return "application/json", self.body  # type: ignore[return-value]


CLOUDEVENTS_JSON = "application/cloudevents+json"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every webhook's client (building one reads the
    certificate store: tens of milliseconds)."""
    return httpx.create_ssl_context()


def client() -> httpx.AsyncClient:
    """A webhook's own HTTP client: one connection at most, kept between its
    events; no proxy from the environment (a proxy would resolve the host again);
    redirects are not followed."""
    return httpx.AsyncClient(
        verify=_tls(),
        trust_env=False,
        follow_redirects=False,
        timeout=ATTEMPT_SECONDS,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


async def post(
    webhook: Webhook, event: Outbound, client: httpx.AsyncClient
) -> tuple[WebhookDelivery, Exception | None]:
    """One attempt to deliver `event`, and why it failed if it did."""
    attempt = WebhookDelivery(
        event_id=event.event_id, attempt=webhook.attempts + 1, at=timezone.now()
    )
    started = time.perf_counter()
    failure = None
    try:
        allowed = settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS
        addresses = await targets.check_async(webhook.url, allowed)
        timestamp = datetime.now(UTC)
        content_type, body = event.content(webhook.format)
        signature = Signer(webhook.secret).sign(event.event_id, timestamp, body)
        headers = {
            "content-type": content_type,
            "webhook-id": event.event_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
            "user-agent": "Botlnek",
        }
        attempt.status_code = await _call(
            client, webhook.url, addresses, headers, body.encode()
        )
    except targets.Refused as exc:
        attempt.error, failure = str(exc)[:500], exc
    except TimeoutError as exc:
        seconds = time.perf_counter() - started
        attempt.error = f"TimeoutError: no whole answer within {seconds:.1f} s"
        failure = exc
    except Exception as exc:  # a failed attempt, whatever failed: retried
        attempt.error = f"{type(exc).__name__}: {exc}".rstrip(": ")[:500]
        failure = exc
    attempt.ms = (time.perf_counter() - started) * 1000
    return attempt, failure


async def _call(
    client: httpx.AsyncClient,
    url: str,
    addresses: list[targets.Address],
    headers: dict[str, str],
    body: bytes,
) -> int:
    """POST `body` to `url` at the first of `addresses` that takes a connection
    (the Host header and TLS's server name stay the URL's); the answer's status.
    The attempt ends ATTEMPT_SECONDS after it started, and at most BODY_LIMIT
    bytes of the answer are read."""
    target = httpx.URL(url)
    headers = {**headers, "host": target.netloc.decode("ascii")}
    server_name = target.raw_host.decode("ascii")
    # Each address gets its share of the time to connect: one that drops the
    # connection attempt (a blackholed IPv6 route) leaves time for the next.
    timeout = httpx.Timeout(ATTEMPT_SECONDS, connect=ATTEMPT_SECONDS / len(addresses))
    async with asyncio.timeout(ATTEMPT_SECONDS):
        for index, address in enumerate(addresses):
            pinned = target.copy_with(host=str(address))
            try:
                async with client.stream(
                    "POST",
                    pinned,
                    content=body,
                    headers=headers,
                    timeout=timeout,
                    extensions={"sni_hostname": server_name},
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= BODY_LIMIT:
                            break
                    return response.status_code
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if index == len(addresses) - 1:
                    raise
    raise AssertionError("unreachable: there is always an address")
