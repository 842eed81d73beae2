"""Read endpoints: listing, pagination, catch-up, and query counts flat in size."""

import base64

import pytest

from aggregates import store
from tests.toolkit import fill


def test_domain_listing_counts(api, domain):
    fill("d1", 3)
    fill("d2", 2)
    body = api.get("/api/domains/c-inputs").json()
    assert body["key"] == "c-inputs"
    assert (body["aggregates"], body["latest_position"]) == (2, 5)
    assert body["created_at"].endswith("Z")
    assert api.get("/api/domains").json()["domains"] == [body]


def test_aggregates_newest_first_with_cursor_pages(api, domain):
    for i in range(7):
        fill(f"2026-11-{i:02d}", 1)
    fill("2026-11-02", 2)  # one new source: updated last, so it comes first
    seen = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.get("/api/domains/c-inputs/aggregates", **params).json()
        seen += [a["key"] for a in page["aggregates"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["2026-11-02"] + [f"2026-11-{i:02d}" for i in (6, 5, 4, 3, 1, 0)]
    first = api.get("/api/domains/c-inputs/aggregates", limit=1).json()["aggregates"]
    assert first == [
        {
            "key": "2026-11-02",
            "version": 2,
            "created_at": first[0]["created_at"],
            "updated_at": first[0]["updated_at"],
            "counts": {"A": 1, "B": 1},
        }
    ]


def test_aggregates_by_key_prefix(api, domain):
    for key in ["2026-10-31", "2026-11-01", "2026-11-02", "other", "Agg", "agg"]:
        fill(key, 1)
    page = api.get("/api/domains/c-inputs/aggregates", prefix="2026-11").json()
    assert [a["key"] for a in page["aggregates"]] == ["2026-11-02", "2026-11-01"]
    page = api.get("/api/domains/c-inputs/aggregates", prefix="a").json()
    assert [a["key"] for a in page["aggregates"]] == ["agg"]  # case matters


def test_aggregate_versions_after(api, domain):
    fill("d1", 5)
    body = api.get(
        "/api/domains/c-inputs/aggregates/d1/versions", after=2, limit=2
    ).json()
    frames = body["versions"]
    assert [f["version"] for f in frames] == [3, 4]
    assert frames[0] == {
        "domain": "c-inputs",
        "aggregate": "d1",
        "version": 3,
        "position": 3,
        "at": frames[0]["at"],
        "source": {
            "collection": "A",
            "key": frames[0]["source"]["key"],
            "keys": {"i": "2"},
            "attrs": {"n": 2},
        },
    }


def test_domain_catch_up_in_position_order(api, domain):
    fill("d1", 2)
    fill("d2", 2)
    fill("d1", 3)  # the first two are duplicates: one new version
    body = api.get("/api/domains/c-inputs/versions", after_position=1).json()
    assert body["latest_position"] == 5
    assert [
        (f["aggregate"], f["version"], f["position"]) for f in body["versions"]
    ] == [
        ("d1", 2, 2),
        ("d2", 1, 3),
        ("d2", 2, 4),
        ("d1", 3, 5),
    ]
    empty = api.get("/api/domains/c-inputs/versions", after_position=5).json()
    assert empty == {"versions": [], "latest_position": 5}


# Each read as the API runs it, in one worker thread's call.


def aggregate_versions() -> list:
    big = store.get_aggregate("c-inputs", "big")
    return store.aggregate_versions(big, after=0, limit=100)


def domain_versions() -> list:
    return store.domain_versions(
        store.get_domain("c-inputs"), after_position=0, limit=100
    )


def aggregate_page() -> dict:
    domain = store.get_domain("c-inputs")
    return store.list_aggregates(domain, limit=100, cursor=None, prefix=None)


@pytest.mark.parametrize(
    "read",
    [
        lambda: store.state_json_as_of("c-inputs", "big", None),
        lambda: store.state_json_as_of("c-inputs", "big", 3),
        aggregate_versions,
        domain_versions,
        aggregate_page,
        store.list_domains,
    ],
    ids=["state", "state-as-of", "versions", "catch-up", "aggregates", "domains"],
)
def test_reads_run_a_constant_number_of_queries(
    domain, read, django_assert_max_num_queries
):
    fill("big", 3)
    fill("other", 1)
    with django_assert_max_num_queries(3) as small:
        read()
    fill("big", 300)
    for i in range(30):
        fill(f"more-{i}", 2)
    with django_assert_max_num_queries(3) as large:
        read()
    assert len(large.captured_queries) == len(small.captured_queries)


@pytest.mark.parametrize(
    "payload", [b"not json", b'["2026-01-01", 1e400]', b'["yesterday", 1]', b"[1]"]
)
def test_a_forged_cursor_is_a_400_naming_the_cursor(api, domain, payload):
    cursor = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    response = api.get("/api/domains/c-inputs/aggregates", cursor=cursor)
    assert response.status_code == 400, response.content
    assert "cursor" in response.json()["fields"]


def test_lists_of_definitions_page_by_limit_and_after(api, domain, settings):
    from aggregates.webhooks.targets import AllowList

    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse("loopback")
    base = "/api/domains/c-inputs"
    for name in ["r-c", "r-a", "r-b"]:
        store.create_domain(f"d-{name}", {})
        created = [
            api.post(f"{base}/rules", {"name": name, "when": "A >= 1"}),
            api.post(
                f"{base}/intakes", {"name": name, "aggregate": "x", "collection": "A"}
            ),
            api.post(
                f"{base}/webhooks",
                {"url": "http://127.0.0.1:9/", "events": ["version"]},
            ),
        ]
        assert [r.status_code for r in created] == [201] * 3, [r.text for r in created]

    def pages(path: str, field: str, key: str) -> list[list]:
        found, after = [], None
        for _ in range(5):
            params = {"limit": 2} | ({"after": after} if after is not None else {})
            page = api.get(path, **params)
            assert page.status_code == 200, page.text
            keys = [item[key] for item in page.json()[field]]
            found.append(keys)
            if len(keys) < 2:
                return found
            after = keys[-1]
        raise AssertionError(f"{path} pages without end: {found}")

    assert pages("/api/domains", "domains", "key") == [
        ["c-inputs", "d-r-a"],
        ["d-r-b", "d-r-c"],
        [],
    ]
    assert pages(f"{base}/rules", "rules", "name") == [["r-a", "r-b"], ["r-c"]]
    assert pages(f"{base}/intakes", "intakes", "name") == [["r-a", "r-b"], ["r-c"]]
    ids = [w["id"] for w in api.get(f"{base}/webhooks").json()["webhooks"]]
    assert pages(f"{base}/webhooks", "webhooks", "id") == [ids[:2], ids[2:]]
    too_many = api.get(f"{base}/rules", limit=1001)
    assert too_many.status_code == 400 and "limit" in too_many.json()["fields"]
