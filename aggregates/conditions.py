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

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+)([smhd])")
MAX_AGE_SECONDS = 3650 * 86400
MAX_DEPTH = 50
MAX_WINDOW_SECONDS = 366 * 86400
_OFFSET = r"[+-]?\d+[smhd]"
_REFERENCE = re.compile(rf"@(?P<lower>{_OFFSET})(?:\.\.(?P<upper>{_OFFSET}))?")
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


def parse_duration(text: str) -> int:
    """Seconds in a duration like 90s, 15m, 6h or 2d."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"must be a duration like 90s, 15m, 6h or 2d, not {text!r}")
    return int(match[1]) * UNITS[match[2]]


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 12m, 5h12m, 3d4h; ∞ for no source at all."""
    if math.isinf(seconds):
        return "∞"
    seconds = int(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    for big, small in (("d", "h"), ("h", "m"), ("m", "s")):
        size, part = UNITS[big], UNITS[small]
        if seconds >= size:
            rest = seconds % size // part
            return f"{seconds // size}{big}" + (f"{rest}{small}" if rest else "")
    return f"{seconds}s"


@dataclass(frozen=True)
class Ref:
    """A reference to a collection: in this aggregate (no offsets), in one
    neighbour (lower == upper) or in a window of them; offsets in seconds."""

    collection: str
    lower: int | None = None
    upper: int | None = None
    written: str = ""  # the offsets as written: "@-1d", "@-2d..0d"

    @property
    def key(self) -> str:
        """The reference as written, without quotes or spaces: what Facts and a
        rule's `inputs` are keyed by."""
        return self.collection + self.written

    @property
    def neighbours(self) -> bool:
        return self.lower is not None


@dataclass(frozen=True)
class Facts:
    """What a condition can ask about one aggregate: its own collections' counts
    and newest source times, and for each reference to neighbours (by Ref.key)
    the same summed over the aggregates it covers."""

    counts: dict[str, int]
    newest: dict[str, datetime]  # collection → time of its newest source
    now: datetime
    near_counts: dict[str, int] = field(default_factory=dict)
    near_newest: dict[str, datetime] = field(default_factory=dict)

    def count(self, ref: "Ref | str") -> int:
        """Sources of a reference (a plain string: a collection of its own)."""
        ref = Ref(ref) if isinstance(ref, str) else ref
        if ref.neighbours:
            return self.near_counts.get(ref.key, 0)
        return self.counts.get(ref.collection, 0)

    def age(self, ref: "Ref | str") -> float:
        newest = self.newest_of(Ref(ref) if isinstance(ref, str) else ref)
        return math.inf if newest is None else (self.now - newest).total_seconds()

    def newest_of(self, ref: Ref) -> datetime | None:
        if ref.neighbours:
            return self.near_newest.get(ref.key)
        return self.newest.get(ref.collection)

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


# The tree. Every node answers for facts; value nodes also say what they are.


class Node:
    def __call__(self, facts: Facts) -> Any:
        raise NotImplementedError

    def children(self) -> tuple["Node", ...]:
        return ()

    def detail(self, facts: Facts) -> str:
        """What this operand stands for in these facts ("" for a constant)."""
        return ""

    def walk(self) -> Iterator["Node"]:
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass(frozen=True, eq=False)
class Number(Node):
    value: int

    def __call__(self, facts: Facts) -> int:
        return self.value


@dataclass(frozen=True, eq=False)
class Count(Node):
    ref: Ref
    text: str  # as written: A, count("src-a"), B@-1d

    def __call__(self, facts: Facts) -> int:
        return facts.count(self.ref)

    def detail(self, facts: Facts) -> str:
        return f"{self.text} = {facts.count(self.ref)}"


@dataclass(frozen=True, eq=False)
class Age(Node):
    ref: Ref
    text: str  # as written: age(B), age(A@-2d..0d)

    def __call__(self, facts: Facts) -> float:
        return facts.age(self.ref)

    def detail(self, facts: Facts) -> str:
        return f"{self.text} = {format_duration(facts.age(self.ref))}"


@dataclass(frozen=True, eq=False)
class Compare(Node):
    """A comparison as written; a bare count (`A`) is the comparison `A >= 1`."""

    left: Node
    op: str
    right: Node
    text: str

    def __call__(self, facts: Facts) -> bool:
        return _COMPARE[self.op](self.left(facts), self.right(facts))

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)

    def detail(self, facts: Facts) -> str:
        parts = [side.detail(facts) for side in (self.left, self.right)]
        return ", ".join(part for part in parts if part)


@dataclass(frozen=True, eq=False)
class Not(Node):
    inner: Node

    def __call__(self, facts: Facts) -> bool:
        return not self.inner(facts)

    def children(self) -> tuple[Node, ...]:
        return (self.inner,)


@dataclass(frozen=True, eq=False)
class Both(Node):
    left: Node
    right: Node

    def __call__(self, facts: Facts) -> bool:
        return bool(self.left(facts)) and bool(self.right(facts))

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, eq=False)
class Either(Node):
    left: Node
    right: Node

    def __call__(self, facts: Facts) -> bool:
        return bool(self.left(facts)) or bool(self.right(facts))

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class Term:
    """One comparison of a condition, evaluated: what "why" shows."""

    expr: str
    value: bool
    detail: str


class Condition:
    """A parsed condition: call it with facts for its answer."""

    def __init__(self, text: str, root: Node):
        self.text = text
        self.root = root
        self.comparisons = [node for node in root.walk() if isinstance(node, Compare)]
        # Every reference, once, in the order first written.
        refs = (node.ref for node in root.walk() if isinstance(node, Count | Age))
        self.references: list[Ref] = list(dict.fromkeys(refs))
        self.ages = sorted(
            {
                (age.ref, number.value)
                for compare in self.comparisons
                for age, number in _age_bounds(compare)
            },
            key=lambda pair: (pair[0].key, pair[1]),
        )

    @property
    def neighbours(self) -> list[Ref]:
        """The references to other aggregates (`X@-1d`, `X@-2d..0d`)."""
        return [ref for ref in self.references if ref.neighbours]

    def __call__(self, facts: Facts) -> bool:
        return bool(self.root(facts))

    def terms(self, facts: Facts) -> list[Term]:
        """Every comparison, in the order written, with its value and operands."""
        return [
            Term(compare.text, bool(compare(facts)), compare.detail(facts))
            for compare in self.comparisons
        ]

    def changes(self, facts: Facts) -> list[datetime]:
        """The moments at which time alone may change the answer: each bound of an
        `age()` comparison crossed, just after (1 µs) the exact moment."""
        moments = []
        for ref, seconds in self.ages:
            newest = facts.newest_of(ref)
            if newest is not None:
                moments.append(newest + timedelta(seconds=seconds, microseconds=1))
        return sorted(moments)


def _age_bounds(compare: Compare) -> list[tuple[Age, Number]]:
    if isinstance(compare.left, Age) and isinstance(compare.right, Number):
        return [(compare.left, compare.right)]
    if isinstance(compare.right, Age) and isinstance(compare.left, Number):
        return [(compare.right, compare.left)]
    return []


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
        if op.kind == "op" and op.text in _COMPARE:
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
