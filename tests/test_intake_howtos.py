"""The how-tos of docs/intakes.md, run as written: each intake created, its sample
event posted with its headers, the answer compared with what the page shows."""

import json
import re

import pytest

from aggregates import store
from tests.toolkit import ROOT

PAGE = ROOT / "docs" / "intakes.md"
BLOCK = re.compile(
    r"^```(\w+) (intake|event|headers|registers)=([\w-]+)\n(.*?)^```", re.S | re.M
)


def howtos() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for _, kind, name, text in BLOCK.findall(PAGE.read_text()):
        found.setdefault(name, {})[kind] = text
    return found


HOWTOS = howtos()


def test_the_page_has_its_how_tos():
    assert set(HOWTOS) == {
        "s3-eventbridge",
        "s3-notification",
        "gcs-eventarc",
        "pipeline-json",
        "openlineage",
    }
    for name, blocks in HOWTOS.items():
        assert {"intake", "event", "registers"} <= blocks.keys(), name


@pytest.mark.parametrize("name", sorted(HOWTOS))
def test_a_how_to_registers_what_it_says(api, transactional_db, name):
    store.create_domain("lake", {})
    blocks = HOWTOS[name]
    intake = json.loads(blocks["intake"])
    body = json.loads(blocks["event"])
    expected = json.loads(blocks["registers"])
    headers = dict(
        line.split(": ", 1) for line in blocks.get("headers", "").splitlines() if line
    )
    headers.setdefault("content-type", "application/json")

    created = api.post("/api/domains/lake/intakes", intake)
    assert created.status_code == 201, created.text
    preview = api.post(
        "/api/domains/lake/intakes/preview",
        {"intake": intake, "body": body, "headers": headers},
    ).json()["results"]
    assert [_shown(result) for result in preview] == expected

    events = f"/api/domains/lake/intakes/{intake['name']}/events"
    for again, status in ((False, 201), (True, 200)):
        posted = api.request("POST", events, body=json.dumps(body), headers=headers)
        assert posted.status_code == 200, posted.text
        results = posted.json()["results"]
        assert [r["status"] for r in results] == [
            shown.get("status", status) for shown in expected
        ], again
    for result, shown in zip(results, expected, strict=True):
        if "status" in shown:
            continue
        state = api.get(f"/api/domains/lake/aggregates/{result['aggregate']}").json()
        sources = state["collections"][shown["collection"]]
        assert [(s["keys"], s["attrs"]) for s in sources] == [
            (shown["keys"], shown["attrs"])
        ]


def _shown(result: dict) -> dict:
    """A preview's result as the page shows it: the domain is the how-to's, and
    a refusal without its fields."""
    if "status" in result:
        return {k: result[k] for k in ("status", "error", "detail")}
    assert result.pop("domain") == "lake"
    return result
