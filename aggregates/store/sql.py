"""What the store's hand-written SQL shares: table names and value conversions.

The write path and the state serializer write SQL out rather than having the ORM
build it, because the ORM's query compilation cost several times the queries
themselves (~0.5 ms against ~0.05 ms per statement, measured). Statements are plain
SQL that SQLite and PostgreSQL share; table names come from the models.
"""

import json
from typing import Any

from django.db import connection

from aggregates.models import Aggregate, Domain, Receipt, RuleStatus, Source, Version

DOMAIN = Domain._meta.db_table
AGGREGATE = Aggregate._meta.db_table
VERSION = Version._meta.db_table
SOURCE = Source._meta.db_table
RECEIPT = Receipt._meta.db_table
RULE_STATUS = RuleStatus._meta.db_table


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def json_value(value: Any) -> Any:
    """A JSON column as Python: SQLite and Django's psycopg setup return text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def as_text() -> str:
    """The cast that makes PostgreSQL hand over a jsonb column as its JSON text."""
    return "::text" if connection.vendor == "postgresql" else ""
