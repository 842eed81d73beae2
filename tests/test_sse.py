"""GET /api/stream: Server-Sent Events with Last-Event-ID resume."""

import json

import httpx
import pytest

from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token


def read_events(response, count):
    events, event = [], {}
    for line in response.iter_lines():
        if not line:
            if "id" in event:
                events.append(event)
                if len(events) == count:
                    return events
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            event[field] = value
    raise AssertionError(f"stream ended after {events}")


def test_stream_sends_versions_and_resumes_from_last_event_id(start_server, token):
    server = start_server()
    headers = {"Authorization": f"Bearer {token}"}
    register_sources([NewSource("c-inputs", "d1", c) for c in "AB"])
    url = f"{server.url}/api/stream"
    params = {"domain": "c-inputs", "after_position": 0, "mode": "delta"}
    with httpx.stream("GET", url, params=params, headers=headers, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        first = read_events(r, 2)
    assert [(e["id"], e["event"]) for e in first] == [
        ("1", "version"),
        ("2", "version"),
    ]
    frame = json.loads(first[1]["data"])
    assert frame["type"] == "version" and "subscription" not in frame
    assert (frame["aggregate"], frame["version"], frame["counts"]) == (
        "d1",
        2,
        {"A": 1, "B": 1},
    )

    register_sources([NewSource("c-inputs", "d1", "C")])
    resume = {**headers, "Last-Event-ID": "2"}
    params = {"domain": "c-inputs", "aggregate": "d1"}
    with httpx.stream("GET", url, params=params, headers=resume, timeout=10) as r:
        (event,) = read_events(r, 1)
    assert event["id"] == "3"
    assert json.loads(event["data"])["state"]["version"] == 3


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"domain": "c-inputs"}, {}, 401),
        ({"domain": "nope"}, None, 404),
        ({"domain": "bad key"}, None, 400),
        ({"domain": "c-inputs"}, {"Last-Event-ID": "x"}, 400),
        ({"domain": "c-inputs"}, {"Last-Event-ID": "²".encode()}, 400),
    ],
)
def test_stream_errors(start_server, token, params, headers, status):
    server = start_server()
    if headers is None or "Last-Event-ID" in headers:
        headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    response = httpx.get(f"{server.url}/api/stream", params=params, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]


def test_stream_refuses_a_token_for_other_domains(start_server, token):
    _, other = create_token(name="o", scope="read", domains=["elsewhere"])
    response = httpx.get(
        f"{start_server().url}/api/stream",
        params={"domain": "c-inputs"},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert response.status_code == 403
