"""The backup file: what `export` writes and `import` restores (docs/backup.md).

JSON lines. The first line, the header, says what the file holds:

    {"botlnek_export": 1, "botlnek": "0.1.0", "database": "sqlite",
     "exported_at": "…Z", "whole_database": false, "domains": ["c-inputs"],
     "records": {"domain": 1, "aggregate": 7, "version": 40, …},
     "ids": {"rule": 12, …}}

then one line per row, `{"kind": …, <every column by its name>}`, each row with
its own id and the ids it refers to, so that a restore is the same database:
a domain's row, its aggregates, its versions in position order (each with its
source), receipts, rules, their statuses and events, webhooks and their recent
deliveries, intakes; after every domain, with a whole-database export only, the
API tokens (SHA-256 hashes: tokens span domains, so a domain's backup does not
carry them). `ids` are the highest ids the exporting database ever gave out per
kind (deleted rows included), so that a restored database never gives one out
again: webhook receivers deduplicate on `msg_v<domain id>_<position>` and
`msg_r<rule id>_<seq>`.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from aggregates.models import (
    Aggregate,
    ApiToken,
    Domain,
    Intake,
    Receipt,
    Rule,
    RuleEvent,
    RuleStatus,
    Source,
    Version,
    Webhook,
    WebhookDelivery,
)
from aggregates.values import isoformat

FORMAT = 1
PAGE = 2000


@dataclass(frozen=True)
class Kind:
    """One kind of record: its table, and how a domain's rows of it are found
    and ordered."""

    name: str
    model: type[models.Model]
    of_domain: str  # the lookup from this table to the domain's id
    order: tuple[str, ...] = ("id",)


DOMAIN_KINDS = (
    Kind("domain", Domain, "id"),
    Kind("aggregate", Aggregate, "domain_id"),
    Kind("version", Version, "domain_id", ("position",)),
    Kind("receipt", Receipt, "aggregate__domain_id"),
    Kind("rule", Rule, "domain_id"),
    Kind("rule_status", RuleStatus, "rule__domain_id"),
    Kind("rule_event", RuleEvent, "rule__domain_id", ("rule_id", "seq")),
    Kind("webhook", Webhook, "domain_id"),
    Kind("webhook_delivery", WebhookDelivery, "webhook__domain_id"),
    Kind("intake", Intake, "domain_id"),
)
TOKEN = Kind("token", ApiToken, "")
KINDS = {kind.name: kind for kind in (*DOMAIN_KINDS, TOKEN)}
# A version's line carries its source (one each) under "source".
SOURCE_FIELDS = [field.attname for field in Source._meta.concrete_fields]


def columns(model: type[models.Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


def encode(value: Any) -> Any:
    return isoformat(value) if isinstance(value, datetime) else value


def dump(row: dict[str, Any]) -> str:
    return json.dumps(
        {key: encode(value) for key, value in row.items()}, ensure_ascii=False
    )


def rows(kind: Kind, **where: Any) -> Iterator[dict[str, Any]]:
    """The rows of `kind` that match `where`, in file order, each with every
    column; a version's with its source."""
    query = kind.model.objects.filter(**where).order_by(*kind.order)
    names = columns(kind.model)
    if kind.model is Version:
        fields = [*names, *(f"source__{name}" for name in SOURCE_FIELDS)]
        for values in query.values_list(*fields).iterator(chunk_size=PAGE):
            row = dict(zip(names, values[: len(names)], strict=True))
            row["source"] = dict(zip(SOURCE_FIELDS, values[len(names) :], strict=True))
            yield row
        return
    for values in query.values_list(*names).iterator(chunk_size=PAGE):
        yield dict(zip(names, values, strict=True))


def lines(kind: Kind, domain_id: int | None) -> Iterator[str]:
    where = {} if domain_id is None else {kind.of_domain: domain_id}
    for row in rows(kind, **where):
        yield dump({"kind": kind.name, **row})


def counts(domain_ids: list[int], with_tokens: bool) -> dict[str, int]:
    found = {
        kind.name: kind.model.objects.filter(
            **{f"{kind.of_domain}__in": domain_ids}
        ).count()
        for kind in DOMAIN_KINDS
    }
    if with_tokens:
        found[TOKEN.name] = ApiToken.objects.count()
    return found


def highest_ids() -> dict[str, int]:
    """The highest id each kind's table ever gave out, deleted rows included."""
    found = {}
    with connection.cursor() as cursor:
        for name, kind in KINDS.items():
            found[name] = highest_id(cursor, kind.model._meta.db_table)
        found["source"] = highest_id(cursor, Source._meta.db_table)
    return found


def highest_id(cursor, table: str) -> int:
    if connection.vendor == "sqlite":
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
    else:
        cursor.execute(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id'))",
            [table],
        )
    row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def header(domains: list[Domain], whole_database: bool) -> dict[str, Any]:
    return {
        "botlnek_export": FORMAT,
        "botlnek": botlnek_version(),
        "database": connection.vendor,
        "exported_at": isoformat(timezone.now()),
        "whole_database": whole_database,
        "domains": [domain.key for domain in domains],
        "records": counts([domain.pk for domain in domains], whole_database),
        "ids": highest_ids(),
    }


def botlnek_version() -> str:
    try:
        return package_version("botlnek")
    except PackageNotFoundError:
        return "unknown"


@contextmanager
def snapshot() -> Iterator[None]:
    """Reads that all see one moment of the database, without blocking writers
    (SQLite: a deferred read transaction, not the app's BEGIN IMMEDIATE)."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                cursor.execute("ROLLBACK")
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield
