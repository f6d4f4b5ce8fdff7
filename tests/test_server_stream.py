"""StreamConnection over in-memory transports (iosim, StringTransport) on a Clock: exact bytes, no sockets."""

from __future__ import annotations

import logging

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from vod.server.pacing import TokenBucket
from vod.server.session import State, Stripe
from vod.server.stream import CLOSE_GRACE, FRAMES_PER_TURN, StreamConnection, StreamFactory
from vod.strategy.mask import FrameMask
from vod.stream import protocol as p

from test_server_support import TOKENS, DataClient, check_frames, credit, hello, make_store

WAIT = 5.0


class FakeHost:
    """The server as a connection sees it: movies, the stripes it knows, who is open."""

    server_id = "s1"
    tokens = TOKENS

    def __init__(self, movies):
        self.movies = movies
        self.stripes: dict[int, Stripe] = {}
        self.open: list[StreamConnection] = []
        self.greetings: list[int] = []

    def movie(self, movie_id):
        return self.movies.get(movie_id)

    def opened(self, connection):
        self.open.append(connection)

    def greeted(self, connection):
        self.greetings.append(connection.session.ruid)
        if connection.session.ruid in self.stripes:
            connection.strategy(self.stripes[connection.session.ruid])

    def closed(self, connection):
        self.open.remove(connection)


@pytest.fixture
def movie(tmp_path):
    store = make_store(tmp_path / "store", {"m": 10, "long": 40})
    with store.open("m") as m, store.open("long") as long:
        yield m, long


@pytest.fixture
def host(movie):
    m, long = movie
    return FakeHost({"m": m, "long": long})


def stripe(text: str, revision: int = 1, movie: str = "m", ruid: int = 7) -> Stripe:
    return Stripe(ruid, revision, "c1", movie, len(text), FrameMask.from_text(text))


def connect(host, clock, bucket=None):
    server = StreamFactory(host, clock, clock, bucket, WAIT).buildProtocol(None)
    client = DataClient()
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
    return server, client, pump


# -- the normal course -----------------------------------------------------------------------------


def test_hello_and_credit_get_the_stripe_in_order_then_end(host, movie, caplog):
    caplog.set_level(logging.INFO, logger="vod.server.stream")
    clock = Clock()
    host.stripes[7] = stripe("1101111011")
    server, client, pump = connect(host, clock)
    client.send(hello(7, held=FrameMask.from_text("0100000001")), credit(100))
    pump.flush()
    assert client.kinds() == ["F0@1", "F3@1", "F4@1", "F5@1", "F6@1", "F8@1", "END@1"]
    assert client.messages[-1].index == 6 and client.messages[-1].ruid == 7  # END says how many frames went
    check_frames(client.messages, movie[0])
    assert not client.lost and server.session.state is State.COMPLETE  # open for a restripe or a RESEND
    client.send(p.encode_control(p.STOP))
    pump.flush()
    assert client.lost and host.open == [] and clock.getDelayedCalls() == []
    start, end = [r.getMessage() for r in caplog.records]
    assert start.startswith("stream start: RUID 7, client c1") and "6 of 8 frames to send (mode play)" in start
    assert end.startswith("stream end: RUID 7, client c1") and "6 frames" in end and end.endswith("stopped by the client")


def test_credit_bounds_what_goes(host):
    clock = Clock()
    host.stripes[7] = stripe("1111111111")
    _, client, pump = connect(host, clock)
    client.send(hello(7), credit(3))
    pump.flush()
    assert client.indices() == [0, 1, 2]
    client.send(credit(7))
    pump.flush()
    assert client.indices() == [0, 1, 2, 3, 4, 5, 6]


def test_resend_after_the_end(host, movie):
    clock = Clock()
    host.stripes[7] = stripe("0011000000")
    _, client, pump = connect(host, clock)
    client.send(hello(7), credit(10))
    pump.flush()
    client.send(p.encode_control(p.RESEND, {"frames": [3, 2, 9]}))  # 9 is not ours: ignored
    pump.flush()
    assert client.kinds() == ["F2@1", "F3@1", "END@1", "F2@1", "F3@1", "END@1"]
    assert client.messages[-1].index == 4
    check_frames(client.messages, movie[0])


def test_a_new_mask_mid_stream(host, movie):
    clock = Clock()
    host.stripes[7] = stripe("1010101010")
    server, client, pump = connect(host, clock)
    client.send(hello(7), credit(5))
    pump.flush()
    # A restripe: another server died; we keep 6 and 8, take over 5, 7, 9 (4 went already).
    server.strategy(stripe("0000111111", revision=2))
    client.send(credit(10))
    pump.flush()
    assert client.kinds() == ["F0@1", "F2@1", "F4@1", "F5@2", "F6@2", "F7@2", "F8@2", "F9@2", "END@2"]
    check_frames(client.messages, movie[0])


def test_a_hello_waits_for_its_strategy(host):
    clock = Clock()
    server, client, pump = connect(host, clock)
    client.send(hello(7), credit(10))
    pump.flush()
    assert client.messages == [] and server.session.state is State.WAITING_STRATEGY
    clock.advance(WAIT - 1)
    server.strategy(stripe("0000000011"))
    pump.flush()
    assert client.kinds() == ["F8@1", "F9@1", "END@1"]


def test_no_strategy_in_time_is_an_error_and_a_close(host, caplog):
    clock = Clock()
    _, client, pump = connect(host, clock)
    client.send(hello(7), credit(10))
    pump.flush()
    clock.advance(WAIT)
    pump.flush()
    assert client.errors() == ["no strategy of RUID 7 known to server s1 (waited 5 s)"]
    assert client.lost and clock.getDelayedCalls() == []
    (line,) = [r for r in caplog.records if r.name == "vod.server.stream"]
    assert line.levelno == logging.WARNING


def test_no_hello_in_time_is_an_error_and_a_close(host):
    clock = Clock()
    _, client, pump = connect(host, clock)
    clock.advance(WAIT)
    pump.flush()
    assert client.errors() == ["no HELLO within 5 s"] and client.lost


def test_a_movie_this_server_does_not_hold_is_an_error(host):
    clock = Clock()
    host.stripes[7] = stripe("11", movie="elsewhere")
    _, client, pump = connect(host, clock)
    client.send(hello(7), credit(10))
    pump.flush()
    assert client.errors() == ["server s1 does not hold movie elsewhere"] and client.lost


def test_a_stripe_whose_size_differs_from_the_movie_is_an_error(host):
    clock = Clock()
    host.stripes[7] = stripe("111")
    _, client, pump = connect(host, clock)
    client.send(hello(7), credit(10))
    pump.flush()
    assert client.errors() == ["the strategy gives movie m 3 frames; server s1 holds 10"]


def test_dissolved_closes_without_a_word(host):
    clock = Clock()
    host.stripes[7] = stripe("1111111111")
    server, client, pump = connect(host, clock)
    client.send(hello(7), credit(4))
    pump.flush()
    server.dissolved()
    pump.flush()
    assert client.indices() == [0, 1, 2, 3] and client.errors() == [] and client.lost


def test_the_client_going_away_ends_the_stream(host, caplog):
    caplog.set_level(logging.INFO, logger="vod.server.stream")
    clock = Clock()
    host.stripes[7] = stripe("1111111111")
    server, client, pump = connect(host, clock)
    client.send(hello(7), credit(4))
    pump.flush()
    client.transport.loseConnection()
    pump.flush()
    assert server.session.state is State.ENDED and host.open == [] and clock.getDelayedCalls() == []
    end = caplog.records[-1].getMessage()
    assert "4 frames" in end and end.endswith("client connection lost")


# -- malformed control ---------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage, reason", [
    (b"XX\x01\x01\x00\x00\x00\x00", "not a version-1 control message"),
    (p.CONTROL_HEADER.pack(b"VC", 1, p.CREDIT, 3) + b"{x}", "body is not JSON"),
    (p.encode_control(p.CREDIT, {"until": 3}), "CREDIT before HELLO"),
    (hello(7) + p.encode_control(p.CREDIT, {"until": "all"}), "'until' must be"),
])
def test_a_malformed_control_message_closes_the_connection_with_one_log_line(host, caplog, garbage, reason):
    clock = Clock()
    host.stripes[7] = stripe("1111111111")
    _, client, pump = connect(host, clock)
    client.send(garbage)
    pump.flush()
    (error,) = client.errors()
    assert error.startswith("malformed control message: ") and reason in error
    assert client.lost and host.open == [] and clock.getDelayedCalls() == []
    lines = [r for r in caplog.records if r.name.startswith("vod.server")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and reason in lines[0].getMessage()


# -- flow control --------------------------------------------------------------------------------------


class SlowTransport(StringTransport):
    """A transport with a small buffer: it pauses its producer when full, as a TCP transport does."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.high = 0  # most bytes ever buffered

    def write(self, data):
        super().write(data)
        self._check()

    def writeSequence(self, seq):
        super().writeSequence(seq)
        self._check()

    def _check(self):
        self.high = max(self.high, len(self.value()))
        if len(self.value()) > self.limit and self.producer is not None:
            self.producer.pauseProducing()

    def read_all(self) -> bytes:
        """The peer reads everything: the buffer drains and the producer may go on."""
        data = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


def test_a_slow_client_never_makes_the_server_buffer_more_than_a_frame_past_the_limit(host, movie):
    clock = Clock()
    host.stripes[7] = stripe("1" * 40, movie="long")
    server = StreamConnection(host, clock, clock, None, WAIT)
    transport = SlowTransport(limit=100)
    server.makeConnection(transport)
    assert transport.producer is server and transport.streaming
    server.dataReceived(hello(7) + credit(40))
    decoder, messages = p.FrameDecoder(), []
    for _ in range(200):
        clock.advance(0)
        data = transport.read_all()
        if not data and server.session.state is State.COMPLETE:
            break
        messages += decoder.feed(data)
    assert [m.index for m in messages if m.type == p.FRAME] == list(range(40))
    biggest = max(len(movie[1].frame(i)) for i in range(40)) + p.FRAME_HEADER.size
    assert transport.high <= 100 + biggest + p.FRAME_HEADER.size  # the last frame over the limit, and END
    check_frames(messages, movie[1])


def test_nothing_goes_while_the_transport_is_full(host):
    clock = Clock()
    host.stripes[7] = stripe("1111111111")
    server = StreamConnection(host, clock, clock, None, WAIT)
    transport = StringTransport()
    server.makeConnection(transport)
    server.pauseProducing()
    server.dataReceived(hello(7) + credit(10))
    clock.advance(1)
    assert transport.value() == b""
    server.resumeProducing()
    assert [m.index for m in p.FrameDecoder().feed(transport.value())] == list(range(10)) + [10]


def test_a_long_credit_is_written_a_few_frames_per_reactor_turn(host):
    clock = Clock()
    host.stripes[7] = stripe("1" * 40, movie="long")
    server = StreamConnection(host, clock, clock, None, WAIT)
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(hello(7) + credit(40))
    decoder = p.FrameDecoder()
    assert len(decoder.feed(transport.value())) == FRAMES_PER_TURN
    assert [call.getTime() for call in clock.getDelayedCalls()] == [0]  # the rest in a later turn
    transport.clear()
    clock.advance(0)  # (a Clock also runs the calls scheduled meanwhile: all the later turns)
    assert [m.index for m in decoder.feed(transport.value())] == list(range(FRAMES_PER_TURN, 40)) + [40]


def test_the_rate_limit_spaces_the_frames(host, movie):
    clock = Clock()
    rate, burst = 2000, 300
    host.stripes[7] = stripe("1" * 40, movie="long")
    _, client, pump = connect(host, clock, TokenBucket(rate, burst, clock))
    client.send(hello(7), credit(40))
    pump.flush()
    while not client.messages or client.messages[-1].type != p.END:
        clock.advance(0.01)
        pump.flush()
        frame_bytes = sum(p.FRAME_HEADER.size + len(m.payload) for m in client.frames())
        assert frame_bytes <= burst + rate * clock.seconds() + 1e-6
        assert clock.seconds() < 10
    total = sum(p.FRAME_HEADER.size + len(movie[1].frame(i)) for i in range(40))
    assert clock.seconds() == pytest.approx((total - burst) / rate, abs=0.02)
    assert client.indices() == list(range(40))


def test_close_gives_a_client_that_reads_nothing_a_grace_then_aborts(host):
    clock = Clock()
    host.stripes[7] = stripe("1" * 10)
    server = StreamConnection(host, clock, clock, None, WAIT)
    transport = StringTransport()
    aborted = []
    transport.abortConnection = lambda: aborted.append(True)
    server.makeConnection(transport)
    server.dataReceived(hello(7) + p.encode_control(p.STOP))
    assert transport.disconnecting and transport.producer is None  # unregistered, or it would never close
    clock.advance(CLOSE_GRACE - 0.01)
    assert aborted == []
    clock.advance(0.01)
    assert aborted == [True]
