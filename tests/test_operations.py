"""Operator commands: prune (the only deletion), export and import."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from aggregates import store
from aggregates.models import Aggregate, Domain, Receipt, Source, Version
from aggregates.store import NewSource, register_sources


@pytest.fixture
def history(transactional_db):
    store.create_domain("c-inputs", {"owner": "data"})
    store.create_domain("other", {})
    for day in ("2026-01-01", "2026-01-02", "2026-11-27"):
        register_sources(
            [NewSource("c-inputs", day, c, {"n": day}, {"p": day}) for c in "AB"]
        )
    register_sources([NewSource("other", "2026-01-01", "A")])
    old = timezone.now() - timedelta(days=200)
    Aggregate.objects.filter(key__startswith="2026-01").update(updated_at=old)
    Receipt.objects.create(
        aggregate=Aggregate.objects.get(domain__key="c-inputs", key="2026-01-01"),
        watcher="w",
        version=2,
        outcome="success",
    )


def test_prune_deletes_whole_old_aggregates_of_a_domain(history):
    out = io.StringIO()
    call_command(
        "prune", "--older-than", "90d", "--domain", "c-inputs", "--dry-run", stdout=out
    )
    assert "2 aggregates would be deleted" in out.getvalue()
    assert Aggregate.objects.count() == 4

    call_command(
        "prune", "--older-than", "90d", "--domain", "c-inputs", stdout=io.StringIO()
    )
    keys = set(Aggregate.objects.values_list("domain__key", "key"))
    assert keys == {("c-inputs", "2026-11-27"), ("other", "2026-01-01")}
    assert Version.objects.filter(domain__key="c-inputs").count() == 2
    assert Source.objects.count() == 3 and Receipt.objects.count() == 0
    domain = Domain.objects.get(key="c-inputs")
    assert (domain.aggregate_count, domain.latest_position) == (1, 6)
    # Positions go on from where they were; catch-up skips the pruned ones.
    result = register_sources([NewSource("c-inputs", "2026-11-28", "A")])[0]
    assert result.position == 7


def test_prune_rejects_a_bad_duration(history):
    with pytest.raises(CommandError, match="90d"):
        call_command("prune", "--older-than", "ninety days")


def test_an_older_export_is_replayed_through_the_write_path(history, monkeypatch):
    """Files written before the backup format (docs/backup.md): the domain, then
    its sources; replayed, they get new times and positions."""
    older = [{"domain": "c-inputs", "attrs": {"owner": "data"}}] + [
        {"aggregate": key, "collection": c, "keys": keys, "attrs": attrs}
        for key, c, keys, attrs in Version.objects.filter(domain__key="c-inputs")
        .order_by("position")
        .values_list(
            "aggregate__key", "source__collection", "source__keys", "source__attrs"
        )
    ]
    text = "".join(json.dumps(line) + "\n" for line in older)
    before = list(
        Version.objects.filter(domain__key="c-inputs")
        .order_by("position")
        .values_list("aggregate__key", "number", "source__keys")
    )
    Aggregate.objects.filter(domain__key="c-inputs").delete()
    Domain.objects.filter(key="c-inputs").delete()

    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    result = io.StringIO()
    call_command("import", stdout=result)
    assert "6 new sources, 0 already there" in result.getvalue()
    after = list(
        Version.objects.filter(domain__key="c-inputs")
        .order_by("position")
        .values_list("aggregate__key", "number", "source__keys")
    )
    assert after == before
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    again = io.StringIO()
    call_command("import", "-", stdout=again)
    assert "0 new sources, 6 already there" in again.getvalue()


def test_import_names_the_bad_line(history, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"domain": "c-inputs", "attrs": {"owner": "data"}}\n'
        '{"aggregate": "a b", "collection": "A"}\n'
    )
    with pytest.raises(CommandError, match="line 2"):
        call_command("import", str(path))
