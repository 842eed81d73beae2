"""Request and response shapes of the JSON API; validation happens here, once."""

import json
import re
from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

KEY_CHARS = "A-Z a-z 0-9 . _ : @ + = -"
_KEY_RE = re.compile(r"[A-Za-z0-9._:@+=-]+")
MAX_ATTRS_BYTES = 64 * 1024
MAX_DEPTH = 64
MAX_BATCH = 1000


def key_rule(max_length: int):
    def check(value: str) -> str:
        if not 1 <= len(value) <= max_length or not _KEY_RE.fullmatch(value):
            raise ValueError(
                f"must be 1-{max_length} characters from {KEY_CHARS} "
                "(no / and no spaces)"
            )
        return value

    return check


def key_schema(max_length: int) -> WithJsonSchema:
    """The key rule as OpenAPI states it; key_rule checks it with a plainer message."""
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": f"^{_KEY_RE.pattern}$",
        }
    )


DomainKey = Annotated[str, AfterValidator(key_rule(100)), key_schema(100)]
Key = Annotated[str, AfterValidator(key_rule(200)), key_schema(200)]


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


def _check_json(value: Any) -> int:
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


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_keys(value: dict[str, str]) -> dict[str, str]:
    _check_json(value)
    return value


def _check_attrs(value: dict[str, Any]) -> dict[str, Any]:
    size = _check_json(value)
    if size > MAX_ATTRS_BYTES:
        raise ValueError(
            f"must be at most {MAX_ATTRS_BYTES} bytes serialized, not {size}"
        )
    return value


class StrictSchema(BaseModel):
    # Plain pydantic, not ninja.Schema: Schema's ORM-friendly root validator costs
    # more than the validation itself on a batch of 1,000 sources.
    model_config = ConfigDict(extra="forbid", strict=True)


class SourceIn(StrictSchema):
    domain: DomainKey
    aggregate: Key
    collection: Key
    keys: Annotated[dict[str, str], AfterValidator(_check_keys)] = Field(
        default_factory=dict
    )
    attrs: Annotated[dict[str, Any], AfterValidator(_check_attrs)] = Field(
        default_factory=dict
    )


class DomainIn(StrictSchema):
    key: DomainKey
    attrs: Annotated[dict[str, Any], AfterValidator(_check_attrs)] = Field(
        default_factory=dict
    )


class ReceiptIn(StrictSchema):
    watcher: str = Field(min_length=1, max_length=100)
    domain: DomainKey
    aggregate: Key
    version: int = Field(ge=1, le=2**31 - 1)
    outcome: Literal["success", "failure", "timeout"]
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    duration_s: float | None = Field(None, ge=0)
    detail: str = Field("", max_length=4000)

    @field_validator("watcher", "detail")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
        return value

    @field_validator("version", "exit_code", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # JSON has one kind of number: 3.0 is the integer 3, as JSON Schema and so
        # the OpenAPI document say; 3.5 still fails.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class Receipt(Schema):
    id: int
    watcher: str
    domain: str
    aggregate: str
    version: int
    outcome: str
    exit_code: int | None
    duration_s: float | None
    detail: str
    at: str


class ReceiptList(Schema):
    receipts: list[Receipt]


class SourceAnswer(Schema):
    created: bool
    domain: str
    aggregate: str
    collection: str
    key: str
    version: int
    position: int
    at: str


class BatchAnswer(Schema):
    results: list[SourceAnswer]


class DomainOut(Schema):
    key: str
    attrs: dict[str, Any]
    aggregates: int
    latest_position: int
    created_at: str


class DomainList(Schema):
    domains: list[DomainOut]


class AggregateSummary(Schema):
    key: str
    version: int
    created_at: str
    updated_at: str
    counts: dict[str, int]


class AggregateList(Schema):
    aggregates: list[AggregateSummary]
    next_cursor: str | None


class VersionRef(Schema):
    version: int
    position: int
    at: str
    collection: str
    key: str


class SourceEntry(Schema):
    version: int
    key: str
    keys: dict[str, str]
    attrs: dict[str, Any]


class AggregateState(Schema):
    domain: str
    key: str
    version: int
    created_at: str
    updated_at: str
    versions: list[VersionRef]
    collections: dict[str, list[SourceEntry]]


class FrameSource(Schema):
    collection: str
    key: str
    keys: dict[str, str]
    attrs: dict[str, Any]


class VersionFrame(Schema):
    domain: str
    aggregate: str
    version: int
    position: int
    at: str
    source: FrameSource


class AggregateVersions(Schema):
    versions: list[VersionFrame]


class DomainVersions(Schema):
    versions: list[VersionFrame]
    latest_position: int


class Error(Schema):
    error: str
    detail: str
    fields: dict[str, str] | None = None
