"""Rate limits and size limits at the coordinator (vod/coordinator/limits.py, MemberSession), on a Clock.

Sessions run on a StringTransport against a real CoordinatorReplica over the fake Raft log, so a
refusal can be checked to cost no log entry.
"""

import base64

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from fakes import FakeRaft
from vod.coordinator import limits
from vod.coordinator import requests as rq
from vod.coordinator.replica import CoordinatorReplica
from vod.coordinator.session import MAX_BOX_BYTES, MemberSession
from vod.groups import commands as cmds
from vod.groups.probe import decode_error, encode_box, parse_box
from vod.groups.wire import (PROTOCOL_VERSION, Authenticate, CDone, Challenge, Join, OpenRequest, Progress, Refused,
                             Status, auth_mac)
from vod.strategy.mask import FrameMask

SECRET = b"s" * 32
PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
FRAMES = 10


# -- the limiters alone ------------------------------------------------------------------------------


def test_commands_beyond_the_burst_are_refused_until_the_bucket_refills():
    clock = Clock()
    limit = limits.CommandLimit(200, clock, close_after=1000)
    assert [limit.check() for _ in range(400)] == [limits.ALLOW] * 400  # the burst: twice the rate
    assert limit.check() == limits.REFUSE
    clock.advance(0.5)
    assert [limit.check() for _ in range(100)] == [limits.ALLOW] * 100
    assert limit.check() == limits.REFUSE
    assert "more than 200 commands per second" in limit.refusal()


def test_heartbeats_never_come_near_the_default_limit():
    clock = Clock()
    limit = limits.CommandLimit(limits.COMMAND_RATE, clock)
    for _ in range(50 * 60):  # a minute of a member heartbeating 5/s and 45 more commands a second
        clock.advance(0.02)
        assert limit.check() == limits.ALLOW


def test_a_connection_that_keeps_going_is_closed_and_one_let_through_forgives():
    clock = Clock()
    limit = limits.CommandLimit(10, clock, burst=1, close_after=3)
    assert limit.check() == limits.ALLOW
    assert [limit.check(), limit.check()] == [limits.REFUSE, limits.REFUSE]
    clock.advance(0.1)
    assert limit.check() == limits.ALLOW and limit.strikes == 0
    assert [limit.check() for _ in range(3)] == [limits.REFUSE, limits.REFUSE, limits.CLOSE]


def test_connection_attempts_are_limited_per_host_with_one_first_refusal_per_run():
    clock = Clock()
    limit = limits.ConnectionLimit(5, clock)
    assert [limit.check("10.0.0.1") for _ in range(10)] == [limits.ALLOW] * 10
    assert [limit.check("10.0.0.1") for _ in range(3)] == [limits.FIRST_REFUSAL, limits.REFUSE, limits.REFUSE]
    assert limit.check("10.0.0.2") == limits.ALLOW  # another host has its own allowance
    clock.advance(0.2)
    assert limit.check("10.0.0.1") == limits.ALLOW
    assert limit.check("10.0.0.1") == limits.FIRST_REFUSAL  # a new run: worth a new log line


def test_idle_hosts_are_forgotten_so_many_hosts_cost_bounded_memory():
    clock = Clock()
    limit = limits.ConnectionLimit(5, clock, max_hosts=8)
    for i in range(100):
        limit.check(f"10.0.0.{i}")
        clock.advance(1)
    assert limit.hosts <= 8
    for i in range(100):  # all at once, none idle: the oldest go
        limit.check(f"10.1.0.{i}")
    assert limit.hosts <= 8


def test_the_factory_closes_connections_over_the_limit_and_logs_each_run_once():
    refused = []
    factory = limits.LimitedFactory(Protocol, limits.ConnectionLimit(1, Clock()), refused.append)
    built = [factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 4000 + i)) for i in range(5)]
    assert [p is not None for p in built] == [True, True, False, False, False]
    assert refused == ["10.0.0.9"]
    # Local-socket peers have no host: they share one allowance.
    assert limits.peer_host(UNIXAddress(None)) == "local"
    assert limits.LimitedFactory(Protocol, None).buildProtocol(UNIXAddress(None)) is not None


# -- in a member session -----------------------------------------------------------------------------


def make_replica(**kwargs) -> CoordinatorReplica:
    clock = Clock()
    r = CoordinatorReplica(clock, replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                           secret=SECRET, data_dir=None, raft_factory=FakeRaft, **kwargs)
    r.raft.set_leader(term=3)
    r._check()
    return r


class TcpStringTransport(StringTransport):
    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


class Wire:
    """A MemberSession on a StringTransport, spoken to box by box."""

    def __init__(self, replica: CoordinatorReplica):
        self.session = MemberSession(replica)
        self.transport = TcpStringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        self.session.makeConnection(self.transport)
        self._tag = 0
        self._read = b""

    def send(self, command, **arguments) -> bytes:
        self._tag += 1
        tag = str(self._tag).encode()
        box = command.makeArguments(arguments, None)
        box[amp.COMMAND], box[amp.ASK] = command.commandName, tag
        self.session.dataReceived(encode_box(box))
        return tag

    def answer(self, command, tag: bytes) -> dict:
        """The answer to `tag` (pushes skipped); its declared error raised."""
        self._read += self.transport.value()
        self.transport.clear()
        while True:
            box, used = parse_box(self._read)
            assert box is not None, f"no answer to {command.__name__} {tag!r}"
            self._read = self._read[used:]
            if box.get(amp.ANSWER) == tag:
                return command.parseResponse(box, None)
            if box.get(amp.ERROR) == tag:
                raise decode_error(command, box)

    def call(self, command, **arguments) -> dict:
        return self.answer(command, self.send(command, **arguments))

    def authenticate(self, member_id="m1") -> "Wire":
        nonce = self.call(Challenge, protocol=PROTOCOL_VERSION)["nonce"]
        self.call(Authenticate, member_id=member_id, mac=auth_mac(SECRET, nonce, member_id))
        return self

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


def session_lines(caplog) -> list[str]:
    return [r.message for r in caplog.records if r.name == "vod.coordinator.session"]


def test_a_flooding_connection_is_refused_then_closed_and_others_are_untouched(caplog):
    replica = make_replica(command_rate=5)
    flood, calm = Wire(replica).authenticate("flood"), Wire(replica).authenticate("calm")
    answers = []
    for _ in range(8):  # burst 10: two went on authenticating, eight more pass
        answers.append(flood.call(Status)["status"]["replica"]["id"])
    assert answers == ["c1"] * 8
    with pytest.raises(Refused, match="rate limit: more than 5 commands per second"):
        flood.call(Status)
    assert not flood.closed
    for _ in range(limits.STRIKES_BEFORE_CLOSE - 2):
        flood.send(Status)
    assert not flood.closed
    caplog.clear()
    with pytest.raises(Refused):
        flood.call(Status)
    assert flood.closed
    assert session_lines(caplog) == [
        f"closing connection from 10.0.0.7:5555 (flood): {limits.STRIKES_BEFORE_CLOSE} commands in a row over "
        "the rate limit"]
    assert calm.call(Status)["status"]["replica"]["id"] == "c1" and not calm.closed


def test_no_command_limit_when_it_is_off():
    wire = Wire(make_replica(command_rate=0)).authenticate()
    for _ in range(3000):
        wire.send(Status)
    assert not wire.closed and wire.session._commands is None


def test_a_box_larger_than_the_limit_closes_the_connection_unrun(caplog):
    wire = Wire(make_replica())
    box = amp.AmpBox({amp.COMMAND: Challenge.commandName, amp.ASK: b"1", b"protocol": b"1"})
    for i in range(MAX_BOX_BYTES // 60_000 + 1):
        box[f"padding{i}".encode()] = b"x" * 60_000
    wire.session.dataReceived(box.serialize())
    assert wire.closed and wire.transport.value() == b""  # not even the Challenge was answered
    assert session_lines(caplog) == [
        f"closing connection from 10.0.0.7:5555 (unauthenticated): an AMP box of more than {MAX_BOX_BYTES} bytes"]


# -- masks no larger than the movie ------------------------------------------------------------------


def text(mask: FrameMask) -> str:
    return base64.b64encode(mask.to_bytes()).decode()


@pytest.fixture
def client():
    """A joined client of a replica that knows movie m (FRAMES frames) but has no server for it."""
    replica = make_replica()
    replica.raft.propose(cmds.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": FRAMES, "fps": 10, "width": 8,
                                                              "height": 8}))
    wire = Wire(replica).authenticate("viewer-1")
    wire.call(Join, kind="client", domain="d", address="127.0.0.1:9", user="", capacity=0, movies=[])
    return wire


def applied(wire: Wire) -> int:
    return wire.session.replica.machine.state.last_applied


@pytest.mark.parametrize("mask", [FrameMask.full(FRAMES + 1), FrameMask.full(1_000_000)])
def test_a_wanted_mask_longer_than_the_movie_is_refused_before_it_is_logged(client, mask):
    before = applied(client)
    with pytest.raises(Refused, match=f"wanted mask covers {len(mask)} frames; the movie has {FRAMES}"):
        client.call(OpenRequest, request_id="r1", movie="m", wanted=text(mask))
    assert applied(client) == before and not client.closed


def test_held_masks_longer_than_the_movie_are_refused_in_progress_and_cdone(client):
    with pytest.raises(Refused, match="no live server"):  # admitted, then failed: no server holds m
        client.call(OpenRequest, request_id="r1", movie="m", wanted=text(FrameMask.full(FRAMES)))
    ruid = client.session.replica.machine.requests.requests()[0]["ruid"]
    before = applied(client)
    too_long = text(FrameMask.full(5 * FRAMES))
    for command in (Progress, CDone):
        with pytest.raises(Refused, match=f"held mask covers {5 * FRAMES} frames; the movie has {FRAMES}"):
            client.call(command, ruid=ruid, held=too_long)
    assert applied(client) == before and not client.closed
