"""What a server process logs: one line per request, and routine work quietly."""

import httpx

from aggregates.models import Rule
from tests.toolkit import wait_for


def request_lines(server, about: str) -> list[str]:
    """The server's JSON request lines about `about` (daphne's own access log,
    on in tests, is off under `manage.py serve`)."""
    log = server.log().splitlines()
    return [line for line in log if line.startswith("{") and about in line]


def test_a_refused_request_is_one_line_and_a_lease_renewal_none(
    start_server, token, domain
):
    Rule.objects.create(domain=domain, name="run-c", when="A >= 1")
    server = start_server()
    auth = {"Authorization": f"Bearer {token}"}
    refused = httpx.post(f"{server.url}/api/sources", json={"domain": 1}, headers=auth)
    assert refused.status_code == 400
    leases = f"{server.url}/api/domains/c-inputs/rules/run-c/leases"
    for holder in ("h1", "h1", "h2"):  # taken, renewed, refused to another
        httpx.post(leases, json={"watcher": "w", "holder": holder}, headers=auth)
    wait_for(lambda: request_lines(server, '"status": 409'), 5, "the refused lease")

    assert len(request_lines(server, "/api/sources")) == 1
    assert "Bad Request" not in server.log()  # Django's own line for the same 400
    (lease,) = request_lines(server, "/leases")  # the 409: not routine
    assert '"status": 409' in lease
