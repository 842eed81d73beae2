"""An intake's definition: the shape users send, its checks (every template
compiled now), and the compiled mapping that turns events into sources."""

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from aggregates.intakes import sandbox
from aggregates.intakes.events import Event, at_most, expand
from aggregates.intakes.sandbox import Refused, Template
from aggregates.models import Intake
from aggregates.schemas import Key
from aggregates.store import NewSource
from aggregates.values import MAX_ATTRS_BYTES, key_rule, storable_json_size

# What a CloudEvent is unique by: redelivered, it registers nothing new.
CLOUDEVENT_KEYS = {"ce_source": "{{ event.source }}", "ce_id": "{{ event.id }}"}
MAX_FIELDS = 50  # templates in keys, and in attrs
EACH_PATTERN = r"^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$"


def _template(value: str) -> str:
    sandbox.check("", value)
    return value


def _key_template(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a template that renders a key, not empty")
    return _template(value)


TemplateText = Annotated[str, AfterValidator(_template)]
KeyTemplate = Annotated[str, AfterValidator(_key_template)]
FieldName = Annotated[str, Field(min_length=1, max_length=100)]


class MatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: str | None = Field(None, min_length=1, max_length=200)
    source: str | None = Field(None, min_length=1, max_length=2000)


class IntakeIn(BaseModel):
    """An intake as users write it (docs/intakes.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Key
    aggregate: KeyTemplate
    collection: KeyTemplate
    keys: dict[FieldName, TemplateText] | None = Field(None, max_length=MAX_FIELDS)
    attrs: dict[FieldName, TemplateText] = Field(
        default_factory=dict, max_length=MAX_FIELDS
    )
    each: str = Field("", max_length=200, pattern=EACH_PATTERN + "|^$")
    match: MatchIn | None = None

    @model_validator(mode="after")
    def _keys_with_each(self):
        if self.each and self.keys is None:
            raise ValueError(
                "keys is required with each: the elements of one event share its "
                'id (e.g. {"object": "{{ item.s3.object.key }}"})'
            )
        if self.keys == {}:
            raise ValueError(
                "keys must name at least one template, or be left out for "
                "CloudEvents' own (source and id)"
            )
        return self

    def fields(self) -> dict[str, Any]:
        """The Intake row's fields."""
        match = self.match.model_dump(exclude_none=True) if self.match else {}
        return {
            "name": self.name,
            "aggregate": self.aggregate,
            "collection": self.collection,
            "keys": self.keys,
            "attrs": self.attrs,
            "each": self.each,
            "match": match,
        }


def definition_json(intake: Intake) -> dict[str, Any]:
    """An intake as it was written (IntakeIn's shape)."""
    return {
        "name": intake.name,
        "aggregate": intake.aggregate,
        "collection": intake.collection,
        "keys": intake.keys,
        "attrs": intake.attrs,
        "each": intake.each,
        "match": intake.match or None,
    }


@dataclass(frozen=True)
class Mapping:
    """An intake compiled: what each event becomes."""

    domain: str
    aggregate: Template
    collection: Template
    keys: tuple[tuple[str, Template], ...] | None  # None: CloudEvents' own
    attrs: tuple[tuple[str, Template], ...]
    each: str
    match: dict[str, str]

    @classmethod
    def of(cls, domain: str, definition: dict[str, Any]) -> "Mapping":
        """From checked fields (IntakeIn.fields(), or an Intake row's)."""

        def templates(prefix: str, given: dict[str, str]):
            return tuple(
                (name, Template(f"{prefix}.{name}", text))
                for name, text in given.items()
            )

        keys = definition["keys"]
        return cls(
            domain=domain,
            aggregate=Template("aggregate", definition["aggregate"]),
            collection=Template("collection", definition["collection"]),
            keys=None if keys is None else templates("keys", keys),
            attrs=templates("attrs", definition["attrs"]),
            each=definition["each"],
            match=definition["match"] or {},
        )

    @classmethod
    def of_intake(cls, intake: Intake, domain: str) -> "Mapping":
        return cls.of(domain, definition_json(intake))

    def sources(
        self, events: list[Event | Refused], headers: dict[str, str]
    ) -> list[NewSource | Refused]:
        """What each event becomes, in order (with `each`, one per element).
        Raises ApiError (413) past MAX_EVENTS in all."""
        results: list[NewSource | Refused] = []
        for event in events:
            if isinstance(event, Refused):
                results.append(event)
            elif not self._matches(event, results):
                continue
            elif self.each:
                items = expand(event, self.each)
                at_most(len(results) + len(items), "the request")
                results.extend(self.source(item, headers) for item in items)
            else:
                results.append(self.source(event, headers))
        return results

    def _matches(self, event: Event, results: list) -> bool:
        for attribute in ("type", "source"):
            pattern = self.match.get(attribute)
            if pattern is None:
                continue
            value = (event.attributes or {}).get(attribute)
            if value is None:
                results.append(
                    Refused(
                        f"match.{attribute}",
                        f"the event has no {attribute} (it is not a CloudEvent)",
                    )
                )
                return False
            if not fnmatchcase(value, pattern):
                results.append(
                    Refused(
                        f"match.{attribute}",
                        f"the event's {attribute} {value!r} does not match {pattern!r}",
                    )
                )
                return False
        return True

    def source(self, event: Event | Refused, headers: dict[str, str]):
        """The source one event becomes, or its Refused."""
        if isinstance(event, Refused):
            return event
        context = {
            "event": event.attributes or {},
            "data": event.data,
            "item": event.item,
            "headers": headers,
        }
        try:
            return self._source(event, context)
        except Refused as refused:
            return refused

    def _source(self, event: Event, context: dict[str, Any]) -> NewSource:
        aggregate = _key(self.aggregate, context)
        collection = _key(self.collection, context)
        if self.keys is not None:
            keys = {name: t.render(context) for name, t in self.keys}
        elif event.attributes is None:
            raise Refused(
                "keys",
                "the event is not a CloudEvent, and the intake has no keys "
                "templates to tell one event from another",
            )
        else:
            keys = {
                "ce_source": event.attributes["source"],
                "ce_id": event.attributes["id"],
            }
        attrs = {name: t.render(context) for name, t in self.attrs}
        _check_json("keys", keys, None)
        _check_json("attrs", attrs, MAX_ATTRS_BYTES)
        return NewSource(self.domain, aggregate, collection, keys, attrs)


_KEY = key_rule(200)


def _key(template: Template, context: dict[str, Any]) -> str:
    value = template.render(context)
    try:
        return _KEY(value)
    except ValueError as exc:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise Refused(template.field, f"renders {shown!r}, which {exc}") from None


def _check_json(field: str, value: dict, limit: int | None) -> None:
    try:
        size = storable_json_size(value)
    except ValueError as exc:
        raise Refused(field, str(exc)) from None
    if limit is not None and size > limit:
        raise Refused(field, f"must be at most {limit} bytes serialized, not {size}")
