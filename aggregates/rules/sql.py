"""The rules engine's SQL: statuses, events and cursors, read and written in a few
statements per step.

Written out, as the store's write path is (aggregates/store/sql.py says why): a
step touches a status per rule for every version it applies, and building and
compiling those rows through the ORM cost more than the evaluation itself
(measured: ~20 ms for one version under 20 rules).
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection

from aggregates.models import Aggregate, Rule, RuleEvent, RuleStatus
from aggregates.rules.evaluate import State
from aggregates.store.sql import json_value, placeholders
from aggregates.values import isoformat, utc

STATUS = RuleStatus._meta.db_table
EVENT = RuleEvent._meta.db_table
RULE = Rule._meta.db_table
AGGREGATE = Aggregate._meta.db_table

_COLUMNS = (
    "status",
    "version",
    "position",
    "counts",
    "newest",
    "deadline",
    "evaluated_at",
    "was_ready",
    "late",
    "fired_version",
    "next_due_at",
    "changed_at",
    "error",
    "near_counts",
    "near_newest",
)


def _time(value: Any) -> datetime | None:
    return None if value is None else utc(value)


def load_statuses(
    rule_ids: Iterable[int],
    aggregate_ids: Iterable[int],
    due_by: datetime | None = None,
    due_limit: int = 0,
) -> list[tuple[int, int, int, str, datetime, State]]:
    """(row id, rule, aggregate, aggregate key, its first time, state) of the
    statuses of these aggregates, and of those due by `due_by` (at most
    `due_limit`, soonest first)."""
    rules = sorted(rule_ids)
    aggregates = sorted(aggregate_ids)
    columns = ", ".join(f's."{name}"' for name in _COLUMNS)
    select = (
        f's."id", s."rule_id", s."aggregate_id", a."key", a."created_at", {columns}'
        f' FROM "{STATUS}" s JOIN "{AGGREGATE}" a ON a."id" = s."aggregate_id"'
        f' WHERE s."rule_id" IN ({placeholders(len(rules))})'
    )
    rows = []
    with connection.cursor() as cursor:
        if aggregates:
            cursor.execute(
                f'SELECT {select} AND s."aggregate_id" IN'
                f" ({placeholders(len(aggregates))})",
                [*rules, *aggregates],
            )
            rows += cursor.fetchall()
        if due_by is not None:
            cursor.execute(
                f'SELECT {select} AND s."next_due_at" <= %s ORDER BY s."next_due_at"'
                " LIMIT %s",
                [*rules, _adapt_time(due_by), due_limit],
            )
            rows += cursor.fetchall()
    found, seen = [], set()
    for row in rows:
        if row[0] in seen:
            continue
        seen.add(row[0])
        row_id, rule_id, aggregate_id, key, first_at = row[:5]
        found.append(
            (row_id, rule_id, aggregate_id, key, utc(first_at), _state(row[5:]))
        )
    return found


def _state(row: tuple) -> State:
    (
        status,
        version,
        position,
        counts,
        newest,
        deadline,
        evaluated_at,
        was_ready,
        late,
        fired_version,
        next_due_at,
        changed_at,
        error,
        near_counts,
        near_newest,
    ) = row
    return State(
        status=status,
        version=version,
        position=position,
        counts=json_value(counts),
        newest={name: utc(at) for name, at in json_value(newest).items()},
        deadline=_time(deadline),
        evaluated_at=utc(evaluated_at),
        changed_at=utc(changed_at),
        was_ready=bool(was_ready),
        late=bool(late),
        fired_version=fired_version,
        next_due_at=_time(next_due_at),
        error=error,
        near_counts=json_value(near_counts),
        near_newest={ref: utc(at) for ref, at in json_value(near_newest).items()},
    )


def _adapt_time(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _values(state: State, ops) -> list[Any]:
    time = ops.adapt_datetimefield_value
    newest = {name: isoformat(at) for name, at in state.newest.items()}
    near_newest = {ref: isoformat(at) for ref, at in state.near_newest.items()}
    return [
        state.status,
        state.version,
        state.position,
        ops.adapt_json_value(state.counts, None),
        ops.adapt_json_value(newest, None),
        time(state.deadline),
        time(state.evaluated_at),
        state.was_ready,
        state.late,
        state.fired_version,
        time(state.next_due_at),
        time(state.changed_at),
        state.error,
        ops.adapt_json_value(state.near_counts, None),
        ops.adapt_json_value(near_newest, None),
    ]


def save_statuses(
    changed: Iterable[tuple[int | None, int, int, State]],
) -> None:
    """(row id or None, rule, aggregate, state): update the rows there, insert
    the others."""
    updates, inserts = [], []
    ops = connection.ops
    for row_id, rule_id, aggregate_id, state in changed:
        if row_id is None:
            inserts.append([rule_id, aggregate_id, *_values(state, ops)])
        else:
            updates.append([*_values(state, ops), row_id])
    names = ", ".join(f'"{name}"' for name in _COLUMNS)
    with connection.cursor() as cursor:
        if updates:
            assignments = ", ".join(f'"{name}" = %s' for name in _COLUMNS)
            cursor.executemany(
                f'UPDATE "{STATUS}" SET {assignments} WHERE "id" = %s', updates
            )
        if inserts:
            cursor.executemany(
                f'INSERT INTO "{STATUS}" ("rule_id", "aggregate_id", {names})'
                f" VALUES ({placeholders(len(_COLUMNS) + 2)})",
                inserts,
            )


def save_events(events: list[tuple]) -> None:
    """(rule, seq, aggregate, event, reason, version, position, late, at, inputs)
    rows."""
    if not events:
        return
    to_json = connection.ops.adapt_json_value
    with connection.cursor() as cursor:
        cursor.executemany(
            f'INSERT INTO "{EVENT}" ("rule_id", "seq", "aggregate", "event",'
            ' "reason", "version", "position", "late", "at", "inputs")'
            f" VALUES ({placeholders(10)})",
            [
                (*event[:8], _adapt_time(event[8]), to_json(event[9], None))
                for event in events
            ],
        )


def save_cursors(
    rule_ids: Iterable[int],
    position: int | None,
    seqs: dict[int, int],
    expect_next: dict[int, datetime],
) -> None:
    """These rules (those the step locked: never one created meanwhile, which has
    not read what they read) have evaluated up to `position`; some rules' logs
    reached new seqs, some rules' expected keys new moments."""
    rules = sorted(rule_ids)
    with connection.cursor() as cursor:
        if position is not None and rules:
            cursor.execute(
                f'UPDATE "{RULE}" SET "position" = %s'
                f' WHERE "id" IN ({placeholders(len(rules))}) AND "position" < %s',
                [position, *rules, position],
            )
        if seqs:
            cursor.executemany(
                f'UPDATE "{RULE}" SET "latest_seq" = %s WHERE "id" = %s',
                [(seq, rule_id) for rule_id, seq in seqs.items()],
            )
        if expect_next:
            cursor.executemany(
                f'UPDATE "{RULE}" SET "expect_next" = %s WHERE "id" = %s',
                [
                    (_adapt_time(moment), rule_id)
                    for rule_id, moment in expect_next.items()
                ],
            )
