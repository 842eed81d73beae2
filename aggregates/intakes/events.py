"""The events of a request to an intake: CloudEvents 1.0 over HTTP in binary,
structured or batch mode, or any JSON body as one event whose data is the body.

The CloudEvents SDK reads binary mode (its header decoding and data by content
type) and checks every event's attributes as the specification says (required
id, source, type and specversion 1.0; the types of the optional ones; extension
names). Structured and batch bodies are parsed here, as strictly as every other
JSON body of the API (no NaN, no Infinity), and each object is made an event the
way the SDK's JSON format does; the SDK reads no batches. An event the SDK
refuses is refused alone, as any other event.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from aggregates.api_base import loads
from aggregates.errors import ApiError
from aggregates.intakes.sandbox import Refused

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# Never shown to templates (nor kept anywhere).
SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
MAX_EVENTS = 1000

_FORMAT = JSONFormat()


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its CloudEvents attributes (None for plain JSON), its data, and
    with `each`, the element it stands for."""

    attributes: dict[str, Any] | None
    data: Any
    item: Any = None


def read(
    content_type: str, headers: dict[str, str], body: bytes
) -> list[Event | Refused]:
    """The events of a request, in order; an event that is not a valid
    CloudEvent is its Refused. Raises ApiError when the body is no event at all.
    `headers` are lower-cased."""
    if "ce-specversion" in headers or "ce-id" in headers:
        return [_binary(headers, body)]
    if content_type == STRUCTURED:
        return [_structured(_object(loads(body), "the body"))]
    if content_type == BATCH:
        batch = loads(body)
        if not isinstance(batch, list):
            raise ApiError(
                400, "invalid", "a CloudEvents batch is a JSON array of events"
            )
        at_most(len(batch), "a CloudEvents batch")
        if not batch:
            raise ApiError(
                400, "invalid", "a CloudEvents batch holds one event or more"
            )
        return [_structured(element) for element in batch]
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send a CloudEvent (ce-* headers, or Content-Type "
            f"{STRUCTURED} or {BATCH}), or JSON with 'Content-Type: application/json'",
        )
    return [Event(None, loads(body))]


def _binary(headers: dict[str, str], body: bytes) -> Event | Refused:
    message = HTTPMessage(headers=headers, body=body)
    try:
        event = from_binary(message, _FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError) as exc:
        return Refused("event", _invalid(exc))
    return Event(_attributes(event, "ce-time" in headers), event.get_data())


def _structured(element: Any) -> Event | Refused:
    """An object of structured or batch mode as an event, as the SDK's JSON
    format reads one (data, or data_base64 decoded)."""
    if not isinstance(element, dict):
        return Refused("event", "a CloudEvent is a JSON object")
    attributes = dict(element)
    data = attributes.pop("data", None)
    encoded = attributes.pop("data_base64", None)
    if data is None and encoded is not None:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            return Refused("event", "data_base64 is not base64")
    sent_time = "time" in attributes
    if sent_time:
        try:
            attributes["time"] = datetime.fromisoformat(attributes["time"])
        except (TypeError, ValueError):
            return Refused("event", "time is not an RFC 3339 time")
    try:
        event = CloudEvent(attributes, data)
    except (BaseCloudEventException, ValueError) as exc:
        return Refused("event", _invalid(exc))
    return Event(_attributes(event, sent_time), data)


def _attributes(event: BaseCloudEvent, sent_time: bool) -> dict[str, Any]:
    """The attributes as templates see them: as sent (the SDK adds a time when
    none was sent; that is dropped), time in RFC 3339."""
    attributes = dict(event.get_attributes())
    time = attributes.pop("time", None)
    if sent_time and isinstance(time, datetime):
        attributes["time"] = time.isoformat().replace("+00:00", "Z")
    return attributes


def _invalid(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        name, problems = next(iter(errors.items()))
        problem = problems[0] if problems else ""
        return f"not a valid CloudEvent: {name}: {_sentence(problem)}"
    return f"not a valid CloudEvent: {_sentence(exc)}"


def _sentence(problem: Any) -> str:
    text = str(getattr(problem, "msg", "") or problem)
    return text.replace("Attribute ", "").rstrip(".")


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ApiError(400, "invalid", f"{what} must be a JSON object")
    return value


def at_most(count: int, what: str) -> None:
    """At most MAX_EVENTS events in a request, or it is refused whole (413)."""
    if count > MAX_EVENTS:
        raise ApiError(
            413,
            "payload_too_large",
            f"{what} holds at most {MAX_EVENTS} events, not {count}",
        )


def expand(event: Event, each: str) -> list[Event | Refused]:
    """With `each` (a dotted path into the data), one event per element of the
    list there, sharing the event's attributes and data."""
    found: Any = event.data
    for part in each.split("."):
        if isinstance(found, dict) and part in found:
            found = found[part]
        elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            return [Refused("each", f"the data has no {each!r}")]
    if not isinstance(found, list) or not found:
        return [Refused("each", f"{each!r} in the data is not a list of events")]
    at_most(len(found), f"{each!r}")
    return [Event(event.attributes, event.data, item) for item in found]


def visible_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers a template may read: never credentials."""
    return {
        name: value for name, value in headers.items() if name not in SECRET_HEADERS
    }
