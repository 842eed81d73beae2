"""Group commit: single posts taken together into one transaction stay independent.

register_each() is what a group runs; the burst test drives it through a real server
with duplicates, conflicts, unknown domains and new sources posted in the same instant.
"""

import threading
from collections import Counter, defaultdict

import httpx
import pytest

from aggregates import store
from aggregates.errors import Conflict, UnknownDomain
from aggregates.models import Aggregate, Domain, Source, Version
from aggregates.store import NewSource
from aggregates.tokens import create_token


def source(aggregate: str, n: str, attrs=None, domain="c-inputs", collection="A"):
    return NewSource(domain, aggregate, collection, {"n": n}, attrs or {"n": n})


def test_each_source_stands_alone_in_one_transaction(domain):
    store.register_sources([source("old", "1")])
    outcomes = store.register_each(
        [
            source("new", "1"),
            source("new", "1"),  # the same source again in the same group
            source("new", "1", {"other": True}),  # its keys, other attrs
            source("gone", "1", domain="nowhere"),
            source("old", "1", {"other": True}),  # conflicts with the stored one
            source("never", "1", domain="nowhere"),
            source("new", "2", collection="B"),
        ]
    )
    first, again, clash, unknown, old_clash, unknown_too, second = outcomes
    assert (first.created, first.version, first.position) == (True, 1, 2)
    assert (again.created, again.version, again.position) == (False, 1, 2)
    assert isinstance(clash, Conflict) and clash.index == 2
    assert "(version 1)" in clash.detail
    assert isinstance(unknown, UnknownDomain) and unknown.field == "domain"
    assert isinstance(old_clash, Conflict) and old_clash.field == "attrs"
    assert isinstance(unknown_too, UnknownDomain)
    assert (second.created, second.version, second.position) == (True, 2, 3)
    assert first.at == second.at  # one transaction

    # The failures left no trace: no aggregate for the unknown domain's items, no
    # version or source beyond the three created, counters that agree.
    assert set(Aggregate.objects.values_list("key", flat=True)) == {"old", "new"}
    assert Version.objects.count() == Source.objects.count() == 3
    new = Aggregate.objects.get(key="new")
    assert (new.version, new.counts) == (2, {"A": 1, "B": 1})
    domain.refresh_from_db()
    assert (domain.latest_position, domain.aggregate_count) == (3, 2)
    stored = Source.objects.get(aggregate=new, collection="A")
    assert stored.attrs == {"n": "1"}


def test_a_group_of_failures_writes_nothing(domain):
    store.register_sources([source("old", "1")])
    outcomes = store.register_each(
        [source("old", "1", {"x": 1}), source("a", "1", domain="nowhere")]
    )
    assert [type(o) for o in outcomes] == [Conflict, UnknownDomain]
    domain.refresh_from_db()
    assert domain.latest_position == 1 and Version.objects.count() == 1


def test_a_batch_stays_all_or_nothing(domain):
    with pytest.raises(Conflict) as refused:
        store.register_sources(
            [source("b", "1"), source("b", "2"), source("b", "1", {"x": 1})]
        )
    assert refused.value.index == 2 and "(version 1)" in refused.value.detail
    with pytest.raises(UnknownDomain) as unknown:
        store.register_sources([source("b", "1"), source("b", "2", domain="nowhere")])
    assert unknown.value.index == 1
    assert not Aggregate.objects.exists() and not Version.objects.exists()
    domain.refresh_from_db()
    assert (domain.latest_position, domain.aggregate_count) == (0, 0)


WRITERS = 16
ROUNDS = 6


def test_a_burst_of_mixed_posts_lands_in_groups_each_answered_alone(start_server):
    """WRITERS threads post at the same instant, ROUNDS times: per identity one
    original, a duplicate, a conflicting variant; plus new sources and a post into
    an unknown domain. Every answer is its own; the data is as if posted one by one."""
    Domain.objects.create(key="burst")
    token = create_token(name="burst", scope="write")[1]
    server = start_server()
    barrier = threading.Barrier(WRITERS)
    answers: list[tuple[dict, int, dict]] = []
    lock = threading.Lock()

    def body(writer: int, round_: int) -> dict:
        kind = writer % 4
        identity = {"round": str(round_), "pair": str(writer // 4)}
        if kind == 0:  # the original
            return {"aggregate": "hot", "keys": identity, "attrs": {"v": 1}}
        if kind == 1:  # a publisher's retry of it
            return {"aggregate": "hot", "keys": identity, "attrs": {"v": 1}}
        if kind == 2:  # the same keys with other attrs
            return {"aggregate": "hot", "keys": identity, "attrs": {"v": 2}}
        if writer == 3:
            return {"domain": "nowhere", "aggregate": "hot", "keys": identity}
        keys = {"round": str(round_), "new": str(writer)}
        return {"aggregate": f"own-{writer}", "keys": keys, "attrs": {"v": 3}}

    def writer(n: int) -> None:
        client = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        for round_ in range(ROUNDS):
            sent = {"domain": "burst", "collection": "A", **body(n, round_)}
            barrier.wait()
            response = client.post("/api/sources", json=sent)
            with lock:
                answers.append((sent, response.status_code, response.json()))
        client.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) <= {200, 201, 404, 409}, statuses
    assert statuses[404] == ROUNDS  # the unknown domain, and nothing else
    by_identity: dict[tuple, list] = defaultdict(list)
    for sent, status, reply in answers:
        if sent["domain"] == "burst":
            identity = (sent["aggregate"], tuple(sorted(sent["keys"].items())))
            by_identity[identity].append((sent, status, reply))
    for replies in by_identity.values():
        winners = [(sent, reply) for sent, status, reply in replies if status == 201]
        assert len(winners) == 1, replies
        won, original = winners[0]
        stored = Source.objects.get(
            aggregate__key=won["aggregate"], key=original["key"]
        )
        assert stored.attrs == won["attrs"]
        for sent, status, reply in replies:
            if status == 200:  # the same source: the original's version
                assert sent["attrs"] == won["attrs"]
                assert (reply["version"], reply["position"]) == (
                    original["version"],
                    original["position"],
                )
            elif status == 409:
                assert sent["attrs"] != won["attrs"]
                assert reply["error"] == "conflict" and "attrs" in reply["fields"]

    created = [reply for _, status, reply in answers if status == 201]
    domain = Domain.objects.get(key="burst")
    positions = list(
        Version.objects.filter(domain=domain)
        .order_by("position")
        .values_list("position", "at")
    )
    assert [p for p, _ in positions] == list(range(1, len(created) + 1))
    assert sorted(r["position"] for r in created) == [p for p, _ in positions]
    assert [at for _, at in positions] == sorted(at for _, at in positions)
    # Posts were taken together: some commit holds more than one new version.
    shared = Counter(at for _, at in positions)
    assert max(shared.values()) > 1, "no two posts ever shared a commit"
