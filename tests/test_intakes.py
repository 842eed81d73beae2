"""Intakes: publishers' own events (CloudEvents in binary, structured and batch
mode, S3 notifications, any JSON) registered as sources through a declared
mapping, each event answered alone; templates that cannot harm the server; the
preview that says what posting will register."""

import json
import threading
import time

import pytest

from aggregates.models import Source, Version
from aggregates.tokens import create_token
from tests.toolkit import ApiClient

INTAKES = "/api/domains/c-inputs/intakes"
BATCH = "application/cloudevents-batch+json"

# A CloudEvent of pipeline A, as its orchestrator would send it.
A_DONE = {
    "specversion": "1.0",
    "id": "run-41",
    "source": "//airflow/pipeline-a",
    "type": "com.example.pipeline.finished",
    "time": "2026-12-01T10:00:00Z",
    "data": {"partition": "2026-12-01", "path": "s3://lake/a/2026-12-01/part-0"},
}
BY_PARTITION = {
    "name": "pipeline-a",
    "aggregate": "{{ data.partition }}",
    "collection": "A",
    "attrs": {"path": "{{ data.path }}"},
}


def s3_record(key: str) -> dict:
    """One record of an S3 event notification (as S3 sends it: the key
    URL-encoded, so `=` is %3D)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2026-12-01T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": "lake", "arn": "arn:aws:s3:::lake"},
            "object": {"key": key, "size": 1024, "eTag": "0123abcd"},
        },
    }


S3_INTAKE = {
    "name": "s3",
    "each": "Records",
    "aggregate": "{{ item.s3.object.key | match('dt(?:=|%3D)([0-9-]{10})') }}",
    "collection": "{{ item.s3.object.key | match('^([^/]+)/') }}",
    "keys": {"object": "{{ item.s3.bucket.name }}/{{ item.s3.object.key }}"},
    "attrs": {"size": "{{ item.s3.object.size }}"},
}


def binary(api: ApiClient, event: dict, name="pipeline-a", **headers):
    """Post `event` in CloudEvents' binary mode: attributes as ce-* headers."""
    ce = {f"ce-{k}": v for k, v in event.items() if k != "data"}
    return api.request(
        "POST",
        f"{INTAKES}/{name}/events",
        body=json.dumps(event["data"]),
        content_type="application/json",
        headers={**ce, **headers},
    )


def events(api: ApiClient, body, content_type="application/json", name="pipeline-a"):
    return api.post(
        f"{INTAKES}/{name}/events",
        body=json.dumps(body) if not isinstance(body, bytes) else body,
        content_type=content_type,
    )


def statuses(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [result["status"] for result in response.json()["results"]]


@pytest.fixture
def intake(api, domain):
    response = api.post(INTAKES, BY_PARTITION)
    assert response.status_code == 201, response.text
    return response.json()


def test_binary_structured_and_batch_events_each_register_once(api, intake):
    first = binary(api, A_DONE)
    assert statuses(first) == [201]
    result = first.json()["results"][0]
    assert (result["aggregate"], result["collection"], result["version"]) == (
        "2026-12-01",
        "A",
        1,
    )
    assert statuses(binary(api, A_DONE)) == [200]  # redelivered: nothing new

    second = {**A_DONE, "id": "run-42", "data": {**A_DONE["data"], "path": "p2"}}
    structured = events(api, second, "application/cloudevents+json")
    assert statuses(structured) == [201]
    assert statuses(events(api, second, "application/cloudevents+json")) == [200]

    third = {**A_DONE, "id": "run-43", "data": {**A_DONE["data"], "path": "p3"}}
    batch = events(api, [second, third, A_DONE], "application/cloudevents-batch+json")
    assert statuses(batch) == [200, 201, 200]
    assert [r["version"] for r in batch.json()["results"]] == [2, 3, 1]

    state = api.get("/api/domains/c-inputs/aggregates/2026-12-01").json()
    assert state["version"] == 3
    sources = state["collections"]["A"]
    assert [s["keys"] for s in sources] == [
        {"ce_source": "//airflow/pipeline-a", "ce_id": f"run-{n}"} for n in (41, 42, 43)
    ]
    assert [s["attrs"]["path"] for s in sources] == [A_DONE["data"]["path"], "p2", "p3"]
    listed = api.get(INTAKES).json()["intakes"][0]
    assert (listed["accepted"], listed["refused"]) == (7, 0)


def test_the_same_event_posted_at_once_from_many_threads_registers_once(api, intake):
    answers: list[int] = []

    def post():
        answers.extend(statuses(binary(api, A_DONE)))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] * 7 + [201]
    assert Version.objects.count() == 1


def test_an_s3_notification_registers_each_record_and_refuses_the_one_without_a_date(
    api, domain
):
    assert api.post(INTAKES, S3_INTAKE).status_code == 201
    before = {outcome: _counted(outcome) for outcome in ("accepted", "refused")}
    notification = {
        "Records": [
            s3_record("a/dt%3D2026-12-01/part-0.parquet"),
            s3_record("a/_SUCCESS"),
            s3_record("b/dt%3D2026-12-01/part-0.parquet"),
        ]
    }
    response = events(api, notification, name="s3")
    assert statuses(response) == [201, 422, 201]
    refused = response.json()["results"][1]
    assert refused["error"] == "refused"
    assert list(refused["fields"]) == ["aggregate"]
    assert "'a/_SUCCESS'" in refused["detail"]
    state = api.get("/api/domains/c-inputs/aggregates/2026-12-01").json()
    assert {name: len(s) for name, s in state["collections"].items()} == {
        "a": 1,
        "b": 1,
    }
    assert state["collections"]["a"][0]["attrs"] == {"size": "1024"}
    assert Source.objects.count() == 2

    listed = api.get(f"{INTAKES}/s3").json()
    assert (listed["accepted"], listed["refused"]) == (2, 1)
    assert listed["last_refusal"].startswith("aggregate: ")
    assert _counted("accepted") - before["accepted"] == 2
    assert _counted("refused") - before["refused"] == 1


def _counted(outcome: str) -> float:
    """This process's botlnek_intake_events_total of c-inputs."""
    from prometheus_client import REGISTRY

    labels = {"domain": "c-inputs", "outcome": outcome}
    return REGISTRY.get_sample_value("botlnek_intake_events_total", labels) or 0


def test_one_events_conflict_takes_nothing_from_the_others(api, intake):
    assert statuses(binary(api, A_DONE)) == [201]
    changed = {**A_DONE, "data": {**A_DONE["data"], "path": "elsewhere"}}
    other = {**A_DONE, "id": "run-50"}
    batch = events(api, [changed, other], "application/cloudevents-batch+json")
    assert statuses(batch) == [409, 201]
    assert "different attrs" in batch.json()["results"][0]["detail"]
    assert Version.objects.count() == 2


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ data.partition ", "is not a template"),
        ("{{ data.partition | shout }}", "has no filter 'shout'"),
        ("{{ ''.__class__.__mro__ }}", "names starting with _"),
        ("{{ data['__globals__'] }}", "names starting with _"),
        ("{% for x in data %}{{ x }}{% endfor %}", "statements"),
        ("{{ data.p | match('(') }}", "not a pattern"),
        ("", "not empty"),
    ],
)
def test_templates_that_cannot_work_are_400_at_creation(api, domain, template, says):
    response = api.post(INTAKES, {**BY_PARTITION, "aggregate": template})
    assert response.status_code == 400, response.text
    assert response.json()["fields"].keys() == {"aggregate"}
    assert says in response.json()["fields"]["aggregate"]
    assert api.get(INTAKES).json()["intakes"] == []


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ data|attr('__class__') }}", "unsafe"),
        ("{{ data.nope | date }}", "no field 'nope' here"),
        ("{{ data.nope | match('x') }}", "no field 'nope' here"),
        ("{{ data.nope }}", "no field 'nope' here (there is partition, path, big)"),
        ("{{ range(10) }}", "'range' is not defined"),
        ("{{ data.partition.format(1) }}", "format() cannot be called"),
        ("{{ data.partition * 100000 }}", "at most 16384"),
        ("{{ '%99999999d' % 1 }}", "% formatting"),
        ("{{ 7 ** 100000 }}", "4096 bits"),
        ("{{ data.path | replace('', data.path * 100) }}", "at most 16384"),
        ("{{ data.path | join(data.path * 300) }}", "at most 16384"),
        ("{{ data.big }}", "renders 20000 characters"),
        ("{{ headers.authorization }}", "no field 'authorization'"),
        ("{{ headers['cookie'] }}", "no field 'cookie'"),
        ("{{ headers['proxy-authorization'] }}", "no field"),
    ],
)
def test_templates_that_reach_too_far_refuse_the_event_alone(
    api, domain, template, says
):
    definition = {**BY_PARTITION, "attrs": {"x": template}}
    assert api.post(INTAKES, definition).status_code == 201, template
    event = {**A_DONE, "data": {**A_DONE["data"], "big": "b" * 20_000}}
    response = binary(
        api, event, cookie="session=secret", **{"proxy-authorization": "Basic x"}
    )
    assert statuses(response) == [422]
    assert says in response.json()["results"][0]["fields"]["attrs.x"]
    assert Version.objects.count() == 0
    assert api.get("/livez").status_code == 200


def test_a_catastrophic_pattern_is_refused_within_a_bounded_time(api, domain):
    definition = {**BY_PARTITION, "aggregate": "{{ data.partition | match('(a+)+$') }}"}
    assert api.post(INTAKES, definition).status_code == 201
    event = {**A_DONE, "data": {"partition": "a" * 50_000 + "!"}}
    started = time.monotonic()
    response = binary(api, event)
    assert time.monotonic() - started < 5  # backtracking alone would take years
    assert statuses(response) == [422]
    assert "took more than 50 ms" in response.json()["results"][0]["detail"]


def test_the_dates_filter_reads_times_dates_and_unix_seconds_in_utc(api, domain):
    definition = {
        **BY_PARTITION,
        "aggregate": "{{ event.time | date }}",
        "keys": {"id": "{{ event.id }}"},
        "attrs": {
            "hour": "{{ data.at | date('%Y-%m-%dT%H') }}",
            "from_unix": "{{ data.unix | date }}",
            "day": "{{ data.day | date('%d %b %Y') }}",
        },
    }
    assert api.post(INTAKES, definition).status_code == 201
    event = {
        **A_DONE,
        "time": "2026-12-01T23:30:00-02:00",
        "data": {
            "at": "2026-12-01T10:59:59+01:00",
            "unix": 1764633600,
            "day": "20261201",
        },
    }
    response = events(api, event, "application/cloudevents+json")
    assert statuses(response) == [201]
    assert response.json()["results"][0]["aggregate"] == "2026-12-02"
    preview = api.post(
        f"{INTAKES}/preview",
        {"intake": definition, "body": event["data"], "headers": _ce_headers(event)},
    ).json()["results"][0]
    assert preview["attrs"] == {
        "hour": "2026-12-01T09",
        "from_unix": "2025-12-02",
        "day": "01 Dec 2026",
    }


def _ce_headers(event: dict) -> dict:
    return {f"ce-{k}": v for k, v in event.items() if k != "data"}


@pytest.mark.parametrize(
    ("sample", "name", "content_type", "headers"),
    [
        ("binary", "pipeline-a", "application/json", True),
        ("structured", "pipeline-a", "application/cloudevents+json", False),
        ("s3", "s3", "application/json", False),
    ],
)
def test_the_preview_is_what_posting_then_registers(
    api, domain, sample, name, content_type, headers
):
    definition = S3_INTAKE if name == "s3" else BY_PARTITION
    body = {
        "binary": A_DONE["data"],
        "structured": A_DONE,
        "s3": {"Records": [s3_record("a/dt=2026-12-01/x"), s3_record("a/none")]},
    }[sample]
    sent_headers = {"content-type": content_type}
    if headers:
        sent_headers |= _ce_headers(A_DONE)
    preview = api.post(
        f"{INTAKES}/preview",
        {"intake": definition, "body": body, "headers": sent_headers},
    )
    assert preview.status_code == 200, preview.text
    assert api.get(INTAKES).json()["intakes"] == []  # nothing saved
    assert Version.objects.count() == 0

    api.post(INTAKES, definition)
    posted = api.request(
        "POST",
        f"{INTAKES}/{name}/events",
        body=json.dumps(body),
        headers=sent_headers,
    ).json()["results"]
    predicted = preview.json()["results"]
    assert len(predicted) == len(posted)
    for guess, result in zip(predicted, posted, strict=True):
        if "status" in guess:
            assert result["status"] == guess["status"] == 422
            assert result["detail"] == guess["detail"]
            continue
        state = api.get(
            f"/api/domains/c-inputs/aggregates/{result['aggregate']}",
            version=result["version"],
        ).json()
        registered = next(
            s
            for s in state["collections"][result["collection"]]
            if s["version"] == result["version"]
        )
        assert (guess["domain"], guess["aggregate"], guess["collection"]) == (
            "c-inputs",
            result["aggregate"],
            result["collection"],
        )
        assert (guess["keys"], guess["attrs"]) == (
            registered["keys"],
            registered["attrs"],
        )


def test_the_preview_says_why_a_definition_is_refused(api, domain):
    response = api.post(
        f"{INTAKES}/preview",
        {"intake": {**BY_PARTITION, "collection": "{{ x | nope }}"}, "body": {}},
    )
    assert response.status_code == 400
    assert "intake.collection" in response.json()["fields"]


def test_plain_json_needs_keys_templates_and_each_needs_keys(api, domain):
    assert api.post(INTAKES, BY_PARTITION).status_code == 201
    response = events(api, A_DONE["data"])
    assert statuses(response) == [422]
    assert response.json()["results"][0]["fields"].keys() == {"keys"}

    keyed = {**BY_PARTITION, "name": "own-json", "keys": {"path": "{{ data.path }}"}}
    assert api.post(INTAKES, keyed).status_code == 201
    assert statuses(events(api, A_DONE["data"], name="own-json")) == [201]
    assert statuses(events(api, A_DONE["data"], name="own-json")) == [200]

    no_keys = {k: v for k, v in S3_INTAKE.items() if k != "keys"}
    response = api.post(INTAKES, no_keys)
    assert response.status_code == 400
    assert "keys is required with each" in response.json()["detail"]


def test_match_refuses_other_types_and_sources(api, domain):
    definition = {
        **BY_PARTITION,
        "match": {"type": "com.example.pipeline.*", "source": "//airflow/*"},
    }
    assert api.post(INTAKES, definition).status_code == 201
    assert statuses(binary(api, A_DONE)) == [201]
    other = {**A_DONE, "id": "x", "type": "com.example.pipeline-started"}
    response = binary(api, other)
    assert statuses(response) == [422]
    assert response.json()["results"][0]["fields"].keys() == {"match.type"}
    response = events(api, A_DONE["data"])  # plain JSON has no type
    assert statuses(response) == [422]


def test_bodies_that_are_no_events_are_400_and_invalid_events_422(api, intake):
    bad_json = events(api, b"{nope", "application/cloudevents+json")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"] == "invalid_json"
    not_a_list = events(api, A_DONE, "application/cloudevents-batch+json")
    assert not_a_list.status_code == 400
    assert events(api, b"hello", "text/plain").status_code == 415
    assert events(api, [], "application/cloudevents-batch+json").status_code == 400
    too_many = [{**A_DONE, "id": str(n)} for n in range(1001)]
    assert events(api, too_many, BATCH).status_code == 413

    missing_source = {k: v for k, v in A_DONE.items() if k != "source"}
    wrong_version = {**A_DONE, "id": "v", "specversion": "0.3"}
    batch = events(api, [missing_source, wrong_version, A_DONE], BATCH)
    assert statuses(batch) == [422, 422, 201]
    details = [r.get("detail", "") for r in batch.json()["results"]]
    assert "source" in details[0] and "specversion" in details[1]

    listed = api.get(f"{INTAKES}/pipeline-a").json()
    assert (listed["accepted"], listed["refused"]) == (1, 7)
    assert listed["last_refusal"].startswith("event: not a valid CloudEvent")


def test_binary_mode_takes_any_content_type(api, domain):
    definition = {
        **BY_PARTITION,
        "aggregate": "{{ event.subject }}",
        "attrs": {"text": "{{ data }}", "type": "{{ headers['content-type'] }}"},
    }
    assert api.post(INTAKES, definition).status_code == 201
    response = api.request(
        "POST",
        f"{INTAKES}/pipeline-a/events",
        body="a,b\n1,2",
        headers={**_ce_headers(A_DONE), "ce-subject": "2026-12-01"},
        content_type="text/csv",
    )
    assert statuses(response) == [201]
    state = api.get("/api/domains/c-inputs/aggregates/2026-12-01").json()
    assert state["collections"]["A"][0]["attrs"] == {
        "text": "a,b\n1,2",
        "type": "text/csv",
    }


def test_intakes_are_read_replaced_and_removed(api, intake):
    assert api.post(INTAKES, BY_PARTITION).status_code == 409
    assert api.post(INTAKES, {**BY_PARTITION, "name": "preview"}).status_code == 400
    assert statuses(binary(api, A_DONE)) == [201]

    changed = {**BY_PARTITION, "collection": "A2"}
    replaced = api.put(f"{INTAKES}/pipeline-a", changed)
    assert replaced.status_code == 200
    assert replaced.json()["collection"] == "A2"
    assert replaced.json()["accepted"] == 1  # counts stay
    later = {**A_DONE, "id": "run-99"}
    assert binary(api, later).json()["results"][0]["collection"] == "A2"
    renamed = api.put(f"{INTAKES}/pipeline-a", {**changed, "name": "other"})
    assert renamed.status_code == 409

    assert api.request("DELETE", f"{INTAKES}/pipeline-a").status_code == 204
    assert api.get(f"{INTAKES}/pipeline-a").status_code == 404
    assert binary(api, A_DONE).status_code == 404
    assert Version.objects.count() == 2  # what it registered stays
    assert api.get("/api/domains/nope/intakes").status_code == 404


def test_tokens_are_checked(api, intake, read_token):
    _, publish = create_token(name="pipeline-a", scope="publish", domains=["c-inputs"])
    publisher = ApiClient(publish)
    assert statuses(binary(publisher, A_DONE)) == [201]
    assert publisher.post(INTAKES, {**BY_PARTITION, "name": "x"}).status_code == 403
    reader = ApiClient(read_token)
    assert binary(reader, A_DONE).status_code == 403
    preview = reader.post(
        f"{INTAKES}/preview",
        {"intake": BY_PARTITION, "body": A_DONE, "headers": {}},
    )
    assert preview.status_code == 200
    assert reader.get(INTAKES).status_code == 200
    assert api.get(INTAKES, token=None).status_code == 401


def test_the_openapi_document_describes_intakes(api):
    document = api.get("/api/openapi.json").json()
    paths = document["paths"]
    assert {
        "/api/domains/{domain}/intakes",
        "/api/domains/{domain}/intakes/{intake}",
        "/api/domains/{domain}/intakes/{intake}/events",
        "/api/domains/{domain}/intakes/preview",
    } <= paths.keys()
    events_body = paths["/api/domains/{domain}/intakes/{intake}/events"]["post"]
    assert "application/cloudevents-batch+json" in events_body["requestBody"]["content"]


def test_each_lists_count_towards_one_requests_thousand_events(api, domain):
    assert api.post(INTAKES, S3_INTAKE).status_code == 201
    notification = {"Records": [s3_record(f"a/dt=2026-12-01/{n}") for n in range(600)]}
    twice = [
        {**A_DONE, "id": str(n), "data": notification} for n in range(2)
    ]  # 1,200 records in all
    response = events(api, twice, BATCH, name="s3")
    assert response.status_code == 413
    assert "at most 1000 events" in response.json()["detail"]
    assert Version.objects.count() == 0
    listed = api.get(f"{INTAKES}/s3").json()
    assert (listed["refused"], listed["last_refusal"][:13]) == (1, "the request: ")
