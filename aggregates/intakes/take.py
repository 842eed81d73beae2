"""Events in, sources out: a request to an intake, each of its events answered
alone; and the preview, the same mapping with nothing saved.

One event goes through group commit with the single posts of the API (it shares
their transactions); several (a batch, a list under `each`) are registered
together by register_each, each on its own: one that fails leaves no trace and
takes nothing from the others. An event refused by the mapping never reaches
the store.
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from aggregates import db, metrics, store
from aggregates.errors import ApiError, StoreError
from aggregates.intakes import events
from aggregates.intakes.definition import IntakeIn, Mapping, definition_json
from aggregates.intakes.read import get_intake
from aggregates.intakes.sandbox import Refused
from aggregates.intakes.tally import save_counts, tally
from aggregates.store import NewSource, Registration, group_commit

FRESH_SECONDS = 1.0  # how long a process keeps an intake's definition


@dataclass(frozen=True)
class _Known:
    intake_id: int
    updated_at: Any
    mapping: Mapping
    until: float


class Mappings:
    """The compiled mappings of the intakes posted to, read again from the
    database at most every FRESH_SECONDS: a change made through another process
    applies here within that time (at once through this one)."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, str], _Known] = {}

    async def get(self, domain: str, name: str) -> tuple[int, Mapping]:
        known = self.known.get((domain, name))
        now = time.monotonic()
        if known is None or known.until < now:
            intake = await db.read(get_intake, domain, name)
            if known is None or known.updated_at != intake.updated_at:
                mapping = Mapping.of_intake(intake, domain)
            else:
                mapping = known.mapping
            known = _Known(intake.pk, intake.updated_at, mapping, now + FRESH_SECONDS)
            if len(self.known) > 10_000:
                self.known.clear()
            self.known[domain, name] = known
        return known.intake_id, known.mapping

    def forget(self, domain: str, name: str) -> None:
        self.known.pop((domain, name), None)


mappings = Mappings()


def lower_headers(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def take(
    domain: str, name: str, content_type: str, headers: dict[str, str], body: bytes
) -> tuple[list[dict[str, Any]], list[str]]:
    """Register the events of one request: an answer per event, in order, and
    the domains written to."""
    intake_id, mapping = await mappings.get(domain, name)
    try:
        read = events.read(content_type, headers, body)
        mapped = mapping.sources(read, events.visible_headers(headers))
    except ApiError as exc:  # no events to take: counted, and shown, as one refused
        tally.add(intake_id, 0, 1, f"the request: {exc.detail}")
        metrics.intake_events(domain, 0, 1)
        raise
    new = [item for item in mapped if isinstance(item, NewSource)]
    if len(new) == 1:
        try:
            outcomes: list = [await group_commit.register(new[0])]
        except StoreError as exc:
            outcomes = [exc]
    elif new:
        outcomes = await db.write(store.register_each, new)
    else:
        outcomes = []
    answers = _answers(mapped, outcomes)
    counts = _counts(answers)
    tally.add(intake_id, *counts)
    metrics.intake_events(domain, *counts[:2])
    return answers, sorted({o.domain for o in outcomes if isinstance(o, Registration)})


def post_now(
    domain: str, name: str, content_type: str, headers: dict[str, str], body: bytes
) -> list[dict[str, Any]]:
    """take() for synchronous code (`manage.py demo`, a shell): the events of
    one request registered in one transaction, each on its own, and counted."""
    intake = get_intake(domain, name)
    mapping = Mapping.of_intake(intake, domain)
    headers = lower_headers(headers)
    mapped = mapping.sources(
        events.read(content_type, headers, body), events.visible_headers(headers)
    )
    new = [item for item in mapped if isinstance(item, NewSource)]
    answers = _answers(mapped, store.register_each(new) if new else [])
    save_counts({intake.pk: _counts(answers)})
    return answers


def _answers(mapped: list[NewSource | Refused], outcomes: list) -> list[dict]:
    """An answer per event: its registration (in `outcomes`, in order) or refusal."""
    registered = iter(outcomes)
    return [
        _answer(next(registered) if isinstance(item, NewSource) else item)
        for item in mapped
    ]


def _counts(answers: list[dict]) -> tuple[int, int, str | None]:
    """Accepted, refused, and the last refusal."""
    refused = [answer for answer in answers if answer["status"] >= 400]
    last = refused[-1]["detail"] if refused else None
    return len(answers) - len(refused), len(refused), last


def _answer(outcome: Registration | StoreError | Refused) -> dict[str, Any]:
    if isinstance(outcome, Registration):
        return {"status": 201 if outcome.created else 200, **outcome.as_json()}
    if isinstance(outcome, Refused):
        return {
            "status": 422,
            "error": "refused",
            "detail": str(outcome),
            "fields": {outcome.field: outcome.detail},
        }
    field = outcome.field or "event"
    return {
        "status": outcome.status,
        "error": outcome.code,
        "detail": outcome.detail,
        "fields": {field: outcome.detail},
    }


def preview(
    domain: str, definition: IntakeIn, body: Any, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """What `definition` would register for a request with this body and these
    headers; nothing is saved. A string body of a binary-mode event is sent as
    it is, anything else as JSON."""
    store.get_domain(domain)
    headers = {"content-type": "application/json", **lower_headers(headers)}
    binary = "ce-specversion" in headers or "ce-id" in headers
    raw = body if binary and isinstance(body, str) else json.dumps(body)
    mapping = Mapping.of(domain, definition.fields())
    read = events.read(headers["content-type"], headers, raw.encode())
    return [
        _preview_answer(item)
        for item in mapping.sources(read, events.visible_headers(headers))
    ]


def _preview_answer(item: NewSource | Refused) -> dict[str, Any]:
    if isinstance(item, Refused):
        return _answer(item)
    return {
        "domain": item.domain,
        "aggregate": item.aggregate,
        "collection": item.collection,
        "keys": item.keys,
        "attrs": item.attrs,
    }


def saved_preview(domain: str, name: str, body: Any, headers: dict[str, str]):
    """The preview of an intake as it is saved (the dashboard's)."""
    intake = get_intake(domain, name)
    return preview(
        domain, IntakeIn.model_validate(definition_json(intake)), body, headers
    )
