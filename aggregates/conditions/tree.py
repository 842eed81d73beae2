"""The condition language's tree: references, facts, the nodes a condition is
made of, and the parsed Condition, which answers for facts, lists its
comparisons and the moments time alone may change its answer."""

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+)([smhd])")
MAX_AGE_SECONDS = 3650 * 86400
MAX_DEPTH = 50
MAX_WINDOW_SECONDS = 366 * 86400
COMPARISONS = {
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
    newest: Mapping[str, datetime]  # collection → time of its newest source
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
        return COMPARISONS[self.op](self.left(facts), self.right(facts))

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
