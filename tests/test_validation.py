"""Bad input gets a 4xx JSON error naming the field and the rule, and writes nothing."""

import json

import pytest

from aggregates.models import Aggregate, Domain, Source, Version

GOOD = {"domain": "c-inputs", "aggregate": "2026-11-26", "collection": "A"}


def assert_error(response, status, field=None):
    assert response.status_code == status, response.content
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "detail", "fields"}
    assert body["error"] and body["detail"]
    if field is not None:
        assert field in body["fields"], body
        assert body["fields"][field]
    return body


def assert_nothing_written():
    assert Aggregate.objects.count() == 0
    assert Version.objects.count() == 0
    assert Source.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"domain": 7}, "domain", "must be a string"),
        ({"domain": "c inputs"}, "domain", "characters from"),
        ({"aggregate": "a/b"}, "aggregate", "no /"),
        ({"aggregate": ""}, "aggregate", "1-200"),
        ({"aggregate": "x" * 201}, "aggregate", "1-200"),
        ({"collection": "A B"}, "collection", "characters from"),
        ({"collection": None}, "collection", "must be a string"),
        ({"keys": ["run"]}, "keys", "JSON object"),
        ({"keys": {"run": 1}}, "keys.run", "must be a string"),
        ({"keys": {"run": "a\x00b"}}, "keys", "NUL"),
        ({"attrs": "x"}, "attrs", "JSON object"),
        ({"attrs": {"x": "a\x00"}}, "attrs", "NUL"),
        ({"attrs": {"x\x00": 1}}, "attrs", "NUL"),
        ({"attrs": {"big": "x" * 65536}}, "attrs", "65536 bytes"),
        ({"attrs": {"deep": json.loads("[" * 70 + "]" * 70)}}, "attrs", "nest"),
        ({"colection": "A"}, "colection", "not a known field"),
    ],
)
def test_bad_source_is_400_naming_field_and_rule(api, domain, change, field, rule):
    body = assert_error(api.post("/api/sources", {**GOOD, **change}), 400, field)
    assert rule in body["fields"][field]
    assert_nothing_written()


@pytest.mark.parametrize("missing", ["domain", "aggregate", "collection"])
def test_missing_field_is_400(api, domain, missing):
    body = {key: value for key, value in GOOD.items() if key != missing}
    assert_error(api.post("/api/sources", body), 400, missing)
    assert_nothing_written()


def test_attrs_of_exactly_64_kib_are_accepted(api, domain):
    filler = "x" * (65536 - len('{"big":""}'))
    assert (
        api.post("/api/sources", {**GOOD, "attrs": {"big": filler}}).status_code == 201
    )


def test_key_of_200_characters_is_accepted(api, domain):
    response = api.post("/api/sources", {**GOOD, "aggregate": "a" * 200})
    assert response.status_code == 201


def test_one_bad_item_fails_the_whole_batch(api, domain):
    batch = [GOOD, {**GOOD, "collection": "B"}, {**GOOD, "aggregate": "bad key"}]
    body = assert_error(api.post("/api/sources", batch), 400, "[2].aggregate")
    assert list(body["fields"]) == ["[2].aggregate"]
    assert_nothing_written()


def test_batch_over_a_thousand_is_413(api, domain):
    batch = [{**GOOD, "keys": {"i": str(i)}} for i in range(1001)]
    assert_error(api.post("/api/sources", batch), 413)
    assert_nothing_written()


def test_empty_batch_is_400(api, domain):
    assert_error(api.post("/api/sources", []), 400)


def test_body_over_one_mib_is_413(api, domain):
    body = json.dumps({**GOOD, "attrs": {"x": "y" * (1024 * 1024)}})
    assert_error(api.post("/api/sources", body=body), 413)
    assert_nothing_written()


@pytest.mark.parametrize(
    "body",
    [
        '{"domain": ',
        "not json",
        "  ",
        '{"x": NaN}',
        "[" * 100_000,
        "\xff",
        '{"domain": "c-inputs", "aggregate": "a", "collection": "A",'
        ' "attrs": {"x": 1e400}}',
    ],
    ids=["truncated", "text", "blank", "nan", "deep", "not-utf8", "infinite"],
)
def test_malformed_json_is_400(api, domain, body):
    assert_error(api.post("/api/sources", body=body), 400)
    assert_nothing_written()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded"]
)
def test_wrong_content_type_is_415(api, domain, content_type):
    response = api.post(
        "/api/sources", body=json.dumps(GOOD), content_type=content_type
    )
    assert_error(response, 415)
    assert_nothing_written()


def test_json_content_type_with_charset_is_accepted(api, domain):
    response = api.post(
        "/api/sources",
        body=json.dumps(GOOD),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "has space"}, "key"),
        ({"key": "x" * 101}, "key"),
        ({"key": "ok", "attrs": []}, "attrs"),
        ({}, "key"),
    ],
)
def test_bad_domain_is_400(api, body, field):
    assert_error(api.post("/api/domains", body), 400, field)
    assert Domain.objects.count() == 0


def test_domain_with_other_attrs_is_409(api):
    assert api.post("/api/domains", {"key": "d", "attrs": {"a": 1}}).status_code == 201
    assert api.post("/api/domains", {"key": "d", "attrs": {"a": 1}}).status_code == 200
    assert_error(api.post("/api/domains", {"key": "d", "attrs": {"a": 2}}), 409)
    assert Domain.objects.get().attrs == {"a": 1}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/domains/nope", 404),
        ("/api/domains/nope/aggregates", 404),
        ("/api/domains/c-inputs/aggregates/nope", 404),
        ("/api/domains/c-inputs/aggregates/nope/versions", 404),
        ("/api/domains/nope/versions", 404),
        ("/api/domains/c-inputs/aggregates/2026-11-26?version=2", 404),
        ("/api/domains/c-inputs/aggregates/2026-11-26?version=0", 400),
        ("/api/domains/c-inputs/aggregates/2026-11-26?version=x", 400),
        ("/api/domains/c-inputs/aggregates?limit=0", 400),
        ("/api/domains/c-inputs/aggregates?limit=1001", 400),
        ("/api/domains/c-inputs/aggregates?cursor=garbage", 400),
        ("/api/domains/c-inputs/versions?after_position=-1", 400),
        ("/api/nothing-here", 404),
    ],
)
def test_bad_reads(api, domain, path, status):
    api.post("/api/sources", GOOD)
    assert_error(api.get(path), status)


def test_wrong_method_is_405_in_the_error_shape(api):
    assert_error(api.request("DELETE", "/api/sources"), 405)
    assert_error(api.request("PUT", "/api/domains"), 405)


def test_server_keeps_serving_after_bad_input(api, domain):
    api.post("/api/sources", body="[" * 100_000)
    api.post("/api/sources", body=json.dumps({**GOOD, "attrs": {"x": "\x00"}}))
    assert api.post("/api/sources", GOOD).status_code == 201
