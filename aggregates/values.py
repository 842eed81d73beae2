"""The values Botlnek stores and sends: keys, JSON payloads and timestamps.

One definition of each rule, used by the models, the request shapes, the admin
and the operator commands alike.
"""

import json
import re
from datetime import UTC, datetime
from typing import Any

# Domain, aggregate and collection keys (also rule names).
KEY_CHARS = "A-Z a-z 0-9 . _ : @ + = -"
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:@+=-]+")
MAX_ATTRS_BYTES = 64 * 1024
MAX_DEPTH = 64


def key_rule(max_length: int):
    """A check raising ValueError with a sentence for a person, or passing the key."""

    def check(value: str) -> str:
        if not 1 <= len(value) <= max_length or not KEY_PATTERN.fullmatch(value):
            raise ValueError(
                f"must be 1-{max_length} characters from {KEY_CHARS} "
                "(no / and no spaces)"
            )
        return value

    return check


def canonical_json(value: Any) -> str:
    """Keys sorted, no whitespace: what a source's identity is hashed from."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 == 1.0, but true is not 1 (as it is in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    return type(a) is type(b) and a == b


# A NUL as json.dumps writes it: "\u0000" after an even number of backslashes
# (an odd number means the backslash itself was escaped and "u0000" is plain text).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"must not nest deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def storable_json_size(value: Any) -> int:
    """Reject NUL characters and deep nesting; answer the serialized size in bytes."""
    try:
        # Key order does not change the size, so canonical_json's sorting is skipped.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        raise ValueError(f"must not nest deeper than {MAX_DEPTH} levels") from None
    if _NUL.search(text):
        raise ValueError("must not contain the NUL character (U+0000)")
    if text.count("{") + text.count("[") >= MAX_DEPTH:  # else it cannot be too deep
        _check_depth(value)
    return len(text.encode())


def utc(value: datetime | str) -> datetime:
    """A timestamp as an aware UTC datetime; raw SQL on SQLite reads naive UTC text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds: 2026-11-26T10:00:00.000000Z."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"
