"""`Idempotency-Key`: a write that is not idempotent by nature (a receipt, a rule,
a webhook) can be retried safely. The IETF's draft (httpapi-idempotency-key-header)
gives the meaning: the first request with a key does the write and its answer is
kept, in the same transaction; the same key with the same request (method, path,
body) answers that first answer again without writing; the same key with another
request is a 422. Keys belong to the token that sent them and are kept for a day.
"""

import hashlib
import json
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from aggregates import db
from aggregates.access import token_of
from aggregates.errors import ApiError, StoreError
from aggregates.models import IdempotentRequest

HEADER = "Idempotency-Key"
KEEP = timedelta(hours=24)
MAX_LENGTH = 255
# The OpenAPI parameter of the endpoints that take it.
PARAMETER = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH},
    "description": (
        "Any unique string (a UUID): a retry with the same key and the same body "
        "answers the first answer and writes nothing more; kept for 24 hours."
    ),
}


class KeyReused(StoreError):
    status = 422
    code = "idempotency_key_reused"


def key_of(request: HttpRequest) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_LENGTH or not key.isascii() or not key.isprintable():
        detail = f"must be 1 to {MAX_LENGTH} printable ASCII characters"
        raise ApiError(400, "invalid", f"{HEADER} {detail}", {HEADER: detail})
    return key


async def respond(
    request: HttpRequest, status: int, write: Callable[..., Any], *args, **kwargs
) -> HttpResponse:
    """Answer `write(*args, **kwargs)` (a function of the write path answering
    JSON data) with `status`; with an Idempotency-Key, exactly once per key."""
    key = key_of(request)
    if key is None:
        data = await db.write(write, *args, **kwargs)
        return _response(status, _encode(data))
    fingerprint = hashlib.sha256(
        b"\n".join([request.method.encode(), request.path.encode(), request.body])
    ).hexdigest()
    token = token_of(request).pk
    stored, body, replayed = await db.write(
        _once, token, key, fingerprint, status, lambda: write(*args, **kwargs)
    )
    response = _response(stored, body)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _once(
    token: int, key: str, fingerprint: str, status: int, write: Callable[[], Any]
) -> tuple[int, str, bool]:
    """(status, body, whether it is a replay) of the request with this key."""
    for _ in range(2):
        try:
            return _first_or_write(token, key, fingerprint, status, write)
        except _Raced:
            continue  # its first answer is there now
    raise AssertionError("an Idempotency-Key raced twice")


class _Raced(Exception):
    """The same key's first request committed while this one began."""


def _first_or_write(
    token: int, key: str, fingerprint: str, status: int, write: Callable[[], Any]
) -> tuple[int, str, bool]:
    fresh = timezone.now() - KEEP
    with transaction.atomic():
        found = IdempotentRequest.objects.filter(
            token_id=token, key=key, created_at__gte=fresh
        ).first()
        if found is not None:
            if found.fingerprint != fingerprint:
                raise KeyReused(
                    f"this {HEADER} was sent before with another request; use a "
                    "new key for a new request",
                    field=HEADER,
                )
            return found.status, found.body, True
        if random.random() < 0.01:  # now and then, the expired ones go
            IdempotentRequest.objects.filter(created_at__lt=fresh).delete()
        # This key's expired row, if any. Only an expired one: on PostgreSQL this
        # DELETE waits for a concurrent request's uncommitted claim, and would
        # then delete it, and write a second time beside it.
        IdempotentRequest.objects.filter(
            token_id=token, key=key, created_at__lt=fresh
        ).delete()
        # The key's row first: a request with the same key that arrives
        # meanwhile waits on its unique index (PostgreSQL) until this commits,
        # then answers this answer, instead of writing beside it (a rule name
        # taken by this very write would have been its 409).
        try:
            with transaction.atomic():
                claimed = IdempotentRequest.objects.create(
                    token_id=token, key=key, fingerprint=fingerprint, status=0, body=""
                )
        except IntegrityError:
            raise _Raced from None
        body = _encode(write())
        claimed.status, claimed.body = status, body
        claimed.save(update_fields=["status", "body"])
    return status, body, False


def _encode(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, cls=DjangoJSONEncoder)


def _response(status: int, body: str) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="application/json")
