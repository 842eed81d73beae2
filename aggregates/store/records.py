"""The store's other writes: domains, receipts, and retention (deleting whole
aggregates, the only deletion there is). Versions and sources are written by
write.py alone."""

from datetime import datetime
from itertools import pairwise
from typing import Any

from django.db import connection, transaction

from aggregates.errors import Conflict, NotFound, StoreError
from aggregates.keydates import key_date
from aggregates.models import (
    Aggregate,
    Domain,
    Receipt,
    RuleEvent,
    RuleStatus,
    Version,
)
from aggregates.store.read import get_aggregate, receipt_json
from aggregates.store.sql import (
    AGGREGATE,
    DOMAIN,
    RECEIPT,
    RULE_STATUS,
    SOURCE,
    VERSION,
    placeholders,
)
from aggregates.values import json_equal


def create_domain(key: str, attrs: dict[str, Any]) -> tuple[Domain, bool]:
    """Create a domain; an identical one already there is answered, not duplicated."""
    with transaction.atomic():
        domain, created = Domain.objects.get_or_create(
            key=key, defaults={"attrs": attrs}
        )
    if not created and not json_equal(domain.attrs, attrs):
        raise Conflict(
            f"domain {key!r} already exists with different attrs", field="attrs"
        )
    return domain, created


def record_receipt(
    *,
    watcher: str,
    domain: str,
    aggregate: str,
    version: int,
    outcome: str,
    exit_code: int | None = None,
    duration_s: float | None = None,
    detail: str = "",
    rule: str | None = None,
    seq: int | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Record a receipt, now (or `at`: for `manage.py demo`, whose story is
    history; the API always records now)."""
    target = get_aggregate(domain, aggregate)
    if version == 0 and rule is None:
        raise StoreError(
            "version 0 (an expected key that has no sources) is only for a "
            "receipt of a rule's event",
            field="version",
        )
    if version > target.version:
        raise NotFound(
            f"aggregate {aggregate!r} has versions 1-{target.version}, not {version}",
            field="version",
        )
    if rule is not None:
        _check_rule_event(target, rule, seq, version)
    receipt = Receipt.objects.create(
        rule=rule or "",
        seq=seq,
        aggregate=target,
        watcher=watcher,
        version=version,
        outcome=outcome,
        exit_code=exit_code,
        duration_s=duration_s,
        detail=detail,
        **({"at": at} if at is not None else {}),
    )
    return receipt_json(receipt, domain, aggregate)


def backdate(domain: str, moments: dict[int, datetime]) -> None:
    """Give versions of `domain` (by position) the moments they happened at, and
    their aggregates the first and last of them: for `manage.py demo`, which
    tells a story of days past in a second. The moments must grow with the
    positions, as commit times do; nothing else may change history."""
    ordered = sorted(moments.items())
    if any(a[1] > b[1] for a, b in pairwise(ordered)):
        raise StoreError("moments must grow with positions", field="moments")
    found = Domain.objects.get(key=domain)
    with transaction.atomic():
        for position, moment in ordered:
            Version.objects.filter(domain=found, position=position).update(at=moment)
        touched = Version.objects.filter(
            domain=found, position__in=list(moments)
        ).values_list("aggregate_id", flat=True)
        for aggregate in Aggregate.objects.filter(pk__in=set(touched)):
            times = list(
                aggregate.versions.order_by("number").values_list("at", flat=True)
            )
            aggregate.created_at, aggregate.updated_at = times[0], times[-1]
            aggregate.save(update_fields=["created_at", "updated_at"])


def _check_rule_event(aggregate: Aggregate, rule: str, seq: int, version: int):
    """A receipt of a rule's event must name that event as the log has it."""
    event = (
        RuleEvent.objects.filter(
            rule__domain_id=aggregate.domain_id, rule__name=rule, seq=seq
        )
        .values_list("aggregate", "version")
        .first()
    )
    if event is None:
        raise NotFound(
            f"rule {rule!r} of domain {aggregate.domain.key!r} has no event {seq}",
            field="seq",
        )
    if event != (aggregate.key, version):
        raise StoreError(
            f"event {seq} of rule {rule!r} is about version {event[1]} of "
            f"aggregate {event[0]!r}",
            field="seq",
        )


def expect_aggregates(
    domain_id: int, expected: list[tuple[str, datetime]]
) -> dict[str, tuple[int, int]]:
    """The aggregates of these expected (key, moment) pairs, made with no
    versions where nobody posted yet (version 0, dated at their moment): key →
    (id, version). The write path gives such an aggregate its first version as
    it would a new one (created_at becomes that version's time).

    Making one takes the domain's row before the aggregate's, in the writers'
    order: a writer holds the domain's lock while it inserts the same key, and
    this transaction's (deferred) foreign key check needs a share of that lock
    at commit — taken the other way round, the two deadlock on PostgreSQL. The
    share holds back the domain's writers until this transaction ends: the rules
    engine makes the keys of a step in a short transaction of their own first
    (rules/step.py, make_expected), so that its step finds them made."""
    found = Aggregate.objects.filter(
        domain_id=domain_id, key__in=[key for key, _ in expected]
    ).values_list("key", "id", "version")
    made = {key: (pk, version) for key, pk, version in found}
    missing = [(key, moment) for key, moment in expected if key not in made]
    if not missing:
        return made
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT 1 FROM "{DOMAIN}" WHERE "id" = %s FOR KEY SHARE', [domain_id]
            )
    rows = []
    for key, moment in missing:
        found = key_date(key)
        rows.append(
            Aggregate(
                domain_id=domain_id,
                key=key,
                version=0,
                counts={},
                created_at=moment,
                updated_at=moment,
                key_template=found.template if found else "",
                key_shape=found.shape if found else "",
                key_at=found.at if found else None,
            )
        )
    Aggregate.objects.bulk_create(rows, ignore_conflicts=True)
    now_made = Aggregate.objects.filter(
        domain_id=domain_id, key__in=[key for key, _ in missing]
    ).values_list("key", "id", "version")
    made.update((key, (pk, version)) for key, pk, version in now_made)
    return made


# Retention: deleting whole aggregates is the only deletion there is.

# Statuses of a rule still waiting for an aggregate: pruning keeps such aggregates.
PENDING = [RuleStatus.Status.WAITING, RuleStatus.Status.LATE]


def prune_aggregates(
    aggregate_ids: list[int], older_than: datetime, *, include_pending: bool = False
) -> int:
    """Delete these aggregates, with their history, if still untouched since
    `older_than` and (unless `include_pending`) no rule waits for them or has
    them late; answer how many went. Short: it holds their domains' locks."""
    with transaction.atomic(), connection.cursor() as cursor:
        domain_ids = sorted(
            set(
                Aggregate.objects.filter(id__in=aggregate_ids).values_list(
                    "domain_id", flat=True
                )
            )
        )
        # The writers' lock, in the writers' order: no source lands in an
        # aggregate while it is being deleted.
        list(
            Domain.objects.select_for_update()
            .filter(id__in=domain_ids)
            .order_by("key")
            .values_list("id")
        )
        victims = Aggregate.objects.filter(
            id__in=aggregate_ids, updated_at__lt=older_than
        )
        if not include_pending:
            victims = victims.exclude(rule_statuses__status__in=PENDING)
        victims = list(victims.values_list("id", "domain_id", "version"))
        if not victims:
            return 0
        ids = [aggregate_id for aggregate_id, _, _ in victims]
        marks = placeholders(len(ids))
        for table in (RULE_STATUS, SOURCE, RECEIPT, VERSION, AGGREGATE):
            column = "id" if table == AGGREGATE else "aggregate_id"
            cursor.execute(f'DELETE FROM "{table}" WHERE "{column}" IN ({marks})', ids)
        gone: dict[int, int] = {}
        for _, domain_id, version in victims:
            if version:  # an expected key nobody posted to is not counted
                gone[domain_id] = gone.get(domain_id, 0) + 1
        cursor.executemany(
            f'UPDATE "{DOMAIN}" SET "aggregate_count" = "aggregate_count" - %s'
            ' WHERE "id" = %s',
            [(count, domain_id) for domain_id, count in gone.items()],
        )
    return len(victims)
