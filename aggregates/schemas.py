"""Request and response shapes of the JSON API, in one place for the OpenAPI
document; the rules they check are aggregates.values'."""

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

from aggregates.values import (
    KEY_PATTERN,
    MAX_ATTRS_BYTES,
    key_rule,
    storable_json_size,
)

MAX_BATCH = 1000


def key_schema(max_length: int) -> WithJsonSchema:
    """The key rule as OpenAPI states it; key_rule checks it with a plainer message."""
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": f"^{KEY_PATTERN.pattern}$",
        }
    )


DomainKey = Annotated[str, AfterValidator(key_rule(100)), key_schema(100)]
Key = Annotated[str, AfterValidator(key_rule(200)), key_schema(200)]


def _check_keys(value: dict[str, str]) -> dict[str, str]:
    storable_json_size(value)
    return value


def _check_attrs(value: dict[str, Any]) -> dict[str, Any]:
    size = storable_json_size(value)
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
