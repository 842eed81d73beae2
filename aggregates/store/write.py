"""The one write path: register_sources() appends versions, all or nothing, and
register_each() does it for items that stand alone (single posts taken together).

It is the only code that writes Aggregate, Version and Source rows. Every writer
locks the domains it touches, in key order, so per-aggregate versions and
per-domain positions are assigned one writer at a time and become visible in
position order; the lock is held to commit, which makes position order commit order.
New versions are announced with transaction.on_commit, never before the commit.

On PostgreSQL all of it is one statement: botlnek_register(), a server-side function
(migration 0005 installs it and documents its contract), run in autocommit, so the
domain's row lock (SELECT … FOR UPDATE) is held for server time only, never across a
network round trip. On SQLite the same decisions are made in Python, in one
BEGIN IMMEDIATE transaction (SQLite's whole-database write lock) on the one writer
thread (write_sqlite.py). What it takes and answers is in registration.py.
"""

from collections.abc import Sequence
from contextlib import nullcontext

from django.db import DatabaseError, connection, transaction

from aggregates import announcements
from aggregates.errors import StoreError
from aggregates.keydates import key_date
from aggregates.store import write_sqlite
from aggregates.store.registration import (
    NewSource,
    Registration,
    conflict,
    unknown_domain,
)


def register_sources(items: Sequence[NewSource]) -> list[Registration]:
    """Register sources all or nothing: the first that fails raises its StoreError
    (with its index) and nothing is written."""
    return _register(items, all_or_nothing=True)  # type: ignore[return-value]


def register_each(items: Sequence[NewSource]) -> list[Registration | StoreError]:
    """Register each source on its own, in one transaction: a source that fails
    answers its StoreError and leaves no trace; the others are written."""
    return _register(items, all_or_nothing=False)


def _register(
    items: Sequence[NewSource], *, all_or_nothing: bool
) -> list[Registration | StoreError]:
    if not items:
        return []
    if connection.vendor == "postgresql":
        outcomes = _register_postgres(items, all_or_nothing)
    else:
        outcomes = write_sqlite.register(items, all_or_nothing)
    committed = [
        announcements.VersionCommitted(
            domain=o.domain,
            aggregate=o.aggregate,
            version=o.version,
            position=o.position,
        )
        for o in outcomes
        if isinstance(o, Registration) and o.created
    ]
    if committed:
        # Right away in autocommit (PostgreSQL's one statement has committed).
        transaction.on_commit(lambda: announcements.versions_committed.send(committed))
    return outcomes


# PostgreSQL: one statement.

_REGISTER = (
    "SELECT * FROM botlnek_register(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::jsonb[], %s::jsonb[], %s::text[], %s::text[], %s::timestamptz[], %s)"
)


def _register_postgres(
    items: Sequence[NewSource], all_or_nothing: bool
) -> list[Registration | StoreError]:
    keys = [item.key for item in items]
    to_json = connection.ops.adapt_json_value
    # Each aggregate's key date, for the one it makes (migration 0009).
    dates = [key_date(item.aggregate) for item in items]
    params = [
        [item.domain for item in items],
        [item.aggregate for item in items],
        [item.collection for item in items],
        keys,
        [to_json(item.keys, None) for item in items],
        [to_json(item.attrs, None) for item in items],
        [date.template if date else "" for date in dates],
        [date.shape if date else "" for date in dates],
        [date.at if date else None for date in dates],
        all_or_nothing,
    ]
    # Inside a caller's transaction a savepoint keeps a refusal from poisoning it.
    scope = transaction.atomic() if connection.in_atomic_block else nullcontext()
    try:
        with scope, connection.cursor() as cursor:
            cursor.execute(_REGISTER, params)
            rows = cursor.fetchall()
    except DatabaseError as exc:
        refusal = _refusal(exc, items)
        if refusal is None:
            raise
        raise refusal from None
    outcomes: list[Registration | StoreError] = []
    for index, (item, key, (outcome, number, position, at)) in enumerate(
        zip(items, keys, rows, strict=True)
    ):
        if outcome == "unknown_domain":
            outcomes.append(unknown_domain(item, index))
        elif outcome == "conflict":
            outcomes.append(conflict(item, index, number))
        else:
            outcomes.append(
                Registration.of(outcome == "created", item, key, number, position, at)
            )
    return outcomes


def _refusal(exc: DatabaseError, items: Sequence[NewSource]) -> StoreError | None:
    """The StoreError botlnek_register() raised for an all-or-nothing batch."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate not in ("BL404", "BL409"):
        return None
    index, number = map(int, cause.diag.message_detail.split())
    if sqlstate == "BL404":
        return unknown_domain(items[index], index)
    return conflict(items[index], index, number)
