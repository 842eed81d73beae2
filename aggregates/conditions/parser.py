"""The condition language's parser: a small recursive descent over tokens, into
the tree (tree.py), never eval; errors name their column."""

import re
from dataclasses import dataclass

from aggregates.conditions.tree import (
    COMPARISONS,
    MAX_AGE_SECONDS,
    MAX_DEPTH,
    MAX_WINDOW_SECONDS,
    UNITS,
    Age,
    Both,
    Compare,
    Condition,
    ConditionError,
    Count,
    Either,
    Node,
    Not,
    Number,
    Ref,
    parse_duration,
)

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<duration>\d+(?:s|m|h|d)\b)
      | (?P<int>\d+)
      | (?P<string>"[^"]*"|'[^']*')
      | (?P<at>@[^\s()<>=!,"']*)
      | (?P<op><=|>=|==|!=|<|>|\(|\)|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_OFFSET = r"[+-]?\d+[smhd]"
_REFERENCE = re.compile(rf"@(?P<lower>{_OFFSET})(?:\.\.(?P<upper>{_OFFSET}))?")


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
    def __init__(self, text: str, bounded: bool = True):
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0
        self.depth = 0
        self.bounded = bounded

    def deeper(self, token: _Token) -> None:
        self.depth += 1
        if self.bounded and self.depth > MAX_DEPTH:
            raise ConditionError(
                f"nested more than {MAX_DEPTH} levels deep", token.column
            )

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

    def source(self, start: _Token) -> str:
        """The text written from `start` up to the last token taken."""
        end = self.tokens[self.index - 1]
        return self.text[start.column - 1 : end.column - 1 + len(end.text)]

    def parse(self) -> Node:
        node = self.or_()
        if self.token.kind != "end":
            raise ConditionError(f"unexpected {self.token.text!r}", self.token.column)
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.take("name", "or"):
            node = Either(node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.take("name", "and"):
            node = Both(node, self.not_())
        return node

    def not_(self) -> Node:
        token = self.take("name", "not")
        if token is None:
            return self.compare()
        self.deeper(token)
        inner = self.not_()
        self.depth -= 1
        return Not(inner)

    def compare(self) -> Node:
        start = self.token
        left, left_kind = self.operand()
        op = self.token
        if op.kind == "op" and op.text in COMPARISONS:
            self.index += 1
            right_token = self.token
            right, right_kind = self.operand()
            if "bool" in (left_kind, right_kind):
                raise ConditionError("cannot compare a condition", op.column)
            if self.bounded and "age" in (left_kind, right_kind):
                bound = left if right_kind == "age" else right
                at = start if right_kind == "age" else right_token
                if isinstance(bound, Number) and bound.value > MAX_AGE_SECONDS:
                    raise ConditionError(
                        "an age is compared with at most 3650d (ten years)", at.column
                    )
            return Compare(left, op.text, right, self.source(start))
        if left_kind == "count":
            return Compare(left, ">=", Number(1), self.source(start))
        if left_kind != "bool":
            raise ConditionError("expected a comparison", op.column)
        return left

    def operand(self) -> tuple[Node, str]:
        token = self.token
        if self.take("int"):
            return Number(int(token.text)), "number"
        if self.take("duration"):
            return Number(int(token.text[:-1]) * UNITS[token.text[-1]]), "number"
        if self.take("op", "("):
            self.deeper(token)
            node = self.or_()
            self.expect("op", ")", "')'")
            self.depth -= 1
            return node, "bool"
        if token.kind == "name" and token.text in ("count", "age"):
            self.index += 1
            self.expect("op", "(", f"'(' after {token.text}")
            name = self.take("name") or self.take("string")
            if name is None:
                raise ConditionError("expected a collection", self.token.column)
            ref = self.reference(name)
            self.expect("op", ")", "')'")
            if token.text == "age":
                return Age(ref, self.source(token)), "age"
            return Count(ref, self.source(token)), "count"
        if token.kind == "name" and token.text not in ("and", "or", "not"):
            self.index += 1
            return Count(self.reference(token), self.source(token)), "count"
        if token.kind == "end":
            raise ConditionError("expected a value, found the end", token.column)
        raise ConditionError(f"unexpected {token.text!r}", token.column)

    def reference(self, name: _Token) -> Ref:
        """The collection `name` names, and the offsets written right after it."""
        collection = name.text[1:-1] if name.kind == "string" else name.text
        at = self.token
        if at.kind != "at" or at.column != name.column + len(name.text):
            return Ref(collection)
        self.index += 1
        match = _REFERENCE.fullmatch(at.text)
        if match is None:
            raise ConditionError(
                "expected offsets like @-1d or @-2d..0d (a sign, a number and one "
                "of s, m, h, d)",
                at.column,
            )
        lower = parse_offset(match["lower"])
        upper = lower if match["upper"] is None else parse_offset(match["upper"])
        if upper < lower:
            raise ConditionError("a window's lower bound comes first", at.column)
        if upper - lower > MAX_WINDOW_SECONDS:
            raise ConditionError("a window spans at most 366d", at.column)
        return Ref(collection, lower, upper, at.text)


def parse_offset(text: str) -> int:
    """Seconds in a signed offset like -1d, +6h or 0d."""
    sign = -1 if text.startswith("-") else 1
    return sign * parse_duration(text.lstrip("+-"))


def parse(text: str, *, bounded: bool = True) -> Condition:
    """The condition, callable with Facts; ConditionError names the column.
    `bounded=False` leaves out the bounds on ages and nesting, for a condition
    accepted before they existed (an evaluation that overflows then fails for
    its own (rule, aggregate) alone)."""
    if not text.strip():
        raise ConditionError("the condition is empty", 1)
    return Condition(text, _Parser(text, bounded).parse())
