"""Fuzzing the control plane (issue 8): a coordinator's MemberSession fed random and damaged AMP boxes, and
the `Json` argument type of vod/groups/wire.py.

Each example builds a replica on a FakeRaft (as tests/test_coordinator_replica.py does), brings one
StringTransport-backed session to some phase (fresh, authenticated, joined as a client or a server) and
feeds it garbage: unknown commands, known ones with garbage or missing or oversized values, answers to
questions never asked, boxes without a question, raw damaged bytes, commands before authentication. The
session must answer with an AMP error or close that one connection with exactly one log line; nothing may
escape into the reactor (no exception, no Twisted failure log); and afterwards another member still joins.
(A connection the replica closes for a legitimate reason, after a Leave, needs no line.)
"""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from hypothesis import example, given, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from fakes import FakeRaft
from fuzzing import LogCatcher, allocation_peak, chunk_sizes, chunked, fuzz, mutated
from vod.coordinator.replica import CoordinatorReplica
from vod.coordinator.session import MemberSession
from vod.groups import wire
from vod.strategy.mask import FrameMask

SECRET = b"s" * 32
PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
FRAMES = 12
COMMANDS = sorted((c for c in vars(wire).values()
                   if isinstance(c, type) and issubclass(c, amp.Command) and c is not amp.Command),
                  key=lambda c: c.commandName)
BY_NAME = {c.commandName: c for c in COMMANDS}


def bomb(unit: bytes) -> bytes:
    """A Json value that inflates to just under MAX_EXPANDED: `unit` repeated inside a JSON list."""
    text = b"[" + unit * ((wire.MAX_EXPANDED - 2) // len(unit) - 1) + unit.rstrip(b",") + b"]"
    return wire.ZLIB_MARKER + zlib.compress(text, 9)


EMPTY_OBJECTS = bomb(b"{},")  # ~16 KB on the wire; ~450 MB of Python objects once parsed
DEEP = wire.ZLIB_MARKER + zlib.compress(b"[" * 200_000 + b"]" * 200_000, 9)
OVER = wire.ZLIB_MARKER + zlib.compress(b"0" * (wire.MAX_EXPANDED + 1000), 9)  # expands past the limit


# -- a session on a StringTransport -----------------------------------------------------------------------


class TcpStringTransport(StringTransport):
    """What a session needs of a TCP transport that StringTransport lacks or does differently."""

    def setTcpNoDelay(self, enabled):
        pass

    def pauseProducing(self):
        if not self.disconnecting:  # a closing TCP transport just stops reading; StringTransport raises
            super().pauseProducing()


def make_replica() -> CoordinatorReplica:
    replica = CoordinatorReplica(Clock(), replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                                 secret=SECRET, data_dir=None, failure_timeout=1.0, grace=2.0, raft_factory=FakeRaft)
    replica.raft.set_leader(term=3)
    replica._check()
    return replica


class Peer:
    """One member connection, seen from the member's side of a StringTransport."""

    def __init__(self, replica: CoordinatorReplica):
        self.session = MemberSession(replica)
        self.transport = TcpStringTransport()
        self.session.makeConnection(self.transport)
        self._tag = 0
        self._read = 0

    def send(self, data: bytes) -> None:
        self.session.dataReceived(data)

    def replies(self) -> list[amp.AmpBox]:
        """The boxes written since the last call."""
        data = self.transport.value()
        boxes = amp.parseString(data[self._read:])
        self._read = len(data)
        return boxes

    def call(self, command, **arguments) -> dict:
        """Ask `command`; its parsed answer (AssertionError if the answer is an error)."""
        self._tag += 1
        box = command.makeArguments(arguments, None)
        box[amp.COMMAND], box[amp.ASK] = command.commandName, str(self._tag).encode()
        self.send(box.serialize())
        for reply in self.replies():
            if reply.get(amp.ANSWER) == box[amp.ASK]:
                return command.parseResponse(reply, None)
            assert reply.get(amp.ERROR) != box[amp.ASK], f"{command.__name__} refused: {reply}"
        raise AssertionError(f"no answer to {command.__name__}")

    def authenticate(self, member_id: str) -> None:
        nonce = self.call(wire.Challenge, protocol=wire.PROTOCOL_VERSION)["nonce"]
        self.call(wire.Authenticate, member_id=member_id, mac=wire.auth_mac(SECRET, nonce, member_id))

    def join(self, member_id: str, kind: str) -> dict:
        self.authenticate(member_id)
        answer = self.call(wire.Join, kind=kind, domain="d", address=f"127.0.0.1:{len(member_id) + 100}", user="",
                           capacity=1, movies=["m"] if kind == "server" else [])
        if kind == "server":
            self.call(wire.RegisterMovies, movies=[{"id": "m", "frame_count": FRAMES, "fps": 24.0, "width": 8,
                                                    "height": 8}])
        return answer

    def close(self) -> None:
        """What the reactor does once a closing transport is gone."""
        if self.transport.disconnecting:
            self.session.connectionLost(Failure(ConnectionError("closed")))


# -- garbage boxes -------------------------------------------------------------------------------------------

text = st.text(max_size=20)
garbage = st.binary(max_size=120)
huge = st.integers(60_000, 65_535).map(lambda n: (b"\xff\x00{[" * (n // 4 + 1))[:n])
json_text = st.recursive(st.none() | st.booleans() | st.integers() | text,
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                         max_leaves=8).map(lambda v: json.dumps(v).encode())


def plausible(argument: amp.Argument) -> st.SearchStrategy[bytes]:
    """A well-typed value for one AMP argument (which the command may still refuse)."""
    if isinstance(argument, wire.Json):
        # Not EMPTY_OBJECTS: an authenticated member may still make a replica parse it (see SECURITY.md).
        return json_text | st.sampled_from([DEEP, OVER, wire.ZLIB_MARKER + b"junk"])
    if isinstance(argument, amp.Integer):
        return st.integers(-2**70, 2**70).map(lambda n: str(n).encode())
    if isinstance(argument, amp.Boolean):
        return st.sampled_from([b"True", b"False"])
    if isinstance(argument, amp.Unicode):
        mask = st.sampled_from([FrameMask.full(FRAMES), FrameMask(FRAMES), FrameMask.full(3)])
        return text.map(str.encode) | mask.map(lambda m: base64.b64encode(m.to_bytes()))
    return garbage


@st.composite
def command_boxes(draw) -> bytes:
    """A command box: a known or unknown name; each declared argument plausible, garbage, huge or missing;
    maybe extra keys; usually asking for an answer."""
    command = draw(st.sampled_from(COMMANDS + [None]))
    name = command.commandName if command else draw(st.sampled_from([b"StartTLS", b"", b"Nope", b"\x80"]) | garbage)
    box = amp.AmpBox()
    for key, argument in (command.arguments if command else []):
        choice = draw(st.sampled_from(["plausible", "plausible", "garbage", "huge", "missing"]))
        if choice != "missing":
            box[key] = draw({"plausible": plausible(argument), "garbage": garbage, "huge": huge}[choice])
    for key in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=2)):
        box[key] = draw(garbage)
    if name:
        box[amp.COMMAND] = name
    if draw(st.integers(0, 9)):
        box[amp.ASK] = str(draw(st.integers(900, 999))).encode()
    return box.serialize()


other_boxes = st.one_of(
    st.builds(lambda tag: amp.AmpBox(_answer=tag).serialize(), garbage.filter(bool)),
    st.builds(lambda tag, code: amp.AmpBox(_error=tag, _error_code=code, _error_description=b"x").serialize(),
              garbage.filter(bool), garbage),
    st.builds(lambda key, value: amp.AmpBox({key: value}).serialize(), st.binary(min_size=1, max_size=12), garbage),
)
raw = st.one_of(garbage, mutated(command_boxes()),
                st.builds(lambda n: b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00", st.just(0)),  # key over 255
                st.binary(min_size=1, max_size=4).map(lambda b: b"\x00\x04_ask\x00\x011" + b))
streams = st.lists(st.one_of(command_boxes(), other_boxes, raw), min_size=1, max_size=4).map(b"".join)


class TwistedFailures:
    """Twisted log events carrying a failure: what the reactor would log as an unhandled error."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event):
        if "log_failure" in event:
            self.events.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


def left(replica: CoordinatorReplica, member_id: str) -> bool:
    """The member is gone (a Leave, say): the replica closes its connection without a word, rightly."""
    return member_id not in replica.raft.read(lambda m: m.state.members)


def closing_lines(caught: LogCatcher) -> list[str]:
    return [m for m in caught.messages if m.startswith("closing connection")]


@given(st.sampled_from(["fresh", "challenged", "authenticated", "client", "server"]), streams, chunk_sizes)
# Found by CI: a Cast to the empty group name raised BadCommand out of the responder (logged as a crash).
@example("client", b"\x00\x04_ask\x00\x03900\x00\x08_command\x00\x04Cast\x00\x05group\x00\x00\x00\x07payload"
                   b"\x00\x02{}\x00\x07view_id\x00\x010\x00\x00", [])
@fuzz(250)
def test_garbage_boxes_close_one_connection_with_one_line_and_the_replica_goes_on(phase, data, sizes):
    replica = make_replica()
    server = Peer(replica)
    server.join("srv", "server")  # a movie to ask for, and a bystander whose connection must survive
    with TwistedFailures() as failures, LogCatcher("vod.coordinator") as caught:
        victim = Peer(replica)
        if phase == "challenged":
            victim.call(wire.Challenge, protocol=wire.PROTOCOL_VERSION)
        elif phase == "authenticated":
            victim.authenticate("fuzz")
        elif phase in ("client", "server"):
            victim.join("fuzz", phase)
        victim.replies()
        for piece in chunked(data, sizes):
            victim.send(piece)  # nothing may escape
        for reply in victim.replies():
            assert amp.ANSWER in reply or amp.ERROR in reply or reply.get(amp.COMMAND) == b"Deliver", reply
        assert not failures.events, [e.get("log_format") for e in failures.events]
        closed = len(closing_lines(caught))
        assert closed == 1 or closed == 0 and (not victim.transport.disconnecting or left(replica, "fuzz")), \
            caught.messages
        victim.close()
    # Nothing else is disturbed: the bystander is still a member, and a newcomer joins and opens a request.
    assert not server.transport.disconnecting and replica.sessions.get("srv") is server.session
    newcomer = Peer(replica)
    view = newcomer.join("newcomer", "client")["view"]
    assert "newcomer" in view["members"] and "srv" in view["members"]
    wanted = base64.b64encode(FrameMask.full(FRAMES).to_bytes()).decode()
    assert newcomer.call(wire.OpenRequest, request_id="r", movie="m", wanted=wanted)["state"] == "strategized"


@pytest.mark.parametrize("command", [wire.Join, wire.Cast, wire.Resume, wire.RegisterMovies])
def test_a_zip_bomb_before_authentication_is_refused_unparsed(command):
    """Found by this fuzzing: arguments were parsed before the phase was checked, so a peer without the secret
    could make a replica build ~450 MB of Python objects from one 16 KB value. Now refused unread."""
    replica = make_replica()
    peer = Peer(replica)
    box = amp.AmpBox({key: EMPTY_OBJECTS if isinstance(arg, wire.Json) else b"1" for key, arg in command.arguments})
    box[amp.COMMAND], box[amp.ASK] = command.commandName, b"1"
    with LogCatcher("vod.coordinator") as caught, allocation_peak() as peak:
        peer.send(box.serialize())
    (reply,) = peer.replies()
    assert reply[amp.ERROR_CODE] == b"AUTH_FAILED" and peer.transport.disconnecting
    assert len(closing_lines(caught)) == 1
    assert peak.bytes < 2_000_000


def test_a_malformed_argument_is_one_log_line_not_a_traceback():
    replica = make_replica()
    peer = Peer(replica)
    with TwistedFailures() as failures, LogCatcher("vod.coordinator") as caught:
        peer.send(amp.AmpBox(_command=b"Challenge", _ask=b"1", protocol=b"x").serialize())
    (reply,) = peer.replies()
    assert reply[amp.ERROR_CODE] == b"REFUSED" and peer.transport.disconnecting
    assert not failures.events and len(closing_lines(caught)) == 1 and "Challenge" in caught.messages[0]


# -- the Json argument ---------------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
                           | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=5),
                           max_leaves=30)


def decode_or_value_error(data: bytes):
    try:
        return wire.Json().fromString(data)
    except ValueError as err:
        assert str(err)
        return None


@given(json_values, st.integers(0, 3))
@fuzz(150)
def test_json_round_trips_compressed_or_not(value, copies):
    big = [value] * (1 + copies * 400)  # some over COMPRESS_ABOVE, so they travel compressed
    for v in (value, big):
        try:
            data = wire.Json().toString(v)
        except ValueError:
            continue  # over MAX_JSON even compressed: refused at the sender
        assert len(data) <= wire.MAX_JSON
        assert wire.Json().fromString(data) == json.loads(json.dumps(v))


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: wire.ZLIB_MARKER + b),
                 mutated(json_values.map(lambda v: wire.Json().toString([v] * 300))),
                 mutated(json_values.map(lambda v: json.dumps(v).encode()))))
@fuzz(300)
def test_json_garbage_decodes_or_raises_value_error(data):
    decode_or_value_error(data)


@pytest.mark.parametrize("data", [OVER, DEEP, b"[" * 50_000, wire.ZLIB_MARKER + b"x\x9c" + b"\xff" * 40,
                                  wire.ZLIB_MARKER + zlib.compress(b'{"a":1}')[:-3], b"\xff\xfe",
                                  b"1" * 5000, b"\x00" * (wire.MAX_JSON + 1)])
def test_json_bombs_and_garbage_are_value_errors(data):
    """Found by this fuzzing: zlib.error and RecursionError used to escape as themselves."""
    with allocation_peak() as peak:
        with pytest.raises(ValueError):
            wire.Json().fromString(data)
    assert peak.bytes < 3 * wire.MAX_EXPANDED


def test_a_small_box_cannot_inflate_past_the_limit():
    assert len(OVER) < wire.MAX_JSON and len(EMPTY_OBJECTS) < wire.MAX_JSON
    with allocation_peak() as peak:
        with pytest.raises(ValueError, match="expands beyond"):
            wire.Json().fromString(OVER)
    assert peak.bytes < 3 * wire.MAX_EXPANDED


def test_a_peer_that_never_authenticates_is_closed_after_the_deadline():
    """Found by the soak: a half-open connection stayed open for ever (a file descriptor each)."""
    from vod.coordinator.session import AUTH_TIMEOUT
    replica = make_replica()
    silent, challenged, member = Peer(replica), Peer(replica), Peer(replica)
    challenged.call(wire.Challenge, protocol=wire.PROTOCOL_VERSION)
    member.authenticate("m1")
    with LogCatcher("vod.coordinator") as caught:
        replica.reactor.advance(AUTH_TIMEOUT - 0.1)
        assert not (silent.transport.disconnecting or challenged.transport.disconnecting)
        replica.reactor.advance(0.2)
    assert silent.transport.disconnecting and challenged.transport.disconnecting
    assert not member.transport.disconnecting
    assert len(closing_lines(caught)) == 2 and all("not authenticated within" in m for m in caught.messages)
    member.close()
