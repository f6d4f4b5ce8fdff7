"""One server feed over StringTransport on a fake clock: HELLO, credit, checksums and RESEND, fencing, reconnects."""

import base64

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from vod.client.feed import MAX_RESENDS, FeedState, ServerFeed
from vod.stream import protocol as p
from vod.strategy.mask import FrameMask

RUID = 42
FRAMES = 12
TOKEN = "v1." + "ab" * 32  # whatever the coordinator pushed; the feed only passes it on


class FakeNet:
    """Connection attempts wait here until the test accepts or refuses them."""

    def __init__(self):
        self.attempts = []

    def connect(self, host, port, factory):
        d = Deferred()
        self.attempts.append((f"{host}:{port}", factory, d))
        return d

    def accept(self):
        _, factory, d = self.attempts[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self):
        self.attempts[-1][2].errback(error.ConnectionRefusedError("refused"))


class Listener:
    def __init__(self):
        self.held = FrameMask(FRAMES)
        self.until = 4
        self.frames = []
        self.changes = []

    def held_mask(self):
        return self.held

    def credit(self):
        return self.until

    def frames_received(self, feed, messages):
        for message in messages:
            self.frames.append((message.index, message.payload))
            self.held = self.held | FrameMask.from_indices(FRAMES, [message.index])

    def feed_changed(self, feed):
        self.changes.append(feed.state)


def frame(index, revision=1, payload=None, corrupt=False):
    payload = payload if payload is not None else b"\xff\xd8frame%d\xff\xd9" % index
    digest = p.frame_digest(payload)
    if corrupt:
        payload = payload[:-1] + b"\x00"
    return p.encode_frame(RUID, revision, index, index * 100_000, payload, digest)


def sent(transport):
    """The control messages the client wrote, decoded; the transport is emptied."""
    out = p.ControlDecoder().feed(transport.value())
    transport.clear()
    return [(m.name, m.body) for m in out]


@pytest.fixture
def setup():
    clock, net, listener = Clock(), FakeNet(), Listener()
    mask = FrameMask.from_indices(FRAMES, range(0, FRAMES, 2))
    feed = ServerFeed(clock, "s1", "10.0.0.5:9000", RUID, "c1", listener, revision=1, mask=mask, token=TOKEN,
                      connector=net.connect, max_retries=2)
    return clock, net, listener, feed


def connected(setup):
    clock, net, listener, feed = setup
    feed.start()
    proto, transport = net.accept()
    return proto, transport


def test_hello_then_credit_then_frames(setup):
    clock, net, listener, feed = setup
    listener.held = FrameMask.from_indices(FRAMES, [0])
    proto, transport = connected(setup)
    assert net.attempts[0][0] == "10.0.0.5:9000"
    (hello, credit) = sent(transport)
    assert hello[0] == "HELLO" and hello[1]["ruid"] == RUID and hello[1]["client"] == "c1"
    assert hello[1]["mode"] == "play" and hello[1]["token"] == TOKEN
    assert FrameMask.from_bytes(base64.b64decode(hello[1]["held"])) == FrameMask.from_indices(FRAMES, [0])
    assert credit == ("CREDIT", {"until": 4})
    proto.dataReceived(frame(2) + frame(4)[:30])
    proto.dataReceived(frame(4)[30:])
    assert [i for i, _ in listener.frames] == [2, 4]
    assert feed.state is FeedState.STREAMING


def test_credit_is_sent_only_when_it_moves(setup):
    clock, net, listener, feed = setup
    feed.grant(10)  # not connected yet: nothing to send to
    proto, transport = connected(setup)
    transport.clear()
    feed.grant(4)
    feed.grant(8)
    feed.grant(8)
    assert sent(transport) == [("CREDIT", {"until": 8})]


def test_a_bad_checksum_is_dropped_and_asked_for_again_a_bounded_number_of_times(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    transport.clear()
    proto.dataReceived(frame(2, corrupt=True))
    assert listener.frames == []
    assert sent(transport) == [("RESEND", {"frames": [2]})]
    for _ in range(MAX_RESENDS):
        proto.dataReceived(frame(2, corrupt=True))
    assert sent(transport) == [("RESEND", {"frames": [2]})] * (MAX_RESENDS - 1)  # then no more asking
    proto.dataReceived(frame(2))
    assert [i for i, _ in listener.frames] == [2]
    assert feed.bad_frames == MAX_RESENDS + 1 and feed.resends == MAX_RESENDS


def test_frames_of_an_older_revision_are_fenced_then_asked_for_again(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    transport.clear()
    feed.update(2, FrameMask.from_indices(FRAMES, [2, 4, 6, 8]), "10.0.0.5:9000")
    proto.dataReceived(frame(2, revision=1) + frame(10, revision=1) + p.encode_end(RUID, 1, 6))
    assert listener.frames == [] and feed.stale_frames == 2
    assert feed.state is FeedState.STREAMING  # a stale END does not end the feed
    proto.dataReceived(frame(4, revision=2))
    # 2 is still this server's and missing; 10 went to another server
    assert sent(transport) == [("RESEND", {"frames": [2]})]
    assert [i for i, _ in listener.frames] == [4]
    proto.dataReceived(p.encode_end(RUID, 2, 4))
    assert feed.state is FeedState.ENDED and feed.done


def test_a_newer_revision_from_the_server_is_taken_as_the_newest(setup):
    clock, net, listener, feed = setup
    proto, _ = connected(setup)
    proto.dataReceived(frame(2, revision=3) + frame(4, revision=2))
    assert [i for i, _ in listener.frames] == [2] and feed.revision == 3


def test_a_dropped_connection_reconnects_and_resumes_from_the_held_mask(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    proto.dataReceived(frame(0) + frame(2))
    proto.connectionLost(Failure(error.ConnectionLost()))
    assert feed.state is FeedState.WAITING and len(net.attempts) == 1
    clock.advance(1)
    assert feed.state is FeedState.CONNECTING and len(net.attempts) == 2
    proto2, transport2 = net.accept()
    hello = sent(transport2)[0]
    assert FrameMask.from_bytes(base64.b64decode(hello[1]["held"])) == FrameMask.from_indices(FRAMES, [0, 2])
    proto.dataReceived(frame(4))  # the old connection is dead to us
    proto2.dataReceived(frame(6))
    assert [i for i, _ in listener.frames] == [0, 2, 6]
    assert feed.reconnects == 1


def test_a_server_error_reconnects_too(setup):
    clock, net, listener, feed = setup
    proto, _ = connected(setup)
    proto.dataReceived(p.encode_error(RUID, "unknown RUID"))
    assert feed.state is FeedState.WAITING and "unknown RUID" in feed.reason


def test_garbage_from_the_server_drops_the_connection(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    proto.dataReceived(b"HTTP/1.1 400 Bad Request\r\n" + bytes(64))
    assert feed.state is FeedState.WAITING and "protocol error" in feed.reason
    assert transport.disconnecting


def test_after_max_retries_without_a_good_frame_the_feed_gives_up(setup):
    clock, net, listener, feed = setup
    feed.start()
    for _ in range(2):
        net.refuse()
        assert feed.state is FeedState.WAITING
        clock.advance(2)
    net.refuse()
    assert feed.state is FeedState.FAILED and "gave up" in feed.reason
    assert listener.changes[-1] is FeedState.FAILED
    clock.advance(10)
    assert len(net.attempts) == 3


def test_after_end_the_server_may_send_more_on_the_same_connection(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    proto.dataReceived(frame(0) + p.encode_end(RUID, 1, 1))
    assert feed.state is FeedState.ENDED
    feed.update(2, FrameMask.from_indices(FRAMES, [0, 1]), "10.0.0.5:9000")
    assert feed.state is FeedState.ENDED and len(net.attempts) == 1  # the server sends by itself
    transport.clear()
    feed.grant(9)
    assert sent(transport) == [("CREDIT", {"until": 9})]  # the credit still moves after END
    proto.dataReceived(frame(1, revision=2))
    assert feed.state is FeedState.STREAMING and [i for i, _ in listener.frames] == [0, 1]
    proto.dataReceived(p.encode_end(RUID, 2, 1))
    assert feed.state is FeedState.ENDED


def test_a_new_revision_reconnects_to_a_server_that_closed_after_end(setup):
    clock, net, listener, feed = setup
    proto, _ = connected(setup)
    proto.dataReceived(frame(0) + p.encode_end(RUID, 1, 1))
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert feed.state is FeedState.ENDED
    feed.update(2, FrameMask.from_indices(FRAMES, [0, 1]), "10.0.0.5:9000")
    assert feed.state is FeedState.CONNECTING and len(net.attempts) == 2
    _, transport = net.accept()
    assert sent(transport)[0][0] == "HELLO"


def test_refetch_asks_with_resend_on_an_open_connection_and_reconnects_otherwise(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    proto.dataReceived(frame(0) + frame(4) + p.encode_end(RUID, 1, 2))
    transport.clear()
    feed.refetch()
    assert sent(transport) == [("RESEND", {"frames": [2, 6, 8, 10]})]
    proto.connectionLost(Failure(error.ConnectionDone()))
    feed.refetch()
    assert feed.state is FeedState.CONNECTING and len(net.attempts) == 2


def test_a_new_revision_owing_nothing_leaves_an_ended_feed_alone(setup):
    clock, net, listener, feed = setup
    proto, _ = connected(setup)
    proto.dataReceived(frame(0) + p.encode_end(RUID, 1, 1))
    feed.update(2, FrameMask.from_indices(FRAMES, [0]), "10.0.0.5:9000")
    assert feed.state is FeedState.ENDED and len(net.attempts) == 1


def test_a_server_that_moved_is_reconnected_at_its_new_address(setup):
    clock, net, listener, feed = setup
    connected(setup)
    feed.update(2, feed.mask, "10.0.0.9:9001")
    clock.advance(1)
    assert net.attempts[-1][0] == "10.0.0.9:9001"


def test_stop_says_stop_and_closes(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    transport.clear()
    feed.stop()
    assert sent(transport) == [("STOP", {})] and transport.disconnecting
    assert feed.state is FeedState.CLOSED
    proto.connectionLost(Failure(error.ConnectionDone()))
    clock.advance(10)
    assert len(net.attempts) == 1


def test_pause_and_resume_are_told_and_remembered_across_reconnects(setup):
    clock, net, listener, feed = setup
    proto, transport = connected(setup)
    transport.clear()
    feed.pause()
    assert sent(transport) == [("PAUSE", {})]
    proto.connectionLost(Failure(error.ConnectionLost()))
    clock.advance(1)
    _, transport2 = net.accept()
    assert [name for name, _ in sent(transport2)] == ["HELLO", "PAUSE", "CREDIT"]
    feed.resume()
    assert sent(transport2) == [("RESUME", {})]


def test_stopping_while_connecting_abandons_the_attempt(setup):
    clock, net, listener, feed = setup
    feed.start()
    feed.stop()
    assert feed.state is FeedState.CLOSED
    clock.advance(10)
    assert len(net.attempts) == 1


def test_the_good_frames_of_one_read_come_together_in_order_and_a_bad_one_is_asked_for_again(setup):
    clock, net, listener, feed = setup
    batches = []
    listener.frames_received = lambda feed, messages: batches.append([m.index for m in messages])
    proto, transport = connected(setup)
    sent(transport)
    proto.dataReceived(frame(0) + frame(2) + frame(4, corrupt=True) + frame(6))
    proto.dataReceived(frame(8)[:40])
    proto.dataReceived(frame(8)[40:] + p.encode_end(RUID, 1, 5))
    # One delivery per read, split where the bad frame was (everything before it is in when it is asked again).
    assert batches == [[0, 2], [6], [8]] and feed.bad_frames == 1
    assert sent(transport) == [("RESEND", {"frames": [4]})]
    assert feed.state is FeedState.ENDED
