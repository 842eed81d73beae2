"""Intake templates: Jinja2 expressions rendered in its immutable sandbox.

A template is text with `{{ … }}` expressions over `event`, `data`, `item` and
`headers`, and nothing else: no statements (`{% … %}`), no globals, no
attributes starting with `_`, no method calls but a few that read. Two filters
are added (`match`, `date`) to Jinja's that cannot make large values. Whatever a
publisher sends, rendering takes bounded time and memory:

- every string or list an operation builds, and every rendered template, is at
  most MAX_OUTPUT characters (`*`, `join`, `replace` are checked *before* they
  build, `%` formatting of strings is refused);
- `match` runs its pattern with the `regex` module's timeout (PATTERN_SECONDS);
- without statements or globals there is no loop: an expression's work is
  proportional to the event, which the API bounds (1 MiB).

What fails refuses the event, with a sentence naming the template (Refused); a
template that cannot work at all is refused when the intake is written (check()).
"""

import json
from datetime import UTC, date, datetime
from typing import Any

import regex
from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.filters import FILTERS
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

MAX_OUTPUT = 16 * 1024  # characters
MAX_PATTERN = 1000  # characters of a `match` pattern
MAX_DATE_FORMAT = 100  # characters of a `date` format
PATTERN_SECONDS = 0.05
MAX_INT_BITS = 4096


class Refused(Exception):
    """An event that cannot become a source: `field` names the part of the
    intake (a template, `each`, `match`) and `detail` says why, in a sentence."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class TemplateRefusal(Exception):
    """A filter's refusal of the value it was given, named later by the template."""


def _too_big(what: str, size: int) -> SecurityError:
    return SecurityError(f"{what} would make {size} characters; at most {MAX_OUTPUT}")


# The two filters of intakes.


def match_filter(value: Any, pattern: str, group: int | str = 1) -> str:
    """The first match of `pattern` in `value`: group `group` (1 by default) if
    the pattern has groups, else the whole match. No match refuses the event."""
    _defined(value)
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise TemplateRefusal(f"match takes a pattern of at most {MAX_PATTERN} chars")
    text = value if isinstance(value, str) else str(value)
    try:
        compiled = regex.compile(pattern)
        found = compiled.search(text, timeout=PATTERN_SECONDS)
    except regex.error as exc:
        raise TemplateRefusal(f"match: {pattern!r} is not a pattern: {exc}") from None
    except TimeoutError:
        raise TemplateRefusal(
            f"match: {pattern!r} took more than {PATTERN_SECONDS * 1000:.0f} ms on "
            f"{len(text)} characters; write a pattern that does not backtrack"
        ) from None
    if found is None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise TemplateRefusal(f"match: {pattern!r} is not in {shown!r}")
    if not compiled.groups:
        return found.group(0)
    try:
        return found.group(group) or ""
    except IndexError:
        raise TemplateRefusal(f"match: {pattern!r} has no group {group!r}") from None


def date_filter(value: Any, format: str = "%Y-%m-%d") -> str:
    """An ISO 8601 time, a date, or Unix seconds, in UTC, as `format` says (a
    time without a zone is taken as UTC)."""
    _defined(value)
    if not isinstance(format, str) or len(format) > MAX_DATE_FORMAT:
        raise TemplateRefusal(f"date takes a format of at most {MAX_DATE_FORMAT} chars")
    moment = _moment(value)
    if moment is None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise TemplateRefusal(
            f"date: {shown} is not an ISO 8601 time, a date or Unix seconds"
        )
    return moment.strftime(format)


def _defined(value: Any) -> None:
    """A field the event lacks, given to a filter, refuses the event as it would
    if rendered."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                return datetime.fromtimestamp(float(value), UTC)
            except (OverflowError, OSError, ValueError):
                return None
    else:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# Jinja's filters that can build large values, in versions checked before they do.


def _join(value: Any, separator: str = "", attribute: Any = None) -> str:
    items = [str(item) for item in value]
    if attribute is not None:
        raise TemplateRefusal("join takes no attribute here; map(attribute=…) first")
    size = sum(map(len, items)) + len(str(separator)) * max(0, len(items) - 1)
    if size > MAX_OUTPUT:
        raise _too_big("join", size)
    return str(separator).join(items)


def _replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text, old, new = str(value), str(old), str(new)
    times = text.count(old) if count is None else min(count, text.count(old))
    size = len(text) + times * (len(new) - len(old))
    if size > MAX_OUTPUT and size > len(text):
        raise _too_big("replace", size)
    return text.replace(old, new, -1 if count is None else count)


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# Jinja's own filters that build nothing much larger than what they are given.
KEPT_FILTERS = [
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "first",
    "float", "int", "items", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "reverse", "round", "select", "selectattr", "sort",
    "string", "title", "trim", "truncate", "unique", "upper", "urlencode",
    "wordcount",
]  # fmt: skip

FILTER_NAMES = sorted([*KEPT_FILTERS, "join", "replace", "tojson", "match", "date"])


# Methods a template may call: they read, and build nothing larger than their object.
CALLABLE = {
    str: {
        "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit",
        "startswith", "endswith", "removeprefix", "removesuffix", "partition",
        "rpartition", "title", "capitalize", "casefold", "count", "find", "rfind",
        "isdigit", "isalpha", "isalnum", "splitlines",
    },
    dict: {"get", "keys", "values", "items"},
    list: {"index", "count"},
}  # fmt: skip


class Undefined(StrictUndefined):
    """A field the event lacks: rendering it refuses the event, saying what is
    there instead."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        name = self._undefined_name
        if self._undefined_obj is missing:
            return f"{name!r} is not defined (there are event, data, item, headers)"
        there = self._undefined_obj
        if isinstance(there, dict):
            fields = ", ".join(map(str, list(there)[:20])) or "nothing"
            return f"no field {name!r} here (there is {fields})"
        if isinstance(there, list):
            return f"no element {name!r} in a list of {len(there)}"
        return f"no field {name!r} in {type(there).__name__} {str(there)[:80]!r}"


class Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=Undefined, autoescape=False, cache_size=1000)
        self.globals.clear()
        self.filters = {name: FILTERS[name] for name in KEPT_FILTERS}
        self.filters |= {
            "join": _join,
            "replace": _replace,
            "tojson": _tojson,
            "match": match_filter,
            "date": date_filter,
        }

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_product(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("% formatting of strings is not available; use ~")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`data.items` is the field "items" of JSON data, not dict.items."""
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call(__self, __context, __obj, *args, **kwargs):
        if isinstance(__obj, Undefined):
            __obj._fail_with_undefined_error()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if name not in CALLABLE.get(type(owner), ()):
            raise SecurityError(
                f"{name or type(__obj).__name__}() cannot be called in a template"
            )
        return __obj(*args, **kwargs)


def _check_product(left: Any, right: Any) -> None:
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(times, int):
            size = len(sequence) * times
            if size > MAX_OUTPUT:
                raise _too_big("*", size)
    both_ints = isinstance(left, int) and isinstance(right, int)
    if both_ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"* of integers beyond {MAX_INT_BITS} bits")


def _check_power(left: Any, right: Any) -> None:
    both_ints = isinstance(left, int) and isinstance(right, int)
    if both_ints and right > 0 and left.bit_length() * right > MAX_INT_BITS:
        raise SecurityError(f"** of integers beyond {MAX_INT_BITS} bits")


SANDBOX = Sandbox()


class Template:
    """One checked template of an intake, named by its field (`aggregate`,
    `keys.date` …)."""

    __slots__ = ("field", "render_func", "source", "template")

    def __init__(self, field: str, source: str):
        self.field = field
        self.source = source
        self.template = SANDBOX.from_string(source)
        self.render_func = self.template.root_render_func

    def render(self, context: dict[str, Any]) -> str:
        try:
            output = "".join(self.render_func(self.template.new_context(context)))
        except Refused:
            raise
        except TemplateRefusal as exc:
            raise Refused(self.field, str(exc)) from None
        except SecurityError as exc:
            raise Refused(self.field, f"not allowed: {exc}") from None
        except TemplateError as exc:
            raise Refused(self.field, str(exc)) from None
        except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise Refused(self.field, f"{type(exc).__name__}: {exc}") from None
        if len(output) > MAX_OUTPUT:
            raise Refused(
                self.field,
                f"renders {len(output)} characters; at most {MAX_OUTPUT}",
            )
        return output


def check(field: str, source: str) -> Template:
    """The template, or ValueError saying why it can never work: a syntax error,
    a statement, an unknown filter, an attribute starting with `_`, a literal
    `match` pattern that is not one."""
    if not isinstance(source, str):
        raise ValueError("must be a template (a string)")
    if len(source) > MAX_OUTPUT:
        raise ValueError(f"must be at most {MAX_OUTPUT} characters")
    try:
        tree = SANDBOX.parse(source)
    except TemplateError as exc:
        raise ValueError(_syntax(exc)) from None
    _check_tree(tree)
    try:
        return Template(field, source)
    except TemplateError as exc:
        raise ValueError(_syntax(exc)) from None


def _syntax(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    where = f" (line {line})" if line and line > 1 else ""
    message = exc.message or str(exc)
    if message.startswith("No filter named"):
        name = message.split("'")[1] if "'" in message else message
        return f"has no filter {name!r}; there are {', '.join(FILTER_NAMES)}"
    return f"is not a template{where}: {message}"


def _check_tree(tree: nodes.Template) -> None:
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            raise ValueError(
                "must be text with {{ … }} expressions only; statements "
                "({% … %}) are not available"
            )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and name.startswith("_"):
            raise ValueError(f"reads {name!r}: names starting with _ are not available")
    for node in tree.find_all(nodes.Filter):
        if node.name == "match" and node.args and isinstance(node.args[0], nodes.Const):
            pattern = node.args[0].value
            if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
                raise ValueError(
                    f"uses match with a pattern over {MAX_PATTERN} characters"
                )
            try:
                regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(
                    f"uses match with {pattern!r}, which is not a pattern: {exc}"
                ) from None
