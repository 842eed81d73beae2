"""Registering sources: versions, positions, idempotency, conflicts, batches."""

import itertools

import pytest

from aggregates import announcements
from aggregates.models import Aggregate, Source, Version
from aggregates.store import NewSource, register_sources
from tests.toolkit import post_source


@pytest.fixture
def committed():
    """Every VersionCommitted announced while the test runs."""
    seen = []
    with announcements.versions_committed.listening(seen.extend):
        yield seen


def test_seed_example_grows_one_source_per_version(api, domain):
    first = post_source(api, collection="A", keys={"run": "am"}, attrs={"p": "a/am"})
    second = post_source(api, collection="B")
    third = post_source(api, collection="A", keys={"run": "pm"})

    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert [r.json()["version"] for r in (first, second, third)] == [1, 2, 3]
    assert [r.json()["position"] for r in (first, second, third)] == [1, 2, 3]
    assert all(r.json()["created"] for r in (first, second, third))

    path = "/api/domains/c-inputs/aggregates/2026-11-26"
    states = [api.get(path, version=n).json() for n in (1, 2, 3)]
    assert [s["version"] for s in states] == [1, 2, 3]
    assert [len(s["versions"]) for s in states] == [1, 2, 3]
    for older, newer in itertools.pairwise(states):
        # Version N+1 holds everything version N held plus exactly one source.
        assert newer["versions"][:-1] == older["versions"]
        assert sum(map(len, newer["collections"].values())) == (
            sum(map(len, older["collections"].values())) + 1
        )
    assert states[1]["collections"] == {
        "A": [
            {
                "version": 1,
                "key": first.json()["key"],
                "keys": {"run": "am"},
                "attrs": {"p": "a/am"},
            }
        ],
        "B": [{"version": 2, "key": second.json()["key"], "keys": {}, "attrs": {}}],
    }
    assert [s["keys"] for s in states[2]["collections"]["A"]] == [
        {"run": "am"},
        {"run": "pm"},
    ]
    assert api.get(path).json() == states[2]
    assert states[1]["updated_at"] == second.json()["at"]


def test_source_key_is_sha256_of_canonical_keys(api, domain):
    import hashlib

    answer = post_source(api, keys={"z": "1", "a": "é"}).json()
    canonical = '{"a":"é","z":"1"}'.encode()
    assert answer["key"] == hashlib.sha256(canonical).hexdigest()


def test_duplicate_source_creates_no_version(api, domain, committed):
    original = post_source(api, keys={"run": "am"}, attrs={"n": 1, "deep": {"x": [1]}})
    post_source(api, collection="B")
    again = post_source(api, keys={"run": "am"}, attrs={"deep": {"x": [1]}, "n": 1})

    assert again.status_code == 200
    assert again.json() == {**original.json(), "created": False}
    assert Version.objects.count() == 2
    assert [c.version for c in committed] == [1, 2]


def test_same_keys_with_other_attrs_is_a_conflict(api, domain, committed):
    post_source(api, keys={"run": "am"}, attrs={"path": "a"})
    conflict = post_source(api, keys={"run": "am"}, attrs={"path": "b"})

    assert conflict.status_code == 409
    assert conflict.json()["error"] == "conflict"
    assert "attrs" in conflict.json()["fields"]
    assert Source.objects.get().attrs == {"path": "a"}
    assert len(committed) == 1


def test_empty_keys_hold_one_source_per_collection(api, domain):
    assert post_source(api, collection="A").status_code == 201
    assert post_source(api, collection="A").status_code == 200
    assert post_source(api, collection="A", attrs={"x": 1}).status_code == 409


def test_unknown_domain_is_404_and_writes_nothing(api, domain):
    response = api.post(
        "/api/sources", {"domain": "nope", "aggregate": "a", "collection": "A"}
    )
    assert response.status_code == 404
    assert response.json()["fields"] == {"domain": response.json()["detail"]}
    assert Aggregate.objects.count() == 0


def test_batch_assigns_versions_in_array_order(api, domain, committed):
    api.post("/api/domains", {"key": "other"})
    batch = [
        {
            "domain": "c-inputs",
            "aggregate": "d1",
            "collection": "A",
            "keys": {"k": "1"},
        },
        {"domain": "other", "aggregate": "d1", "collection": "A"},
        {"domain": "c-inputs", "aggregate": "d2", "collection": "B"},
        {"domain": "c-inputs", "aggregate": "d1", "collection": "B"},
        {
            "domain": "c-inputs",
            "aggregate": "d1",
            "collection": "A",
            "keys": {"k": "1"},
        },
    ]
    response = api.post("/api/sources", batch)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["aggregate"], r["version"], r["position"]) for r in results] == [
        ("d1", 1, 1),
        ("d1", 1, 1),  # its own domain counts its own positions
        ("d2", 1, 2),
        ("d1", 2, 3),
        ("d1", 1, 1),  # the same source twice in one batch: the first answers
    ]
    assert [r["created"] for r in results] == [True, True, True, True, False]
    assert [(c.domain, c.position) for c in committed] == [
        ("c-inputs", 1),
        ("other", 1),
        ("c-inputs", 2),
        ("c-inputs", 3),
    ]


def test_batch_with_a_conflict_writes_nothing(api, domain, committed):
    post_source(api, aggregate="d1", collection="A", attrs={"v": 1})
    batch = [
        {"domain": "c-inputs", "aggregate": "d2", "collection": "A"},
        {"domain": "c-inputs", "aggregate": "d1", "collection": "A", "attrs": {"v": 2}},
    ]
    response = api.post("/api/sources", batch)

    assert response.status_code == 409
    assert list(response.json()["fields"]) == ["[1].attrs"]
    assert "nothing was written" in response.json()["detail"]
    assert Version.objects.count() == 1
    assert not Aggregate.objects.filter(key="d2").exists()
    assert len(committed) == 1


def test_batch_with_an_unknown_domain_writes_nothing(api, domain):
    batch = [
        {"domain": "c-inputs", "aggregate": "d1", "collection": "A"},
        {"domain": "missing", "aggregate": "d1", "collection": "A"},
    ]
    response = api.post("/api/sources", batch)
    assert response.status_code == 404
    assert list(response.json()["fields"]) == ["[1].domain"]
    assert Version.objects.count() == 0


def test_full_batch_of_a_thousand(api, domain):
    batch = [
        {
            "domain": "c-inputs",
            "aggregate": f"d{i % 7}",
            "collection": "A",
            "keys": {"i": str(i)},
        }
        for i in range(1000)
    ]
    response = api.post("/api/sources", batch)
    assert response.status_code == 200
    assert [r["position"] for r in response.json()["results"]] == list(range(1, 1001))
    again = api.post("/api/sources", batch)
    assert [r["created"] for r in again.json()["results"]] == [False] * 1000
    assert Version.objects.count() == 1000


def test_nothing_is_announced_before_commit(api, domain, committed, django_db_blocker):
    from django.db import transaction

    with transaction.atomic():
        register_sources([NewSource("c-inputs", "d1", "A")])
        assert committed == []
    assert [c.version for c in committed] == [1]


def test_unicode_is_stored_and_returned_unchanged(api, domain):
    text = 'naïve ☃ \U0001f600 \u200b \\u0000 "quoted"'
    post_source(api, keys={"name": text}, attrs={"t": text, "n": [1.5, None, True]})
    state = api.get("/api/domains/c-inputs/aggregates/2026-11-26").json()
    source = state["collections"]["A"][0]
    assert source["keys"] == {"name": text}
    assert source["attrs"] == {"t": text, "n": [1.5, None, True]}


def test_same_identity_twice_in_a_batch_with_other_attrs_is_a_conflict(api, domain):
    batch = [
        {"domain": "c-inputs", "aggregate": "d1", "collection": "A", "attrs": {"v": 1}},
        {"domain": "c-inputs", "aggregate": "d1", "collection": "A", "attrs": {"v": 2}},
    ]
    response = api.post("/api/sources", batch)
    assert response.status_code == 409
    assert list(response.json()["fields"]) == ["[1].attrs"]
    assert Version.objects.count() == 0


def test_attrs_compare_as_json_values_not_python_ones(api, domain):
    post_source(api, collection="A", attrs={"flag": 1})
    assert post_source(api, collection="A", attrs={"flag": True}).status_code == 409
    assert post_source(api, collection="A", attrs={"flag": 1.0}).status_code == 200
