"""`Idempotency-Key` on the writes that are not idempotent by nature (receipts,
rules, webhooks): a retry with the same key and body answers the first answer and
writes nothing; the same key with another body is a 422."""

import json
import threading
from datetime import timedelta

import httpx
import pytest

from aggregates.models import IdempotentRequest, Receipt, Rule, Webhook
from aggregates.tokens import create_token
from aggregates.webhooks.targets import AllowList
from tests.toolkit import ApiClient, post_source

RECEIPT = {
    "watcher": "run-c",
    "domain": "c-inputs",
    "aggregate": "2026-11-26",
    "version": 1,
    "outcome": "success",
}


def send(api: ApiClient, path: str, body: dict, key: str | bytes | None, token=...):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return api.request(
        "POST",
        path,
        token=token,
        body=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


@pytest.fixture
def aggregate(api, domain):
    assert post_source(api).status_code == 201


def test_a_retried_receipt_is_recorded_once_and_answered_the_same(api, aggregate):
    first = send(api, "/api/receipts", RECEIPT, "retry-1")
    again = send(api, "/api/receipts", RECEIPT, "retry-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert Receipt.objects.count() == 1
    # Without a key, a retry is another receipt, as before.
    send(api, "/api/receipts", RECEIPT, None)
    send(api, "/api/receipts", RECEIPT, None)
    assert Receipt.objects.count() == 3


def test_a_key_sent_with_another_request_is_refused(api, aggregate):
    assert send(api, "/api/receipts", RECEIPT, "k").status_code == 201
    other = send(api, "/api/receipts", {**RECEIPT, "outcome": "failure"}, "k")
    assert other.status_code == 422
    assert other.json()["error"] == "idempotency_key_reused"
    assert "Idempotency-Key" in other.json()["fields"]
    elsewhere = send(
        api, "/api/domains/c-inputs/rules", {"name": "r", "when": "A"}, "k"
    )
    assert elsewhere.status_code == 422  # the same key, another path
    assert Receipt.objects.count() == 1 and not Rule.objects.exists()


def test_keys_belong_to_their_token_and_a_day(api, aggregate):
    other = create_token(name="other", scope="write")[1]
    assert send(api, "/api/receipts", RECEIPT, "k").status_code == 201
    assert send(api, "/api/receipts", RECEIPT, "k", token=other).status_code == 201
    assert Receipt.objects.count() == 2
    IdempotentRequest.objects.update(
        created_at=IdempotentRequest.objects.get(token__name="writer").created_at
        - timedelta(hours=25)
    )
    assert "Idempotent-Replayed" not in send(api, "/api/receipts", RECEIPT, "k").headers
    assert Receipt.objects.count() == 3  # a day later, the key is new again


@pytest.mark.parametrize("key", ["", "x" * 256, "ключ".encode(), "a\tb"])
def test_a_bad_key_is_a_400_naming_the_header(api, aggregate, key):
    response = send(api, "/api/receipts", RECEIPT, key)
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "Idempotency-Key": "must be 1 to 255 printable ASCII characters"
    }
    assert not Receipt.objects.exists()


def test_rules_and_webhooks_are_created_once_per_key(api, domain, settings):
    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse("loopback")
    rule = {"name": "run-c", "when": "A >= 1"}
    first = send(api, "/api/domains/c-inputs/rules", rule, "rule-1")
    again = send(api, "/api/domains/c-inputs/rules", rule, "rule-1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert send(api, "/api/domains/c-inputs/rules", rule, None).status_code == 409
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["version"]}
    made = send(api, "/api/domains/c-inputs/webhooks", hook, "hook-1")
    remade = send(api, "/api/domains/c-inputs/webhooks", hook, "hook-1")
    assert made.status_code == remade.status_code == 201
    # The same webhook, and its secret: the retry needs it as much as the first.
    assert remade.json() == made.json() and made.json()["secret"].startswith("whsec_")
    assert Webhook.objects.count() == 1 and Rule.objects.count() == 1


@pytest.mark.parametrize(
    ("path", "body", "written"),
    [
        ("/api/receipts", RECEIPT, lambda: Receipt.objects.count()),
        (
            "/api/domains/c-inputs/rules",
            {"name": "run-c", "when": "A"},
            lambda: Rule.objects.count(),
        ),
    ],
)
def test_the_same_key_sent_at_once_from_many_threads_writes_once(
    start_server, token, path, body, written
):
    server = start_server()
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{server.url}/api/sources",
        json={"domain": "c-inputs", "aggregate": "2026-11-26", "collection": "A"},
        headers=headers,
    )
    assert created.status_code == 201
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)

    def retry() -> None:
        start.wait()
        answers.append(
            httpx.post(
                f"{server.url}{path}",
                json=body,
                headers={**headers, "Idempotency-Key": "burst"},
                timeout=30,
            )
        )

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # All answered the first answer: no 409 for the rule this very key made.
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.text for answer in answers}) == 1
    assert written() == 1
