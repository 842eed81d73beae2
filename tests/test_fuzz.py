"""Fuzzing the JSON API against its own OpenAPI document with schemathesis.

A real server answers generated requests, valid and invalid, on a domain that holds
aggregates. Every answer must be one the document declares: no 5xx, a documented
status code, content type and body shape; invalid requests rejected, valid ones
accepted; no answer but 401 without the token.
"""

import json
from datetime import UTC, datetime

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from aggregates.api import api
from aggregates.models import ApiToken, Rule
from aggregates.store import NewSource, encode_cursor, register_sources
from aggregates.tokens import digest

# Some cases are built when the tests are collected, before any fixture could create
# a token, so the fuzzer's token is a secret known in advance.
TOKEN = "bk_fuzzer-write-token-for-tests-only"
AGGREGATES = ["2026-11-26", "2026-11-27"]
# Cursors are opaque: a generated string is not one, and a 400 says so.
CURSOR = encode_cursor(datetime(2100, 1, 1, tzinfo=UTC), 1_000_000)

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261126,
        "auth": {"openapi": {"BearerToken": {"bearer": TOKEN}}},
        "request-timeout": 10,
        "generation": {
            "mode": "all",  # valid requests and invalid ones
            "max-examples": 30,  # per operation, besides the boundary cases
            "deterministic": True,
            "database": "none",
            # NUL is refused anywhere in a string (docs/concepts.md), which JSON
            # Schema cannot say of free-form attrs.
            "allow-x00": False,
            # Unknown query parameters and headers are ignored, as by most APIs.
            "allow-extra-parameters": False,
        },
        # Half of the generated keys name what exists, so reads find it and writes
        # get past "no such domain".
        "dictionaries": {
            "domains": {"values": ["c-inputs"]},
            "aggregates": {"values": AGGREGATES},
            "cursors": {"values": [CURSOR]},
            # A rule's `when` is a small language JSON Schema cannot state: the
            # generated definitions use real ones (tests/test_rules.py has the bad).
            "whens": {"values": ["A >= 1", "A >= 2 and B >= 1", "age(B) < 6h"]},
            "rules": {"values": ["run-c"]},
            # A closed port: the webhooks the fuzzer makes fail quietly.
            "urls": {"values": ["http://127.0.0.1:9/hook"]},
        },
        "parameters": {
            **{
                f"{where}.{name}": {"dictionary": f"{name}s", "probability": 0.5}
                for where in ("path", "body", "body.[*]")
                for name in ("domain", "aggregate")
            },
            "query.cursor": {"dictionary": "cursors"},
            "body.when": {"dictionary": "whens", "probability": 1.0},
            "path.rule": {"dictionary": "rules", "probability": 0.5},
            "body.url": {"dictionary": "urls", "probability": 0.9},
        },
        "operations": [
            {
                # A rule's `when` is a language JSON Schema cannot state, nor an
                # intake's templates, nor which events a webhook may combine, so a
                # definition the document allows may still be refused with 400
                # (naming the field and the rule); the boundary cases do not take
                # the dictionaries above.
                "include-path-regex": (
                    r"/rules(/preview|/\{rule\})?$"
                    r"|/webhooks(/\{webhook\}(/replay)?)?$"
                    r"|/intakes(/preview|/\{intake\})?$"
                ),
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [
                            *[200, 201, 204, 400, 401, 403, 404, 409],
                            422,  # an Idempotency-Key sent again with another body
                        ]
                    }
                },
            },
            {
                # The fuzzer sends the same Idempotency-Key with other bodies.
                "include-path-regex": r"^/api/receipts$",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [201, 400, 401, 403, 404, 422]
                    }
                },
            },
        ],
        "checks": {
            # A batch over 1,000 sources is 413, as docs/api.md says.
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 409, 413, 415]
            },
        },
    }
)

# The document the server serves (JSON turns its status codes into strings), built
# here because tests are made per operation at collection, before a server runs;
# the fixture checks that the server serves this very document. (Loading it from the
# server through schemathesis.pytest.from_fixture fails on pytest 9.2.)
DOCUMENT = json.loads(json.dumps(api.get_openapi_schema()))
# The stream never ends, so a request that opens it would wait for the client's
# timeout; test_sse.py covers it.
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(
    path="/api/stream"
)


@pytest.fixture
def server_url(start_server, domain):
    ApiToken.objects.create(
        name="fuzzer", scope="write", digest=digest(TOKEN), prefix=TOKEN[:10]
    )
    register_sources(
        [
            NewSource("c-inputs", aggregate, collection, {"run": run}, {"n": 1})
            for aggregate in AGGREGATES
            for collection in "AB"
            for run in ("am", "pm")
        ]
    )
    Rule.objects.create(domain=domain, name="run-c", when="A >= 1 and B >= 1")
    # The webhooks the fuzzer makes call 127.0.0.1, which the operator must allow.
    server = start_server(BOTLNEK_WEBHOOK_ALLOWED_HOSTS="loopback")
    assert httpx.get(f"{server.url}/api/openapi.json").json() == DOCUMENT
    return server.url


@schema.parametrize()
# One server and its data serve all the examples of an operation, on purpose.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_answers_as_documented(case, server_url):
    case.call_and_validate(base_url=server_url)
