"""Readiness conditions (`botlnek watch --when`, a rule's `when`), parsed by a small
recursive-descent parser into a tree (never eval). The client and the server share
this module: one grammar, one error format with columns.

    condition := or
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | compare
    compare   := operand (("<" | "<=" | ">" | ">=" | "==" | "!=") operand)?
    operand   := INTEGER | DURATION | ref | count(ref) | age(ref) | "(" condition ")"
    ref       := (NAME | "name") ("@" OFFSET (".." OFFSET)?)?
    OFFSET    := ("+" | "-")? DURATION

A collection NAME stands for its number of sources; age() is the age in seconds of a
collection's newest source; durations are 90s, 15m, 6h, 2d. A missing collection
counts 0 and its age is infinite. `X@-1d` is collection X in the neighbour whose key
date is a day earlier, `X@-2d..0d` in every neighbour of a window (both bounds
included; aggregates/keydates.py does the key arithmetic): only rules, which see
every aggregate, can answer those; Facts are keyed by the reference as written
(Ref.key), so a plain X is its collection. A bare count means "at least one". Ages are
compared with at most MAX_AGE_SECONDS (ten years: a bound past that could not be
added to a time), and conditions nest at most MAX_DEPTH deep (parentheses and
`not`): each level costs the parser a few frames of Python's stack.

Besides answering for given facts, a condition lists its comparisons (`terms`, for
"why not?") and the moments at which time alone may change its answer (`changes`).
"""

from aggregates.conditions.parser import parse, parse_offset
from aggregates.conditions.tree import (
    MAX_AGE_SECONDS,
    MAX_DEPTH,
    MAX_WINDOW_SECONDS,
    Condition,
    ConditionError,
    Facts,
    Ref,
    Term,
    format_duration,
    parse_duration,
)

__all__ = [
    "MAX_AGE_SECONDS",
    "MAX_DEPTH",
    "MAX_WINDOW_SECONDS",
    "Condition",
    "ConditionError",
    "Facts",
    "Ref",
    "Term",
    "format_duration",
    "parse",
    "parse_duration",
    "parse_offset",
]
