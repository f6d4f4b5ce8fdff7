"""VideoServer on a MemoryReactorClock with a fake group member: events in, streams started and stopped."""

from __future__ import annotations

import logging

import pytest
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.test import iosim

from vod.errors import StoreError, UsageError
from vod.groups import wire
from vod.groups.events import GroupDissolved, StrategyAssigned, ViewChanged
from vod.server.node import VideoServer, catalogue_entries, open_catalogue, ruid_of

from test_server_support import SECRET, DataClient, check_frames, credit, hello, make_store, strategy

ME = "s1"
LISTEN = "127.0.0.1:9100"


class FakeMember:
    """Records what the server asks of its group member; the test plays the coordinator's events."""

    def __init__(self, reactor, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple[type, dict]] = []
        self.stopped = False
        self.on_event = kwargs["on_event"]
        self.on_state = kwargs["on_state"]

    def start(self):
        self.on_state("joined")
        return defer.succeed({"members": []})

    def call(self, command, **arguments):
        self.calls.append((command, arguments))
        return defer.succeed({})

    def stop(self):
        self.stopped = True
        return defer.succeed(None)


@pytest.fixture
def movies(tmp_path):
    make_store(tmp_path / "store", {"m": 10, "other": 4})
    catalogue = open_catalogue(str(tmp_path / "store"))
    yield catalogue
    for movie in catalogue.values():
        movie.close()


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def server(reactor, movies):
    server = VideoServer(reactor, reactor, movies, server_id=ME, domain="d", listen=LISTEN,
                         coordinators=["127.0.0.1:7000"], secret=SECRET, capacity=3, member_factory=FakeMember)
    started = server.start()
    assert started.called and started.result is None
    return server


def connect(reactor, client_id="c1"):
    factory = reactor.tcpServers[-1][1]
    connection = factory.buildProtocol(None)
    client = DataClient()
    pump = iosim.connect(connection, iosim.makeFakeServer(connection), client, iosim.makeFakeClient(client),
                         clock=reactor)
    return client, pump


def assigned(revision: int, masks: dict[str, str], ruid: int = 7, movie: str = "m", client: str = "c1",
             reason: str = "initial") -> StrategyAssigned:
    st = strategy(ruid, movie, len(next(iter(masks.values()))), masks, client)
    return StrategyAssigned(ruid, f"video:{ruid}", revision, reason, st.to_dict(),
                            {server: f"127.0.0.1:{9100 + i}" for i, server in enumerate(masks)})


# -- start ---------------------------------------------------------------------------------------------


def test_start_listens_joins_with_the_data_address_and_registers_the_catalogue(reactor, server, movies):
    ((port, _, _, interface),) = reactor.tcpServers
    assert (interface, port) == ("127.0.0.1", 9100)
    member = server.member
    assert member.kwargs["address"] == LISTEN == server.address
    assert {k: member.kwargs[k] for k in ("member_id", "kind", "domain", "capacity", "movies", "coordinators")} == {
        "member_id": ME, "kind": "server", "domain": "d", "capacity": 3, "movies": ["m", "other"],
        "coordinators": ["127.0.0.1:7000"]}
    assert member.calls == [(wire.RegisterMovies, {"movies": [
        {"id": "m", "frame_count": 10, "fps": 25.0, "width": 8, "height": 8},
        {"id": "other", "frame_count": 4, "fps": 25.0, "width": 8, "height": 8}]})]
    assert catalogue_entries(movies) == member.calls[0][1]["movies"]


def test_advertise_overrides_the_listen_address(reactor, movies):
    server = VideoServer(reactor, reactor, movies, server_id=ME, domain="d", listen="0.0.0.0:9100",
                         advertise="video1.example:9100", member_factory=FakeMember)
    server.start()
    assert server.member.kwargs["address"] == "video1.example:9100"


def test_a_port_that_cannot_be_bound_fails_the_start(movies):
    reactor = RaisingMemoryReactor(listenException=error.CannotListenError("127.0.0.1", 9100, OSError("in use")))
    server = VideoServer(reactor, MemoryReactorClock(), movies, server_id=ME, domain="d", listen=LISTEN,
                         member_factory=FakeMember)
    failure = []
    server.start().addErrback(failure.append)
    assert failure[0].check(UsageError) and "cannot listen" in failure[0].getErrorMessage()


@pytest.mark.parametrize("kwargs, message", [
    (dict(capacity=0), "capacity"),
    (dict(listen="nowhere"), "--listen"),
    (dict(advertise="x"), "--advertise"),
])
def test_bad_arguments(reactor, movies, kwargs, message):
    args = dict(server_id=ME, domain="d", listen=LISTEN, member_factory=FakeMember) | kwargs
    with pytest.raises(UsageError, match=message):
        VideoServer(reactor, reactor, movies, **args)
    with pytest.raises(UsageError, match="at least one movie"):
        VideoServer(reactor, reactor, {}, server_id=ME, domain="d", listen=LISTEN)


# -- strategies and streams ------------------------------------------------------------------------------


def test_a_strategy_known_before_the_hello(reactor, server, movies):
    server.on_event(assigned(1, {ME: "1010101010", "s2": "0101010101"}))
    client, pump = connect(reactor)
    client.send(hello(7), credit(10))
    pump.flush()
    assert client.kinds() == ["F0@1", "F2@1", "F4@1", "F6@1", "F8@1", "END@1"]
    check_frames(client.messages, movies["m"])


def test_a_restripe_reaches_the_open_stream_and_old_revisions_are_ignored(reactor, server):
    server.on_event(assigned(1, {ME: "1010101010", "s2": "0101010101"}))
    client, pump = connect(reactor)
    client.send(hello(7), credit(4))
    pump.flush()
    server.on_event(assigned(2, {ME: "0000111111"}, reason="restripe"))  # s2 died; we take its frames
    server.on_event(assigned(1, {ME: "1111111111"}))  # stale: ignored
    client.send(credit(10))
    pump.flush()
    assert client.kinds() == ["F0@1", "F2@1", "F4@2", "F5@2", "F6@2", "F7@2", "F8@2", "F9@2", "END@2"]
    assert server.stripes[7].revision == 2


def test_a_strategy_arriving_after_the_hello(reactor, server):
    client, pump = connect(reactor)
    client.send(hello(7), credit(10))
    pump.flush()
    assert client.messages == []
    server.on_event(assigned(1, {ME: "0000000111"}))
    pump.flush()
    assert client.kinds() == ["F7@1", "F8@1", "F9@1", "END@1"]


def test_sdone_stops_the_streams_of_that_ruid_only_and_a_late_hello_is_told(reactor, server):
    server.on_event(assigned(1, {ME: "1111111111"}))
    server.on_event(assigned(1, {ME: "1111"}, ruid=8, movie="other"))
    first, pump1 = connect(reactor)
    first.send(hello(7), credit(2))
    other, pump2 = connect(reactor)
    other.send(hello(8), credit(2))
    pump1.flush(), pump2.flush()
    server.on_event(GroupDissolved("video:7", 30, 2, (ME, "c1")))
    pump1.flush(), pump2.flush()
    assert first.lost and first.errors() == [] and not other.lost
    assert 7 not in server.stripes and server.streams(7) == [] and len(server.streams(8)) == 1
    late, pump3 = connect(reactor)
    late.send(hello(7))
    pump3.flush()
    assert late.errors() == ["request 7 is over: its video group was dissolved"] and late.lost


def test_a_view_of_the_video_group_without_this_server_stops_its_streams(reactor, server):
    server.on_event(assigned(1, {ME: "1111111111"}))
    client, pump = connect(reactor)
    client.send(hello(7), credit(2))
    pump.flush()
    server.on_event(ViewChanged("video:7", 40, ("c1", "s2"), ("s2",), (ME,), 0))
    server.on_event(ViewChanged("domain:d", 41, ("c1",), (), (ME,), 0))  # not a video group: no effect
    pump.flush()
    assert client.lost and client.indices() == [0, 1]


def test_a_rejoin_voids_every_strategy(reactor, server, caplog):
    server.on_event(assigned(1, {ME: "1111111111"}))
    client, pump = connect(reactor)
    client.send(hello(7), credit(2))
    pump.flush()
    server.member.on_state("disconnected")
    server.member.on_state("resuming")
    assert not client.lost  # a plain reconnection changes nothing
    server.member.on_state("joining")  # Resume refused: excluded meanwhile
    pump.flush()
    assert client.errors() == [f"server {ME} was excluded from the domain and rejoined; its strategies are void"]
    assert client.lost and server.stripes == {}


def test_a_newer_connection_of_the_same_client_replaces_the_older(reactor, server):
    server.on_event(assigned(1, {ME: "1111111111"}))
    old, pump1 = connect(reactor)
    old.send(hello(7), credit(2))
    pump1.flush()
    new, pump2 = connect(reactor)
    new.send(hello(7), credit(10))
    pump2.flush(), pump1.flush()
    assert old.lost and old.indices() == [0, 1]
    assert new.indices() == list(range(10)) and not new.lost


def test_another_client_cannot_take_over_a_request(reactor, server):
    server.on_event(assigned(1, {ME: "1111111111"}))
    owner, pump1 = connect(reactor)
    owner.send(hello(7), credit(2))
    pump1.flush()
    intruder, pump2 = connect(reactor)
    intruder.send(hello(7, client="mallory"), credit(10))
    pump1.flush(), pump2.flush()
    assert intruder.errors() == ["RUID 7 is a request of client c1, not of mallory"] and intruder.lost
    assert not owner.lost


def test_an_unusable_strategy_is_logged_and_ignored(reactor, server, caplog):
    bad = StrategyAssigned(7, "video:7", 1, "initial", {"v": 99}, {})
    server.on_event(bad)
    assert server.stripes == {}
    assert any("unusable strategy" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_stop_ends_streams_with_an_error_and_leaves(reactor, server):
    server.on_event(assigned(1, {ME: "1111111111"}))
    client, pump = connect(reactor)
    client.send(hello(7), credit(2))
    pump.flush()
    stopped = server.stop()
    pump.flush()
    assert stopped.called and server.member.stopped
    assert client.errors() == [f"server {ME} is shutting down"] and client.lost


# -- the catalogue ----------------------------------------------------------------------------------------


def test_open_catalogue_errors(tmp_path):
    with pytest.raises(StoreError, match="no movie store at"):
        open_catalogue(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="holds no movies"):
        open_catalogue(str(tmp_path / "empty"))


def test_ruid_of():
    assert ruid_of("video:12") == 12
    assert ruid_of("domain:d") is None and ruid_of("video:") is None and ruid_of("video:x") is None
