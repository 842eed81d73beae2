"""What the write path takes and answers: a new source, its registration, and the
refusals both of its ways (write.py, write_sqlite.py) give."""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aggregates.errors import Conflict, UnknownDomain
from aggregates.values import canonical_json, isoformat, utc


@dataclass(frozen=True)
class NewSource:
    domain: str
    aggregate: str
    collection: str
    keys: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return source_key(self.keys)


@dataclass(frozen=True)
class Registration:
    """What the write path answers for each source, in request order."""

    created: bool
    domain: str
    aggregate: str
    collection: str
    key: str
    version: int
    position: int
    at: datetime

    @classmethod
    def of(
        cls,
        created: bool,
        item: NewSource,
        key: str,
        number: int,
        position: int,
        at: datetime,
    ) -> "Registration":
        return cls(
            created=created,
            domain=item.domain,
            aggregate=item.aggregate,
            collection=item.collection,
            key=key,
            version=number,
            position=position,
            at=utc(at),
        )

    def as_json(self) -> dict[str, Any]:
        """As the API answers it (schemas.SourceAnswer). vars(), not asdict(): a
        batch answers a thousand of these, and asdict() deep-copies each."""
        return {**vars(self), "at": isoformat(self.at)}


def source_key(keys: dict[str, str]) -> str:
    """SHA-256 hex of the canonical JSON of a source's keys (docs/concepts.md)."""
    return hashlib.sha256(canonical_json(keys).encode()).hexdigest()


def unknown_domain(item: NewSource, index: int) -> UnknownDomain:
    return UnknownDomain(
        f"domain {item.domain!r} does not exist; create it with "
        "POST /api/domains first",
        index=index,
        field="domain",
    )


def conflict(item: NewSource, index: int, number: int) -> Conflict:
    return Conflict(
        f"a source with these keys already exists in collection "
        f"{item.collection!r} of aggregate {item.aggregate!r} "
        f"(version {number}) with different attrs",
        index=index,
        field="attrs",
    )
