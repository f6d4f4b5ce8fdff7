"""Issue 8, the data plane: a server streams a request only to a HELLO with the coordinator's token for it.

Pure part: minting and checking (`vod.stream.tokens`), and the replica's push that hands a client its token.
Connection part (StringTransport, iosim, a Clock): a HELLO without a token, with a forged one or with another
client's is answered with an ERROR and closed, with one log line naming the peer; the right one streams; a
refused HELLO claiming a client's RUID does not disturb that client's stream.
Real part: a running `vod-server` refuses raw TCP HELLOs without a valid token while a real `vod-client play`
of the same request plays on, frame-exact.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cluster import wait_for
from test_crash_support import STARTUP, running_system
from test_server_node import ME, assigned, connect, movies, reactor, server  # noqa: F401 (fixtures)
from test_server_stream import FakeHost, stripe
from test_server_support import SECRET, TOKENS, credit, hello, make_store, strategy
from vod.groups.events import StrategyAssigned, event_from_dict, event_to_dict
from vod.server.stream import StreamConnection
from vod.stream import protocol as p
from vod.stream.tokens import MAX_RUID, StreamTokens, TokenRefused

OTHER_SECRET = b"t" * 16


# -- minting and checking ----------------------------------------------------------------------------------


def test_a_token_is_a_pure_function_of_the_secret_the_ruid_and_the_client():
    token = TOKENS.mint(7, "c1")
    assert re.fullmatch(r"v1\.[0-9a-f]{64}", token)
    assert StreamTokens(SECRET).mint(7, "c1") == token  # another replica, after a failover: the same token
    others = {TOKENS.mint(8, "c1"), TOKENS.mint(7, "c2"), StreamTokens(OTHER_SECRET).mint(7, "c1")}
    assert token not in others and len(others) == 3
    TOKENS.check(7, "c1", token)  # no exception: valid


@pytest.mark.parametrize("ruid, client, token, why", [
    (7, "c1", None, "carries no stream token"),
    (7, "c1", "", "carries no stream token"),
    (7, "c1", 12345, "is not a token"),
    (7, "c1", "v1." + "é" * 64, "is not a token"),
    (7, "c1", "v1." + "0" * 500, "is not a token"),
    (7, "c1", "v2." + "0" * 64, "version 'v2' is not supported"),
    (7, "c1", TOKENS.mint(7, "c2"), "not issued for that RUID and client"),
    (7, "c1", TOKENS.mint(8, "c1"), "not issued for that RUID and client"),
    (7, "c1", StreamTokens(OTHER_SECRET).mint(7, "c1"), "not issued for that RUID and client"),
    (7, "c1", TOKENS.mint(7, "c1")[:-1], "not issued for that RUID and client"),
    (MAX_RUID, "c1", "v1." + "0" * 64, "no request has that RUID"),
    (7, "c\ud800", "v1." + "0" * 64, "not issued for that RUID and client"),  # a lone surrogate from JSON
])
def test_a_missing_or_wrong_token_is_refused_saying_why(ruid, client, token, why):
    with pytest.raises(TokenRefused, match=why) as refused:
        TOKENS.check(ruid, client, token)
    assert f"RUID {ruid}" in str(refused.value)


def test_the_pushing_replica_gives_only_the_requests_client_its_token():
    st = strategy(7, "m", 4, {"s1": "1010", "s2": "0101"}, client="c1").to_dict()
    replicated = event_to_dict(StrategyAssigned(7, "video:7", 1, "initial", st, {"s1": "h:1", "s2": "h:2"}))
    view = {"v": 1, "type": "ViewChanged", "group": "video:7"}
    assert replicated["token"] == ""  # what the log and every outbox hold: no secret in there
    to_client = TOKENS.issue_in([view, replicated], "c1")
    assert to_client[0] is view and event_from_dict(to_client[1]).token == TOKENS.mint(7, "c1")
    assert TOKENS.issue_in([view, replicated], "s1") == [view, replicated]  # servers check, they need none
    assert replicated["token"] == ""  # the outbox's copy is left as it was


# -- one connection, over a StringTransport ------------------------------------------------------------------


@pytest.fixture
def host(tmp_path):
    store = make_store(tmp_path / "store", {"m": 10})
    with store.open("m") as movie:
        yield FakeHost({"m": movie})


def hello_on_a_connection(host, data: bytes) -> tuple[StreamConnection, StringTransport, Clock]:
    clock = Clock()
    connection = StreamConnection(host, clock, clock, None, 5.0)
    transport = StringTransport()  # its peer is 192.168.1.1:54321
    connection.makeConnection(transport)
    connection.dataReceived(data)
    return connection, transport, clock


@pytest.mark.parametrize("token, why", [
    (None, "carries no stream token"),
    (StreamTokens(OTHER_SECRET).mint(7, "c1"), "not issued for that RUID and client"),
    (TOKENS.mint(7, "mallory"), "not issued for that RUID and client"),  # another client's token
])
def test_a_hello_without_the_right_token_gets_an_error_and_is_closed(host, caplog, token, why):
    caplog.set_level(logging.INFO, logger="vod.server")
    host.stripes[7] = stripe("1111111111")
    connection, transport, clock = hello_on_a_connection(host, hello(7, token=token) + credit(10))
    messages = p.FrameDecoder().feed(transport.value())
    assert [m.type for m in messages] == [p.ERROR] and why in messages[0].payload.decode()
    assert transport.disconnecting
    assert host.greetings == []  # never counted as c1's connection: c1's own stream is not replaced
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "192.168.1.1:54321" in lines[0] and why in lines[0], lines
    clock.advance(10)  # nothing left scheduled that could write or log again
    assert len(caplog.records) == 1 and not connection.session.frames_sent


def test_a_hello_with_the_right_token_streams(host):
    host.stripes[7] = stripe("1111111111")
    connection, transport, _ = hello_on_a_connection(host, hello(7) + credit(10))
    messages = p.FrameDecoder().feed(transport.value())
    assert [m.index for m in messages if m.type == p.FRAME] == list(range(10)) and messages[-1].type == p.END
    assert host.greetings == [7] and not transport.disconnecting


def test_a_refused_hello_for_a_clients_ruid_leaves_that_clients_stream_alone(reactor, server):
    """On a real VideoServer: a newer HELLO of the same client replaces its connection, a forged one does not."""
    server.on_event(assigned(1, {ME: "1111111111"}))
    owner, pump1 = connect(reactor)
    owner.send(hello(7), credit(2))
    pump1.flush()
    forger, pump2 = connect(reactor)
    forger.send(hello(7, token=TOKENS.mint(7, "c2")), credit(10))
    pump2.flush(), pump1.flush()
    assert forger.lost and "not issued for that RUID and client" in forger.errors()[0] and not forger.frames()
    owner.send(credit(10))
    pump1.flush()
    assert not owner.lost and owner.indices() == list(range(10))
    assert len(server.streams(7)) == 1


# -- real processes ------------------------------------------------------------------------------------------


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=2) as s:
        yield s


def raw_hello(address: str, body: dict, timeout: float = 10.0) -> list[p.FrameMessage]:
    """HELLO + CREDIT over a plain socket; every message the server sends until it closes."""
    host, port = address.rsplit(":", 1)
    decoder, out = p.FrameDecoder(), []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(p.encode_control(p.HELLO, body) + p.encode_control(p.CREDIT, {"until": 10_000}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return out
            out += decoder.feed(data)
    raise AssertionError(f"{address} did not close the connection within {timeout} s; got {out}")


def test_a_running_server_refuses_hellos_without_a_valid_token_while_the_real_client_plays_on(system):
    client = system.play(*STARTUP)
    request = system.wait_streaming()
    ruid = request["ruid"]
    address = next(m["address"] for m in system.admin("status")["members"] if m["id"] == "s1")

    # The real client's own RUID and id: only the token is missing or wrong.
    attempts = {
        "no token": {"ruid": ruid, "client": "viewer", "held": "", "mode": "fast"},
        "forged": {"ruid": ruid, "client": "viewer", "held": "", "mode": "fast",
                   "token": StreamTokens(b"a guess at the domain secret").mint(ruid, "viewer")},
        "another client's": {"ruid": ruid, "client": "viewer", "held": "", "mode": "fast",
                             "token": StreamTokens(system.cluster.secret).mint(ruid, "mallory")},
    }
    for what, body in attempts.items():
        messages = raw_hello(address, body)
        assert [m.type for m in messages] == [p.ERROR], (what, messages)
        assert "stream token" in messages[0].payload.decode(), (what, messages[0].payload)

    summary = system.finished_whole(client, ruid)
    # Frame-exact, and the refusals cost the client's own connections nothing (not even a reconnection).
    assert summary["state"] == "done" and summary["frames_missing"] == 0 and summary["reconnects"] == 0, summary
    assert system.played_frames() == system.expected_frames()
    # Each refusal is one warning line of s1 naming the peer, and the real stream was never replaced.
    refusals = [line for _, line in system.log("s1") if "stream token" in line]
    assert len(refusals) == len(attempts), refusals
    assert all("WARNING" in line and "connection from 127.0.0.1:" in line for line in refusals), refusals
    ends = wait_for(lambda: system.stream_ends("s1", ruid), 10, "s1's stream to end", interval=0.1,
                    describe=system.describe)
    assert not [end for end in ends if "replaced" in end["reason"]], ends
