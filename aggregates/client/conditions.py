"""`--when` conditions for `botlnek watch`, parsed by a small recursive-descent
parser (never eval).

    condition := or
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | compare
    compare   := operand (("<" | "<=" | ">" | ">=" | "==" | "!=") operand)?
    operand   := INTEGER | DURATION | NAME | count(NAME | "name") | age(NAME | "name")
               | "(" condition ")"

A collection NAME stands for its number of sources; age() is the age in seconds of a
collection's newest source; durations are 90s, 15m, 6h, 2d. A missing collection
counts 0 and its age is infinite. A bare count means "at least one".
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<duration>\d+(?:s|m|h|d)\b)
      | (?P<int>\d+)
      | (?P<string>"[^"]*"|'[^']*')
      | (?P<op><=|>=|==|!=|<|>|\(|\)|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class ConditionError(ValueError):
    def __init__(self, message: str, column: int):
        super().__init__(f"{message} at column {column}")
        self.column = column


@dataclass(frozen=True)
class Facts:
    """What a condition can ask about one aggregate."""

    counts: dict[str, int]
    newest: dict[str, datetime]  # collection → time of its newest source
    now: datetime

    def count(self, collection: str) -> int:
        return self.counts.get(collection, 0)

    def age(self, collection: str) -> float:
        newest = self.newest.get(collection)
        return math.inf if newest is None else (self.now - newest).total_seconds()

    @classmethod
    def from_state(cls, state: dict[str, Any], now: datetime | None = None) -> "Facts":
        newest: dict[str, datetime] = {}
        for version in state.get("versions", []):
            at = datetime.fromisoformat(version["at"].replace("Z", "+00:00"))
            newest[version["collection"]] = max(
                at, newest.get(version["collection"], at)
            )
        counts = {name: len(items) for name, items in state["collections"].items()}
        return cls(counts, newest, now or datetime.now(UTC))


Node = Callable[[Facts], Any]


@dataclass
class _Token:
    kind: str
    text: str
    column: int


def _tokens(text: str) -> list[_Token]:
    tokens, index = [], 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None or match.end() == index:
            if text[index:].strip() == "":
                break
            column = index + len(text[index:]) - len(text[index:].lstrip()) + 1
            raise ConditionError(f"unexpected {text[column - 1]!r}", column)
        kind = match.lastgroup
        column = match.start(kind) + 1
        tokens.append(_Token(kind, match.group(kind), column))
        index = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.token
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def expect(self, kind: str, text: str, what: str) -> _Token:
        token = self.take(kind, text)
        if token is None:
            raise ConditionError(f"expected {what}", self.token.column)
        return token

    def parse(self) -> Node:
        node = self.or_()
        if self.token.kind != "end":
            raise ConditionError(f"unexpected {self.token.text!r}", self.token.column)
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.take("name", "or"):
            node = _either(node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.take("name", "and"):
            node = _both(node, self.not_())
        return node

    def not_(self) -> Node:
        if self.take("name", "not"):
            inner = self.not_()
            return lambda f: not inner(f)
        return self.compare()

    def compare(self) -> Node:
        left, left_kind = self.operand()
        op = self.token
        if op.kind == "op" and op.text in _COMPARE:
            self.index += 1
            right, right_kind = self.operand()
            if "bool" in (left_kind, right_kind):
                raise ConditionError("cannot compare a condition", op.column)
            compare = _COMPARE[op.text]
            return lambda f: compare(left(f), right(f))
        if left_kind not in ("bool", "count"):
            raise ConditionError("expected a comparison", op.column)
        return left

    def operand(self) -> tuple[Node, str]:
        token = self.token
        if self.take("int"):
            value = int(token.text)
            return (lambda f: value), "number"
        if self.take("duration"):
            seconds = int(token.text[:-1]) * _UNITS[token.text[-1]]
            return (lambda f: seconds), "number"
        if self.take("op", "("):
            node = self.or_()
            self.expect("op", ")", "')'")
            return node, "bool"
        if token.kind == "name" and token.text in ("count", "age"):
            self.index += 1
            self.expect("op", "(", f"'(' after {token.text}")
            name = self.take("name") or self.take("string")
            if name is None:
                raise ConditionError("expected a collection", self.token.column)
            collection = name.text.strip("\"'") if name.kind == "string" else name.text
            self.expect("op", ")", "')'")
            if token.text == "age":
                return (lambda f: f.age(collection)), "age"
            return (lambda f: f.count(collection)), "count"
        if token.kind == "name" and token.text not in ("and", "or", "not"):
            self.index += 1
            return (lambda f: f.count(token.text)), "count"
        if token.kind == "end":
            raise ConditionError("expected a value, found the end", token.column)
        raise ConditionError(f"unexpected {token.text!r}", token.column)


def _either(left: Node, right: Node) -> Node:
    return lambda facts: bool(left(facts)) or bool(right(facts))


def _both(left: Node, right: Node) -> Node:
    return lambda facts: bool(left(facts)) and bool(right(facts))


def parse(text: str) -> Node:
    """A function of Facts answering whether the condition holds."""
    if not text.strip():
        raise ConditionError("the condition is empty", 1)
    return _Parser(text).parse()
