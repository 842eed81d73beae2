"""GET /api/stream: Server-Sent Events with Last-Event-ID resume."""

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from aggregates.store import NewSource, register_sources
from aggregates.tokens import create_token
from tests.toolkit import wait_for


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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# Reads the c-inputs stream at argv[1] with token argv[2]; prints the ids of the
# first 10,000 events.
KEEPING_UP = """
import sys, httpx
headers = {"Authorization": "Bearer " + sys.argv[2]}
params = {"domain": "c-inputs", "mode": "delta"}
with httpx.stream("GET", sys.argv[1], params=params, headers=headers, timeout=60) as r:
    ids = (line[4:] for line in r.iter_lines() if line.startswith("id: "))
    for count, id in enumerate(ids, 1):
        print(id)
        if count == 10_000:
            break
"""


def test_a_reader_that_stops_reading_is_dropped_and_memory_stays_bounded(
    start_server, token
):
    """An SSE reader that reads nothing while 100 MB of events are posted, beside
    one that reads everything: the stalled stream waits for its socket, the
    server drops it as a slow consumer once BOTLNEK_WS_MAX_PENDING frames wait,
    and its memory does not grow with what was posted (it grew by all of it,
    and kept it, when daphne buffered whatever the stream wrote); the reader
    that keeps up gets every event of the burst."""
    server = start_server(BOTLNEK_POSITION_CHECK_SECONDS="1")
    url = f"{server.url}/api/stream"
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        b"GET /api/stream?domain=c-inputs&mode=delta HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    assert stalled.recv(12) == b"HTTP/1.1 200"  # then it reads nothing more
    # The reader that keeps up is a process of its own: a thread here would share
    # the interpreter lock with the posting below, and fall behind for that.
    reader = subprocess.Popen(
        [sys.executable, "-c", KEEPING_UP, url, token],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: server.log().count("/api/stream") >= 2, 10, "both streams")
    before = rss_kib(server.process.pid)
    blob = "x" * 10_000
    for batch in range(100):
        register_sources(
            [
                NewSource("c-inputs", f"d{batch}", "A", {"i": str(i)}, {"blob": blob})
                for i in range(100)
            ]
        )
    healthy, _ = reader.communicate(timeout=60)
    assert healthy.split() == [str(p) for p in range(1, 10_001)]  # all through
    grown_mib = (rss_kib(server.process.pid) - before) / 1024
    assert "whose reader fell behind" in server.log()
    # What a stream holds at most (BOTLNEK_WS_MAX_PENDING frames, a page read
    # from the database) and what Python keeps of it: ~50 MiB measured here;
    # buffering everything for the stalled reader adds the 100 MB posted.
    assert grown_mib < 80, f"the server grew by {grown_mib:.0f} MiB"
    # The stalled connection is gone: what the socket still holds, then its end.
    stalled.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        while stalled.recv(1 << 20):
            pass
    stalled.close()
