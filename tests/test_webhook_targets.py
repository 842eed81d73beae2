"""Webhooks may not reach the server's own network, and no receiver holds up
another: the allow-list, the address a delivery connects to, the attempt's
deadline and answer size, fair shares of connections, and leases that outlast
every attempt.

Every address refused here is refused at creation, with nothing posted to its
domain, so no delivery is ever attempted; where a delivery runs, the resolver is
this test's own and every address it answers is a loopback one.
"""

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from aggregates.models import Domain, Lease, Webhook, WebhookDelivery
from aggregates.store import create_domain
from aggregates.webhooks import delivery, posting, targets
from aggregates.webhooks.delivery import Deliverer
from aggregates.webhooks.targets import AllowList, address_class
from aggregates.webhooks.write import new_secret
from tests.test_webhooks import Receiver
from tests.toolkit import fill, wait_for

HOOKS = "/api/domains/c-inputs/webhooks"
INTERNAL = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "169.254.169.254",
    "10.1.2.3",
    "192.168.0.10",
    "0.0.0.0",
    "2130706433",
    "0x7f.1",
    "[::ffff:127.0.0.1]",
]


def _ip(text: str):
    return ipaddress.ip_address(text)


class FakeResolver:
    """Answers from a table; records what it was asked."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int):
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [_ip(address) for address in self.table[host]]


@pytest.fixture
def resolver(monkeypatch):
    fake = FakeResolver({})
    monkeypatch.setattr(targets, "resolve", fake)
    return fake


def allow(settings, text: str) -> None:
    settings.BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse(text)


# The allow-list


def test_addresses_are_judged_by_what_they_reach():
    assert address_class(_ip("127.0.0.1")) == "loopback"
    assert address_class(_ip("::1")) == "loopback"
    assert address_class(_ip("::ffff:127.0.0.1")) == "loopback"
    assert address_class(_ip("64:ff9b::7f00:1")) == "loopback"  # NAT64
    assert address_class(_ip("2002:7f00:1::")) == "loopback"  # 6to4
    for private in ("10.1.2.3", "172.16.5.4", "192.168.0.10", "100.64.1.1"):
        assert address_class(_ip(private)) == "private", private
    for private in ("169.254.169.254", "fd00::1", "fe80::1", "::ffff:10.0.0.1"):
        assert address_class(_ip(private)) == "private", private
    for other in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "192.0.2.1"):
        assert address_class(_ip(other)) == "other", other
    assert address_class(_ip("93.184.215.14")) == "external"
    assert address_class(_ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) == "external"


def test_the_allow_list_takes_names_domains_addresses_networks_and_classes():
    default = AllowList.parse("")
    assert default.classes == {"external"} and default.text == "external"
    parsed = AllowList.parse(
        "hooks.internal, .example.com, 10.0.0.0/8, 192.168.1.7, [::1], private"
    )
    assert parsed.allows_name("hooks.internal") and parsed.allows_name(
        "HOOKS.internal."
    )
    assert parsed.allows_name("a.b.example.com") and parsed.allows_name("example.com")
    assert not parsed.allows_name("badexample.com")
    assert parsed.allows_address(_ip("10.9.9.9"))
    assert parsed.allows_address(_ip("192.168.1.7"))
    assert parsed.allows_address(_ip("::1"))
    assert parsed.allows_address(_ip("172.16.0.1"))  # the private class
    assert not parsed.allows_address(_ip("127.0.0.1"))
    assert not parsed.allows_address(_ip("93.184.215.14"))  # not external here
    everything = AllowList.parse("*")
    assert everything.allows_name("x") and everything.allows_address(_ip("0.0.0.0"))
    for bad in ("10.0.0.0/33", "exter nal", "http://x", "..com"):
        with pytest.raises(ImproperlyConfigured, match="BOTLNEK_WEBHOOK_ALLOWED_HOSTS"):
            AllowList.parse(bad)


@pytest.mark.parametrize("host", INTERNAL)
def test_internal_addresses_are_refused_by_default(api, domain, host):
    response = api.post(HOOKS, {"url": f"http://{host}/hook", "events": ["version"]})
    assert response.status_code == 400, response.text
    message = response.json()["fields"]["url"]
    assert "BOTLNEK_WEBHOOK_ALLOWED_HOSTS (external)" in message, message
    assert host.strip("[]") in message, message
    assert not Webhook.objects.exists()
    assert Domain.objects.get(key="c-inputs").latest_position == 0  # nothing posted


def test_a_host_is_allowed_only_if_every_address_is(api, domain, resolver):
    resolver.table = {
        "hooks.example.com": ["93.184.215.14"],
        "split.example.com": ["93.184.215.14", "10.0.0.7"],
    }
    created = api.post(
        HOOKS, {"url": "https://hooks.example.com/in", "events": ["version"]}
    )
    assert created.status_code == 201, created.text
    split = api.post(
        HOOKS, {"url": "https://split.example.com/", "events": ["version"]}
    )
    assert split.status_code == 400
    assert "resolves to 10.0.0.7 (private)" in split.json()["fields"]["url"]
    unknown = api.post(
        HOOKS, {"url": "https://nowhere.example/", "events": ["version"]}
    )
    assert unknown.status_code == 400
    assert "does not resolve" in unknown.json()["fields"]["url"]
    # A change of URL is checked the same way.
    path = f"{HOOKS}/{created.json()['id']}"
    moved = api.put(path, {"url": "http://169.254.169.254/latest/meta-data"})
    assert moved.status_code == 400
    assert api.get(path).json()["url"] == "https://hooks.example.com/in"
    assert Webhook.objects.count() == 1


def test_a_name_entry_allows_the_name_whatever_it_resolves_to(
    api, domain, resolver, settings
):
    allow(settings, "hooks.internal")
    resolver.table = {"hooks.internal": ["10.20.30.40"], "other.internal": ["10.0.0.1"]}
    ok = api.post(HOOKS, {"url": "http://hooks.internal/x", "events": ["version"]})
    assert ok.status_code == 201, ok.text
    refused = api.post(HOOKS, {"url": "http://other.internal/", "events": ["version"]})
    assert refused.status_code == 400
    assert "(hooks.internal)" in refused.json()["fields"]["url"]


def test_the_admin_refuses_what_the_api_refuses(admin_client, domain):
    form = {"domain": domain.pk, "url": "http://10.1.2.3/hook"}
    response = admin_client.post(
        "/admin/aggregates/webhook/add/",
        {**form, "events": ["version"], "rule": "", "description": ""},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "BOTLNEK_WEBHOOK_ALLOWED_HOSTS" in response.content.decode()
    assert not Webhook.objects.exists()


# Deliveries, in this process: a Deliverer as the delivery worker runs it.


@contextlib.contextmanager
def delivering(holder: str = "test-holder"):
    """A Deliverer, as the delivery worker runs it, on an event loop of its own
    in a thread of this process."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict = {}

    async def run() -> None:
        deliverer = found["deliverer"] = Deliverer(holder)
        stop = found["stop"] = asyncio.Event()
        running = asyncio.ensure_future(deliverer.run())
        ready.set()
        await stop.wait()
        await deliverer.stop(grace=5)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),))
    thread.start()
    ready.wait(10)
    try:
        yield found["deliverer"]
    finally:
        loop.call_soon_threadsafe(found["stop"].set)
        thread.join(20)
        loop.close()


def make_hook(domain: Domain, url: str) -> Webhook:
    return Webhook.objects.create(
        domain=domain,
        url=url,
        events=["version"],
        secret=new_secret(),
        cursor=Domain.objects.get(pk=domain.pk).latest_position,
    )


class Listener:
    """A TCP port on a loopback address that counts the connections made to it and
    never answers."""

    def __init__(self, host: str = "127.0.0.1", backlog: int = 512):
        self.sock = socket.create_server((host, 0), backlog=backlog)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open: list[socket.socket] = []
        self.sock.settimeout(0.1)
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = self.sock.accept()
                self.accepted += 1
                self.open.append(connection)  # held open, never answered

    def close(self) -> None:
        self.stopped.set()
        for connection in self.open:
            connection.close()
        self.sock.close()


def test_a_name_that_resolves_elsewhere_at_delivery_is_refused_unconnected(
    api, domain, resolver, settings
):
    allow(settings, "127.0.0.1")
    elsewhere = Listener("127.0.0.2")
    receiver = Receiver()
    try:
        url = f"http://hooks.test:{elsewhere.port}/hook"
        resolver.table = {"hooks.test": ["127.0.0.1"]}  # when it is created
        created = api.post(HOOKS, {"url": url, "events": ["version"]})
        assert created.status_code == 201, created.text
        resolver.table = {"hooks.test": ["127.0.0.2"]}  # then, rebound
        fill("2026-11-26", 1)

        with delivering():
            attempt = wait_for(WebhookDelivery.objects.first, 10, "an attempt")
        assert attempt.status_code is None
        assert "resolves to 127.0.0.2 (loopback)" in attempt.error, attempt.error
        assert "BOTLNEK_WEBHOOK_ALLOWED_HOSTS (127.0.0.1)" in attempt.error
        assert resolver.asked == ["hooks.test", "hooks.test"]  # once per attempt
        assert elsewhere.accepted == 0 and receiver.requests == []
        assert Webhook.objects.get().cursor == 0  # to be retried
    finally:
        elsewhere.close()
        receiver.stop()


def test_delivery_connects_to_the_checked_address_keeping_the_host(
    domain, resolver, settings
):
    allow(settings, "loopback")
    receiver = Receiver()
    try:
        resolver.table = {"hooks.test": ["127.0.0.1"]}
        make_hook(domain, f"http://hooks.test:{receiver.port}/hook")
        fill("2026-11-26", 2)

        with delivering():
            wait_for(lambda: len(receiver.requests) >= 2, 10, "two POSTs")
        hosts = {
            value
            for request in receiver.requests
            for name, value in request["headers"].items()
            if name.lower() == "host"
        }
        assert hosts == {f"hooks.test:{receiver.port}"}
        assert [b["position"] for b in receiver.bodies()] == [1, 2]
    finally:
        receiver.stop()


class Endless(BaseHTTPRequestHandler):
    """200 with a body that never ends: fast, or a byte at a time."""

    drip = False

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(b"x" if self.drip else b"x" * 65536)
                if self.drip:
                    self.wfile.flush()
                    time.sleep(0.2)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("drip", [False, True])
def test_an_attempt_reads_a_bounded_answer_within_its_deadline(
    domain, settings, monkeypatch, drip
):
    allow(settings, "loopback")
    monkeypatch.setattr(posting, "ATTEMPT_SECONDS", 1)
    handler = type("Handler", (Endless,), {"drip": drip})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        make_hook(domain, f"http://127.0.0.1:{server.server_address[1]}/hook")
        fill("2026-11-26", 1)

        with delivering():
            attempt = wait_for(WebhookDelivery.objects.first, 10, "an attempt")
        if drip:  # a byte every 0.2 s: the attempt's deadline ends it
            assert attempt.status_code is None
            assert attempt.error.startswith("TimeoutError: no whole answer within 1.")
            assert 1000 <= attempt.ms < 5000
        else:  # an endless answer: its first 64 KiB are read, then dropped
            assert (attempt.status_code, attempt.error) == (200, "")
            assert attempt.ms < 1000
    finally:
        server.shutdown()
        server.server_close()


def test_a_receiver_that_never_answers_holds_up_no_other_domain(
    domain, settings, monkeypatch
):
    """120 webhooks of four other domains call a receiver that never answers; a
    healthy webhook gets every event of its own within seconds."""
    allow(settings, "loopback")
    # The hanging attempts outlast the test: no tenant's turn frees up meanwhile.
    monkeypatch.setattr(posting, "ATTEMPT_SECONDS", 60)
    monkeypatch.setattr(delivery, "LEASE_SECONDS", 120)
    hanging = Listener()
    healthy = Receiver()
    try:
        for n in range(4):
            other = create_domain(f"tenant-{n}", {})[0]
            for _ in range(30):
                make_hook(other, f"http://127.0.0.1:{hanging.port}/never")
        make_hook(domain, healthy.url)
        for n in range(4):
            fill("2026-11-26", 1, domain=f"tenant-{n}")

        share = delivery.DOMAIN_CONNECTIONS
        with delivering():
            # Each tenant's share of the 120 is connected, and waiting.
            wait_for(lambda: hanging.accepted >= 4 * share, 20, "the tenants")
            started = time.monotonic()
            fill("2026-11-26", 5)
            wait_for(lambda: len(healthy.requests) >= 5, 10, "the healthy webhook")
            took, connected = time.monotonic() - started, hanging.accepted
        assert took < 5, took
        assert [b["position"] for b in healthy.bodies()] == [1, 2, 3, 4, 5]
        # Each tenant got its share at once, no more.
        assert connected == 4 * share
    finally:
        hanging.close()
        healthy.stop()


class Slow(Receiver):
    """Answers each POST after `seconds`, and notes how many were in flight."""

    def __init__(self, seconds: float):
        self.in_flight = self.most_in_flight = 0
        super().__init__()

        def answer(request):
            with self.lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            time.sleep(seconds)
            with self.lock:
                self.in_flight -= 1
            return 200

        self.answer = answer


@pytest.fixture
def short_leases(monkeypatch):
    monkeypatch.setattr(delivery, "LEASE_SECONDS", 4)
    monkeypatch.setattr(delivery, "RENEW_SECONDS", 0.5)
    monkeypatch.setattr(targets, "RESOLVE_SECONDS", 0.5)
    monkeypatch.setattr(posting, "ATTEMPT_SECONDS", 1)


def test_a_batch_longer_than_the_lease_keeps_it(domain, settings, short_leases):
    """Twenty events at 0.3 s each outlast a 4 s lease: it is renewed while the
    batch is in flight, so a second worker never sends them too."""
    allow(settings, "loopback")
    receiver = Slow(0.3)
    try:
        make_hook(domain, receiver.url)
        fill("2026-11-26", 20)

        with delivering("worker-a"), delivering("worker-b"):
            wait_for(lambda: len(receiver.requests) >= 20, 30, "20 events")
            time.sleep(1)  # anything sent twice would show now
        assert [b["position"] for b in receiver.bodies()] == list(range(1, 21))
        assert receiver.most_in_flight == 1
        holders = set(Lease.objects.values_list("holder", flat=True))
        assert holders <= {"worker-a", "worker-b"}
    finally:
        receiver.stop()


def test_a_lost_lease_stops_delivery_and_saves_nothing(domain, settings, short_leases):
    allow(settings, "loopback")
    receiver = Slow(0.2)
    try:
        webhook = make_hook(domain, receiver.url)
        fill("2026-11-26", 30)

        with delivering("worker-a"):
            wait_for(lambda: len(receiver.requests) >= 3, 10, "3 events")
            with transaction.atomic():  # another holder takes it over
                Lease.objects.filter(name=f"webhook:{webhook.pk}").update(
                    holder="thief", expires_at=timezone.now() + timedelta(minutes=5)
                )
                stolen_at = Webhook.objects.get().cursor
            sent = len(receiver.requests)
            time.sleep(2)
        # At most the attempt in flight and those before the next renewal.
        assert len(receiver.requests) <= sent + 4, (sent, len(receiver.requests))
        assert len(receiver.requests) < 30
        assert Webhook.objects.get().cursor == stolen_at
    finally:
        receiver.stop()
