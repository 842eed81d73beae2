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
    model_validator,
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
    # 0 only for a rule's event about an expected key that has no sources.
    version: int = Field(ge=0, le=2**31 - 1)
    outcome: Literal["success", "failure", "timeout"]
    exit_code: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    duration_s: float | None = Field(None, ge=0)
    detail: str = Field("", max_length=4000)
    # A receipt of a rule's event: both, or neither (never null).
    model_config = ConfigDict(
        json_schema_extra={"dependentRequired": {"rule": ["seq"], "seq": ["rule"]}}
    )
    rule: Key = None  # type: ignore[assignment]
    seq: int = Field(None, ge=1, le=2**62)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _rule_and_seq(self):
        if (self.rule is None) != (self.seq is None):
            raise ValueError("give both rule and seq (a rule's event), or neither")
        return self

    @field_validator("watcher", "detail")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
        return value

    @field_validator("version", "exit_code", "seq", mode="before")
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
    rule: str | None = None
    seq: int | None = None
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


# Rules


class DeadlineOut(Schema):
    after: str
    from_: str = Field(alias="from")


class RuleOut(Schema):
    name: str
    when: str
    fallback: str | None
    trigger: str
    aggregate_prefix: str
    deadline: DeadlineOut | None
    on_deadline: str
    start: str
    created_at: str
    latest_seq: int
    counts: dict[str, int]


class RuleList(Schema):
    rules: list[RuleOut]


class InputOut(Schema):
    aggregate: str
    version: int
    count: int


class RuleEventOut(Schema):
    rule: str
    seq: int
    domain: str
    aggregate: str
    event: Literal["fired", "late"]
    reason: Literal["ready", "deadline", "fallback"] | None
    version: int
    position: int
    at: str
    late: bool
    # For each reference of the rule's conditions, as written: the aggregates it
    # covered holding its collection, newest key first, as of `position`.
    inputs: dict[str, list[InputOut]]


class RuleEventList(Schema):
    events: list[RuleEventOut]
    latest_seq: int


class RuleStatusOut(Schema):
    aggregate: str
    status: Literal["waiting", "ready", "late", "fired"]
    version: int
    deadline: str | None
    fired_at_version: int | None


class RuleStatusList(Schema):
    aggregates: list[RuleStatusOut]
    next_cursor: str | None


class TermOut(Schema):
    expr: str
    value: bool
    detail: str


class WhyOut(Schema):
    rule: str
    aggregate: str
    status: Literal["waiting", "ready", "late", "fired"] | None
    version: int
    deadline: str | None
    ready: bool
    error: str | None = Field(
        None, description="why the rule's last evaluation of it failed, if it did"
    )
    note: str | None = Field(
        None,
        description="when the rule has not evaluated the aggregate's latest "
        "version yet: why, in a sentence (status is null if it never evaluated it)",
    )
    events: list[RuleEventOut]
    terms: list[TermOut]
    inputs: dict[str, list[InputOut]] = Field(
        description="what each reference covers, as of what the rule last evaluated"
    )


class WouldFire(Schema):
    version: int
    reason: Literal["ready", "deadline"]


class PreviewRow(Schema):
    aggregate: str
    status: Literal["waiting", "ready", "late", "fired"]
    would_fire: WouldFire | None
    error: str | None = Field(None, description="why evaluating it failed, if it did")


class PreviewOut(Schema):
    aggregates: list[PreviewRow]
    counts: dict[str, int]


class LeaseOut(Schema):
    watcher: str
    holder: str
    expires_at: str
    error: str | None = None
    detail: str | None = None


# Webhooks


class WebhookOut(Schema):
    id: int
    url: str
    events: list[str]
    rule: str | None
    description: str
    format: Literal["standard", "cloudevents"]
    paused: bool
    paused_reason: str | None
    lag: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: str | None
    last_success_at: str | None
    next_attempt_at: str | None
    failing_since: str | None
    created_at: str


class WebhookCreated(WebhookOut):
    secret: str


class WebhookList(Schema):
    webhooks: list[WebhookOut]


class DeliveryOut(Schema):
    event_id: str
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    ms: float


class DeliveryList(Schema):
    deliveries: list[DeliveryOut]


# Intakes


class IntakeOut(Schema):
    name: str
    aggregate: str
    collection: str
    keys: dict[str, str] | None = Field(
        description="templates; null: the CloudEvent's source and id"
    )
    attrs: dict[str, str]
    each: str
    match: dict[str, str] | None
    accepted: int = Field(description="events registered (new or already there)")
    refused: int = Field(description="events refused (409, 422), and bodies (400)")
    last_refusal: str | None
    last_refusal_at: str | None
    created_at: str
    updated_at: str


class IntakeList(Schema):
    intakes: list[IntakeOut]


class EventResult(Schema):
    status: int = Field(description="201 new, 200 already there, 409 or 422 refused")
    created: bool | None = None
    domain: str | None = None
    aggregate: str | None = None
    collection: str | None = None
    key: str | None = None
    version: int | None = None
    position: int | None = None
    at: str | None = None
    error: str | None = None
    detail: str | None = None
    fields: dict[str, str] | None = None


class EventResults(Schema):
    results: list[EventResult]


class IntakePreviewResult(Schema):
    domain: str | None = None
    aggregate: str | None = None
    collection: str | None = None
    keys: dict[str, str] | None = None
    attrs: dict[str, Any] | None = None
    status: int | None = Field(None, description="422 when the event is refused")
    error: str | None = None
    detail: str | None = None
    fields: dict[str, str] | None = None


class IntakePreviewOut(Schema):
    results: list[IntakePreviewResult]
