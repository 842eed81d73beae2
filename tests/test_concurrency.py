"""Many writers at once, through real server processes: versions and positions stay
gapless, each source is stored once, retries answer 200 with the original version,
and a reader never sees a position before all earlier ones are visible."""

import random
import threading
from collections import defaultdict

import httpx
import pytest

from aggregates.models import Domain, Source, Version
from aggregates.tokens import create_token

THREADS = 8
PER_THREAD = 40  # 320 distinct sources


def run_writers(urls: list[str], token: str) -> tuple[dict, list]:
    """Post from THREADS threads across servers; return answers by identity."""
    headers = {"Authorization": f"Bearer {token}"}
    answers: dict[tuple, list[dict]] = defaultdict(list)
    failures: list = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS + 1)

    def writer(n: int) -> None:
        rng = random.Random(n)
        client = httpx.Client(base_url=urls[n % len(urls)], headers=headers, timeout=60)
        start.wait()
        for i in range(PER_THREAD):
            aggregate = "shared" if i % 2 == 0 else f"own-{n}"
            body = {
                "domain": "conc",
                "aggregate": aggregate,
                "collection": rng.choice("AB"),
                "keys": {"writer": str(n), "i": str(i)},
                "attrs": {"i": i},
            }
            identity = (aggregate, body["collection"], n, i)
            tries = 2 if i % 5 == 0 else 1  # some publishers retry
            for _ in range(tries):
                response = client.post("/api/sources", json=body)
                with lock:
                    if response.status_code in (200, 201):
                        answers[identity].append(
                            {"status": response.status_code, **response.json()}
                        )
                    else:
                        failures.append((response.status_code, response.text))
        client.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(THREADS)]
    reader_gaps: list = []
    done = threading.Event()

    def reader() -> None:
        # Guarantee 3: having seen position P means every position <= P is visible.
        client = httpx.Client(base_url=urls[-1], headers=headers, timeout=60)
        last = 0
        while not done.is_set():
            body = client.get(
                "/api/domains/conc/versions", params={"after_position": last}
            ).json()
            for frame in body["versions"]:
                if frame["position"] != last + 1:
                    reader_gaps.append((last, frame["position"]))
                last = frame["position"]
        client.close()

    watcher = threading.Thread(target=reader)
    for thread in [*threads, watcher]:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert failures == []
    assert reader_gaps == []
    return answers, failures


def assert_invariants(answers: dict) -> None:
    total = THREADS * PER_THREAD
    domain = Domain.objects.get(key="conc")
    assert domain.latest_position == total
    assert domain.aggregate_count == THREADS + 1

    positions = list(
        Version.objects.filter(domain=domain)
        .order_by("position")
        .values_list("position", "at")
    )
    assert [p for p, _ in positions] == list(range(1, total + 1))
    ats = [at for _, at in positions]
    assert ats == sorted(ats)  # commit order and position order agree

    by_aggregate = defaultdict(list)
    for aggregate, number in Version.objects.values_list("aggregate__key", "number"):
        by_aggregate[aggregate].append(number)
    for numbers in by_aggregate.values():
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert len(by_aggregate["shared"]) == THREADS * PER_THREAD // 2

    assert Source.objects.count() == total == len(answers)
    for replies in answers.values():
        created = [r for r in replies if r["created"]]
        assert len(created) == 1 and created[0]["status"] == 201
        for retry in replies[1:]:
            assert retry["status"] == 200
            assert (retry["version"], retry["position"]) == (
                created[0]["version"],
                created[0]["position"],
            )


@pytest.fixture
def conc_token(transactional_db):
    Domain.objects.create(key="conc")
    return create_token(name="conc", scope="write")[1]


def test_concurrent_writers_one_server(start_server, conc_token):
    server = start_server()
    answers, _ = run_writers([server.url], conc_token)
    assert_invariants(answers)


@pytest.mark.postgres
def test_concurrent_writers_two_server_processes(start_server, conc_token):
    servers = [start_server(), start_server()]
    answers, _ = run_writers([s.url for s in servers], conc_token)
    assert_invariants(answers)
