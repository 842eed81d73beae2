"""The store: the one write path and the reads built on the same tables.

- write.py — register_sources() and register_each(), the only code that appends
  versions and sources (write_sqlite.py: its way on SQLite; registration.py: what
  it takes, answers and refuses);
- records.py — the other writes: domains, receipts, pruning;
- group_commit.py — single posts arriving together share one transaction;
- read.py — domains, listings, version frames, receipts;
- state.py — the aggregate state, the one serializer of that shape;
- sql.py — what their hand-written SQL shares.

Callers use the names below; errors are aggregates.errors'.
"""

from aggregates.store.read import (
    aggregate_versions,
    domain_json,
    domain_versions,
    encode_cursor,
    get_aggregate,
    get_domain,
    latest_positions,
    latest_positions_all,
    list_aggregates,
    list_domains,
    list_receipts,
    live_frames,
    position_of_version,
    receipt_json,
)
from aggregates.store.records import (
    backdate,
    create_domain,
    expect_aggregates,
    prune_aggregates,
    record_receipt,
)
from aggregates.store.registration import NewSource, Registration, source_key
from aggregates.store.state import (
    aggregate_state,
    aggregate_state_json,
    state_json_as_of,
)
from aggregates.store.write import register_each, register_sources

__all__ = [
    "NewSource",
    "Registration",
    "aggregate_state",
    "aggregate_state_json",
    "aggregate_versions",
    "backdate",
    "create_domain",
    "domain_json",
    "domain_versions",
    "encode_cursor",
    "expect_aggregates",
    "get_aggregate",
    "get_domain",
    "latest_positions",
    "latest_positions_all",
    "list_aggregates",
    "list_domains",
    "list_receipts",
    "live_frames",
    "position_of_version",
    "prune_aggregates",
    "receipt_json",
    "record_receipt",
    "register_each",
    "register_sources",
    "source_key",
    "state_json_as_of",
]
