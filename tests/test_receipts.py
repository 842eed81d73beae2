"""Receipts: what a subscriber did about a version; never a version themselves."""

import pytest

from aggregates.models import Version
from tests.toolkit import ApiClient, post_source

RECEIPT = {
    "watcher": "run-c",
    "domain": "c-inputs",
    "aggregate": "2026-11-26",
    "version": 2,
    "outcome": "success",
    "exit_code": 0,
    "duration_s": 41.5,
}


@pytest.fixture
def history(api, domain):
    post_source(api, collection="A")
    post_source(api, collection="B")


def test_receipt_is_recorded_and_listed_newest_first(api, history):
    first = api.post("/api/receipts", RECEIPT)
    assert first.status_code == 201
    body = first.json()
    assert body == {
        **RECEIPT,
        "detail": "",
        "rule": None,
        "seq": None,
        "id": body["id"],
        "at": body["at"],
    }
    second = api.post(
        "/api/receipts",
        {**RECEIPT, "outcome": "failure", "exit_code": 3, "detail": "boom"},
    )
    assert second.status_code == 201
    listed = api.get("/api/domains/c-inputs/aggregates/2026-11-26/receipts").json()
    assert [r["outcome"] for r in listed["receipts"]] == ["failure", "success"]
    assert Version.objects.count() == 2  # no version was added


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"version": 3}, 404, "version"),
        ({"aggregate": "nope"}, 404, None),
        ({"domain": "nope"}, 404, None),
        ({"outcome": "maybe"}, 400, "outcome"),
        ({"version": 0}, 400, "version"),
        ({"duration_s": -1}, 400, "duration_s"),
        ({"watcher": ""}, 400, "watcher"),
        ({"detail": "a\x00b"}, 400, "detail"),
    ],
)
def test_bad_receipts(api, history, change, status, field):
    response = api.post("/api/receipts", {**RECEIPT, **change})
    assert response.status_code == status, response.content
    if field:
        assert field in response.json()["fields"]


def test_receipts_need_write_scope(history, read_token):
    reader = ApiClient(read_token)
    assert reader.post("/api/receipts", RECEIPT).status_code == 403
    path = "/api/domains/c-inputs/aggregates/2026-11-26/receipts"
    assert reader.get(path).json() == {"receipts": []}


def test_receipts_are_in_the_openapi_document(api):
    paths = api.get("/api/openapi.json").json()["paths"]
    assert "/api/receipts" in paths
    assert "/api/domains/{domain}/aggregates/{aggregate}/receipts" in paths


def test_out_of_range_exit_code_is_400(api, history):
    response = api.post("/api/receipts", {**RECEIPT, "exit_code": 2**70})
    assert response.status_code == 400
    assert "exit_code" in response.json()["fields"]
