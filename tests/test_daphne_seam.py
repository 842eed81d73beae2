"""The daphne seam (aggregates.daphne_transport) against the real classes of the
installed daphne, autobahn and Twisted: if an upgrade moves what it reaches into,
these fail here rather than the server running without a bound on slow readers.
(tests/test_live.py shows the same seam end to end: a stalled reader closed with
1013 and a reason.)"""

import functools
import subprocess
import sys

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel

from aggregates.daphne_transport import (
    HttpStream,
    SeamError,
    attach,
    drain_before_stopping,
    finish_when_stopped,
    when_running,
)


@pytest.fixture
def daphne():
    """daphne's server and a websocket protocol built by its own factory, as it
    hands them over after upgrading an HTTP connection."""
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory

    server = Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    factory = WebSocketFactory(server, server="daphne")
    factory.setProtocolOptions(maxMessagePayloadSize=1024 * 1024)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
    transport = StringTransport()
    transport.registerProducer(HTTPChannel(), True)  # what the upgrade leaves
    protocol.makeConnection(transport)
    return server, protocol, transport


def test_the_seam_attaches_to_daphnes_send(daphne):
    server, protocol, transport = daphne
    pressure = attach(functools.partial(server.handle_reply, protocol))

    assert transport.producer is pressure  # the HTTP channel's place, taken
    assert pressure.max_message_size == 1024 * 1024
    transport.producer.pauseProducing()  # Twisted: the socket's buffer is full
    assert pressure.paused
    transport.producer.resumeProducing()
    assert not pressure.paused

    protocol.state = protocol.STATE_OPEN
    reason = "too many pending frames; resume"
    assert pressure.close(1013, reason)
    # A close frame (FIN + opcode 8, payload length), then the code and the reason.
    frame = bytes([0x88, 2 + len(reason)]) + (1013).to_bytes(2, "big")
    assert transport.value().endswith(frame + reason.encode())


def test_a_daphne_without_what_the_seam_needs_fails_loudly(daphne):
    server = daphne[0]

    class Changed:  # a websocket protocol of some other daphne or autobahn
        transport = StringTransport()

    with pytest.raises(SeamError, match="sendCloseFrame"):
        attach(functools.partial(server.handle_reply, Changed()))


def test_another_servers_send_needs_no_seam():
    async def send(message):
        pass

    pressure = attach(send)
    assert not pressure.paused and pressure.max_message_size == 0
    assert not pressure.close(1013, "reason")  # the caller closes through ASGI


def test_a_streamed_http_response_attaches_to_daphnes_request():
    """An event stream's connection: daphne's WebRequest over Twisted's channel
    pauses it when the socket's buffer is full, and it can drop the connection."""
    from daphne.http_protocol import HTTPFactory, WebRequest
    from daphne.server import Server

    server = Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}
    channel = HTTPChannel()  # as daphne's HTTPFactory builds it, unwrapped
    channel.factory = HTTPFactory(server)
    transport = StringTransport()
    channel.makeConnection(transport)
    request = WebRequest(channel)
    stream = HttpStream(functools.partial(server.handle_reply, request))
    stream.attach()
    assert request.producer is not None
    channel.pauseProducing()  # Twisted: the socket's buffer is full
    assert stream.paused
    channel.resumeProducing()
    assert not stream.paused
    done = []
    stream.when_done(lambda: done.append(True))
    stream.detach()
    assert request.producer is None and done == [True]
    stream.attach()
    assert stream.abort() and transport.disconnecting
    # The client gone: Twisted drops the request's channel. Letting go still
    # works, and still calls back (the stream's slot and subscription).
    stream.when_done(lambda: done.append("again"))
    request.channel = None
    stream.detach()
    assert request.producer is None and done == [True, "again"]


def test_an_http_request_without_what_the_seam_needs_fails_loudly(daphne):
    server = daphne[0]

    class Changed:  # a request of some other daphne or Twisted
        channel = None

    with pytest.raises(SeamError, match="registerProducer"):
        HttpStream(functools.partial(server.handle_reply, Changed())).attach()


def test_stopping_drains_before_daphne_cancels_what_runs(daphne):
    """daphne's shutdown trigger (kill_all_applications) is replaced by one that
    drains first; a daphne that registers it otherwise fails loudly."""
    from twisted.internet import reactor

    server, protocol, _ = daphne
    send = functools.partial(server.handle_reply, protocol)
    with pytest.raises(SeamError, match="kill_all_applications"):
        drain_before_stopping(send, lambda: None)  # daphne's run() registers it
    # (This process's reactor never runs: the triggers added here never fire.)
    reactor.addSystemEventTrigger("before", "shutdown", server.kill_all_applications)
    assert drain_before_stopping(send, lambda: None)
    with pytest.raises(ValueError):  # taken out, as the seam says
        reactor.removeSystemEventTrigger(
            ("shutdown", ("before", server.kill_all_applications, (), {}))
        )


LIFECYCLE = """
import sys
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import reactor
from aggregates import daphne_transport

assert daphne_transport.when_running(print) is False  # no daphne: nothing to tie to
import daphne.server  # noqa: F401  (serving under daphne imports it)
daphne_transport.EXIT_AT_ONCE = "--exit" in sys.argv

def running():
    print("running", flush=True)
    reactor.stop()

assert daphne_transport.when_running(running)
assert daphne_transport.finish_when_stopped(lambda: print("finished", flush=True))
reactor.run()
print("exited the usual way", flush=True)
"""


@pytest.mark.parametrize("exit_at_once", [False, True])
def test_the_lifecycle_hooks_run_on_daphnes_reactor(exit_at_once):
    """A real reactor, as daphne runs it: the background work starts once it runs,
    the database work finishes once it stopped, and where CPython needs it the
    process then ends at once."""
    args = [sys.executable, "-c", LIFECYCLE, *(["--exit"] if exit_at_once else [])]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    expected = ["running", "finished"]
    if not exit_at_once:
        expected += ["exited", "the", "usual", "way"]
    assert lines == expected


def test_a_reactor_without_the_lifecycle_hooks_fails_loudly(monkeypatch):
    """Under daphne, a reactor lacking what the lifecycle seam uses raises instead
    of leaving the rules clock and the delivery worker unstarted."""

    class OldReactor:
        def addSystemEventTrigger(self, *args): ...

    monkeypatch.setitem(sys.modules, "daphne.server", object())
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", OldReactor())
    with pytest.raises(SeamError, match="callWhenRunning"):
        when_running(lambda: None)
    with pytest.raises(SeamError, match="getReaders"):
        finish_when_stopped(lambda: None)
