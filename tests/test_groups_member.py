"""GroupMember against scripted fake coordinators, over iosim on a MemoryReactorClock: no sockets, no sleeps."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from vod.errors import UsageError, VodError
from vod.groups import wire
from vod.groups.events import Delivered, GroupDissolved, RuidAssigned, TablePut, ViewChanged, event_to_dict
from vod.groups.member import (
    Backoff, CoordinatorList, CoordinatorRefused, GroupMember, GroupUnavailable, MemberStopped, NotInGroup, State,
    decode_events, parse_address,
)

SECRET = b"the domain secret"
A, B, C = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"
ME = "server-1"
CS = "domain:cs"
VIEW = ViewChanged(CS, 10, (ME,), (ME,), (), 0)


def cast_event(seq: int, view_id: int = 10) -> Delivered:
    return Delivered(CS, view_id, seq, "other", {"n": seq})


# -- a scripted coordinator ------------------------------------------------------------------------------


class FakeReplica:
    """One coordinator replica as the member sees it; tests script it through the attributes."""

    def __init__(self, address: str):
        self.address = address
        self.up = True
        self.not_primary: str | None = None  # when set: NotPrimary with this description
        self.term = 1
        self.answer_heartbeats = True
        self.refuse_resume = False
        self.join_view = VIEW
        self.replay: list = []  # what Resume pushes before it answers
        self.calls: list[tuple[str, dict]] = []
        self.sessions: list[FakeSession] = []
        self.casts = 0
        self.ruid = 100

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def arguments(self, name: str) -> list[dict]:
        return [kwargs for called, kwargs in self.calls if called == name]

    def live(self) -> list["FakeSession"]:
        return [s for s in self.sessions if s.transport is not None and not s.transport.disconnecting]

    def push(self, *events) -> None:
        for session in self.live():
            session.push(*events)

    def cut(self) -> None:
        """Crash: drop every connection and refuse new ones."""
        self.up = False
        for session in self.live():
            session.transport.loseConnection()


class FakeSession(amp.AMP):
    def __init__(self, replica: FakeReplica):
        super().__init__()
        self.replica = replica
        self.nonce = f"nonce-{len(replica.sessions)}".encode()

    def push(self, *events) -> None:
        self.callRemote(wire.Deliver, events=[event_to_dict(event) for event in events], term=self.replica.term)

    def _record(self, name: str, **kwargs: Any) -> None:
        self.replica.calls.append((name, kwargs))

    def _primary_only(self) -> None:
        if self.replica.not_primary is not None:
            raise wire.NotPrimary(self.replica.not_primary)

    @wire.Challenge.responder
    def challenge(self, protocol):
        self._record("Challenge", protocol=protocol)
        return {"nonce": self.nonce, "replica": self.replica.address}

    @wire.Authenticate.responder
    def authenticate(self, member_id, mac, user=None, role=None):
        self._record("Authenticate", member_id=member_id)
        if mac != wire.auth_mac(SECRET, self.nonce, member_id):
            raise wire.AuthFailed("authentication failed")
        return {}

    @wire.Join.responder
    def join(self, **details):
        self._record("Join", **details)
        self._primary_only()
        # Like the real coordinator: the committed view goes out before the answer.
        self.push(self.replica.join_view)
        return {"view": event_to_dict(self.replica.join_view), "term": self.replica.term}

    @wire.Resume.responder
    def resume(self, positions):
        self._record("Resume", positions=positions)
        self._primary_only()
        if self.replica.refuse_resume:
            raise wire.Refused(f"{ME} is not a member any more; join again")
        if self.replica.replay:
            self.push(*self.replica.replay)
        return {"term": self.replica.term}

    @wire.Heartbeat.responder
    def heartbeat(self):
        self._record("Heartbeat")
        self._primary_only()
        if not self.replica.answer_heartbeats:
            return Deferred()  # never answers
        return {"term": self.replica.term}

    @wire.Leave.responder
    def leave(self):
        self._record("Leave")
        return {}

    @wire.Cast.responder
    def cast(self, group, view_id, payload):
        self._record("Cast", group=group, view_id=view_id, payload=payload)
        self._primary_only()
        if view_id != VIEW.view_id:
            raise wire.Refused(f"cast for view {view_id} of {group}, which is now in view {VIEW.view_id}")
        self.replica.casts += 1
        self.push(Delivered(group, view_id, self.replica.casts, ME, payload))
        return {"view_id": view_id, "seq": self.replica.casts}

    @wire.NextRuid.responder
    def next_ruid(self):
        self._primary_only()
        self.replica.ruid += 1
        return {"ruid": self.replica.ruid}

    @wire.Status.responder
    def status(self):
        return {"status": {"v": 1, "replica": self.replica.address}}


class FakeNetwork:
    """A MemoryReactorClock whose TCP connects reach FakeReplicas through iosim pumps."""

    def __init__(self, *addresses: str):
        self.reactor = MemoryReactorClock()
        self.replicas = {address: FakeReplica(address) for address in addresses}
        self.pumps: list[iosim.IOPump] = []
        self.connects: list[str] = []

    def __getitem__(self, address: str) -> FakeReplica:
        return self.replicas[address]

    def settle(self) -> None:
        """Complete pending connects and move bytes until nothing moves (no time passes)."""
        moved = True
        while moved:
            moved = False
            while self.reactor.tcpClients:
                self._complete(*self.reactor.tcpClients.pop(0)[:3], self.reactor.connectors.pop(0))
                moved = True
            for pump in self.pumps:
                moved = pump.flush() or moved

    def _complete(self, host, port, factory, connector) -> None:
        address = f"{host}:{port}"
        self.connects.append(address)
        replica = self.replicas.get(address)
        if replica is None or not replica.up:
            factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
            return
        client = factory.buildProtocol(None)
        server = FakeSession(replica)
        replica.sessions.append(server)
        self.pumps.append(iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                                        greet=False, clock=self.reactor))

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Let `seconds` of simulated time pass, settling after every step."""
        self.settle()
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.settle()


class Recorder:
    def __init__(self):
        self.events: list = []
        self.states: list[str] = []


def make_member(network: FakeNetwork, coordinators=(A, B, C), secret=SECRET, **options):
    seen = Recorder()
    member = GroupMember(network.reactor, list(coordinators), secret, ME, "server", "cs", "10.1.0.1:8000",
                         capacity=4, movies=("m1", "m2"), on_event=seen.events.append,
                         on_state=seen.states.append, **options)
    return member, seen


def result_of(d: Deferred):
    results: list = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Deferred) -> BaseException:
    results: list = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), f"expected a failure, got {results}"
    return results[0].value


@pytest.fixture
def network():
    return FakeNetwork(A, B, C)


def joined_member(network, **options):
    member, seen = make_member(network, **options)
    started = member.start()
    network.settle()
    assert result_of(started) == event_to_dict(VIEW)
    return member, seen


# -- joining -----------------------------------------------------------------------------------------------


def test_authenticates_then_joins_and_delivers_the_view(network):
    member, seen = make_member(network)
    started = member.start()
    network.settle()

    assert result_of(started) == event_to_dict(VIEW)
    assert network[A].names() == ["Challenge", "Authenticate", "Join"]
    assert network[A].arguments("Challenge") == [{"protocol": wire.PROTOCOL_VERSION}]
    assert network[A].arguments("Join") == [dict(kind="server", domain="cs", address="10.1.0.1:8000", user="",
                                                 capacity=4, movies=["m1", "m2"])]
    assert seen.states == ["connecting", "authenticating", "joining", "joined"]
    assert (member.connected, member.state, member.primary, member.term) == (True, State.JOINED, A, 1)
    # Pushed before the Join answer, and accepted all the same.
    assert seen.events == [VIEW]
    assert member.views == {CS: VIEW}


def test_a_wrong_secret_fails_start_and_stops(network):
    member, seen = make_member(network, secret=b"not it")
    started = member.start()
    network.run(2.0)

    assert isinstance(failure_of(started), CoordinatorRefused)
    assert seen.states[-1] == "stopped"
    assert network.connects == [A]
    assert network.reactor.getDelayedCalls() == []


def test_not_primary_redirects_to_the_address_given(network):
    elsewhere = "10.0.0.9:7000"
    network.replicas[elsewhere] = FakeReplica(elsewhere)
    network[A].not_primary = elsewhere
    member, seen = make_member(network)
    started = member.start()
    network.run(0.1)

    assert result_of(started) == event_to_dict(VIEW)
    assert network.connects == [A, elsewhere]
    assert network[A].names()[-1] == "Join"
    assert network[elsewhere].names() == ["Challenge", "Authenticate", "Join"]
    assert member.primary == elsewhere
    assert elsewhere in member.coordinators


def test_not_primary_without_an_address_tries_the_next_after_a_delay(network):
    network[A].not_primary = ""
    member, seen = make_member(network)
    started = member.start()
    network.settle()
    assert member.state is State.DISCONNECTED and member.primary is None
    assert not started.called

    network.run(0.1)
    assert result_of(started) == event_to_dict(VIEW)
    assert network.connects == [A, B]


def test_unreachable_coordinators_are_tried_in_turn_with_growing_backoff(network):
    for address in (A, B, C):
        network[address].up = False
    member, _ = make_member(network)
    started = member.start()
    network.run(1.0)
    # 0.05 + 0.1 + 0.2 + 0.4 s of backoff between the first five attempts.
    assert network.connects == [A, B, C, A, B]

    network[A].up = True
    network.run(1.0)
    assert result_of(started) == event_to_dict(VIEW)
    assert member.primary == A


# -- heartbeats --------------------------------------------------------------------------------------------


def test_heartbeats_every_interval_and_keep_the_highest_term(network):
    member, _ = joined_member(network)
    network[A].term = 3
    network.run(1.0)
    assert network[A].names().count("Heartbeat") == 5
    assert member.term == 3

    network[A].term = 2  # a stale answer must not lower what we know
    network.run(0.2)
    assert member.term == 3


def test_an_unanswered_heartbeat_moves_the_member_to_another_coordinator(network):
    member, seen = joined_member(network)
    network[A].answer_heartbeats = False
    network.run(1.0)

    assert "disconnected" in seen.states and member.connected
    assert member.primary == B
    assert network[B].names()[:3] == ["Challenge", "Authenticate", "Resume"]
    assert network[B].arguments("Resume") == [{"positions": {CS: [10, 0]}}]


def test_a_heartbeat_answered_with_not_primary_follows_the_redirect(network):
    member, _ = joined_member(network)
    network[A].not_primary = C
    network.run(0.3)

    assert member.connected and member.primary == C
    assert network.connects == [A, C]
    assert "Resume" in network[C].names()


# -- failover and ordered delivery -------------------------------------------------------------------------


def test_resume_after_a_lost_connection_sends_positions_and_drops_replayed_duplicates(network):
    member, seen = joined_member(network)
    network[A].push(cast_event(1), cast_event(2))
    network.settle()
    network[A].cut()
    network[B].replay = [VIEW, cast_event(1), cast_event(2), cast_event(3)]
    network.run(0.1)

    assert network[B].arguments("Resume") == [{"positions": {CS: [10, 2]}}]
    assert seen.events == [VIEW, cast_event(1), cast_event(2), cast_event(3)]
    assert seen.states[-5:] == ["disconnected", "connecting", "authenticating", "resuming", "joined"]
    assert member.primary == B


def test_a_gap_resumes_from_the_same_primary(network, caplog):
    member, seen = joined_member(network)
    network[A].replay = [cast_event(2), cast_event(3)]
    with caplog.at_level(logging.WARNING, logger="vod.groups.member"):
        network[A].push(cast_event(1), cast_event(3))
        network.run(0.1)

    assert network.connects == [A, A]
    assert network[A].arguments("Resume") == [{"positions": {CS: [10, 1]}}]
    assert seen.events == [VIEW, cast_event(1), cast_event(2), cast_event(3)]
    assert ["out of sequence" in record.getMessage() for record in caplog.records] == [True]


def test_a_refused_resume_joins_again_with_a_fresh_delivery_log(network):
    member, seen = joined_member(network)
    network[A].push(cast_event(1))
    network.settle()
    # Excluded meanwhile: the next coordinator does not know us, and its view
    # ids mean nothing to the old log (a stale log would drop view 5 as seen).
    network[A].cut()
    network[B].refuse_resume = True
    network[B].join_view = ViewChanged(CS, 5, ("other", ME), (ME,), (), 0)
    network.run(0.1)

    assert network[B].names() == ["Challenge", "Authenticate", "Resume", "Join"]
    assert seen.states[-3:] == ["resuming", "joining", "joined"]
    assert seen.events[-1] == network[B].join_view
    assert member.views == {CS: network[B].join_view}


def test_non_group_events_pass_through_and_views_follow_the_group_events(network):
    member, seen = joined_member(network)
    video = ViewChanged("video:7", 3, (ME,), (ME,), (), 0)
    network[A].push(RuidAssigned(7), video, TablePut("movies", "m1", {"frames": 10}), GroupDissolved("video:7", 3, 0,
                                                                                                     (ME,)))
    network.settle()
    assert seen.events[1:] == [RuidAssigned(7), video, TablePut("movies", "m1", {"frames": 10}),
                               GroupDissolved("video:7", 3, 0, (ME,))]
    assert set(member.views) == {CS}


@pytest.mark.parametrize("send", [
    lambda session: session.callRemote(wire.Deliver, events=[{"v": 1, "type": "Bogus"}], term=1),
    lambda session: session.callRemote(wire.Deliver, events={"not": "a list"}, term=1),
    lambda session: session.callRemoteString(b"Deliver", requiresAnswer=False, events=b"{not json", term=b"1"),
], ids=["unknown-event", "not-a-list", "not-json"])
def test_a_malformed_deliver_closes_the_connection_with_one_log_line(network, caplog, send):
    member, seen = joined_member(network)
    with caplog.at_level(logging.INFO):
        send(network[A].live()[0])
        network.settle()
        assert not member.connected
        assert network[A].live() == []
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert "malformed" in caplog.records[0].getMessage()

    network.run(0.1)
    assert member.connected and "Resume" in network[B].names()
    assert seen.events == [VIEW]


def test_a_deliver_from_an_older_term_is_fenced_off(network):
    member, seen = joined_member(network)
    network[A].term = 5
    network.run(0.2)  # a heartbeat answer teaches the member term 5
    assert member.term == 5
    network[A].term = 4  # a deposed primary that woke up
    network[A].live()[0].push(cast_event(1))
    network.settle()
    assert seen.events == [VIEW]
    network[A].term = 5
    network[A].live()[0].push(cast_event(1))
    network.settle()
    assert seen.events == [VIEW, cast_event(1)]


# -- commands ----------------------------------------------------------------------------------------------


def test_cast_returns_view_and_seq_in_the_current_view(network):
    member, seen = joined_member(network)
    cast = member.cast(CS, {"play": "m1"})
    network.settle()

    assert result_of(cast) == (10, 1)
    assert network[A].arguments("Cast") == [{"group": CS, "view_id": 10, "payload": {"play": "m1"}}]
    assert seen.events[-1] == Delivered(CS, 10, 1, ME, {"play": "m1"})


def test_cast_follows_a_primary_change_and_retries(network):
    member, _ = joined_member(network)
    network[A].not_primary = B
    cast = member.cast(CS, {"play": "m1"})
    network.run(0.1)

    assert result_of(cast) == (10, 1)
    assert [len(network[r].arguments("Cast")) for r in (A, B)] == [1, 1]
    assert member.primary == B


def test_cast_waits_out_a_reconnection(network):
    member, _ = joined_member(network)
    network[A].cut()
    network.settle()
    cast = member.cast(CS, {"play": "m1"})
    assert not cast.called
    network.run(0.1)
    assert result_of(cast) == (10, 1)


def test_cast_gives_up_when_no_primary_answers_in_time(network):
    member, _ = joined_member(network)
    for replica in network.replicas.values():
        replica.cut()
    cast = member.cast(CS, {"play": "m1"})
    network.run(4.9)
    assert not cast.called
    network.run(0.2)
    assert isinstance(failure_of(cast), GroupUnavailable)


def test_cast_refusals_and_unknown_groups_fail_at_once(network):
    member, _ = joined_member(network)
    member.views[CS] = ViewChanged(CS, 9, (ME,), (), (), 0)  # as if we had missed view 10
    refused = member.cast(CS, {})
    network.settle()
    assert isinstance(failure_of(refused), CoordinatorRefused)
    assert member.connected  # a refusal says nothing against the connection

    assert isinstance(failure_of(member.cast("video:1", {})), NotInGroup)


def test_next_ruid_and_status(network):
    member, _ = joined_member(network)
    ruid, status = member.next_ruid(), member.status()
    network.settle()
    assert (result_of(ruid), result_of(status)) == (101, {"v": 1, "replica": A})


def test_commands_fail_when_the_member_is_not_running(network):
    member, _ = make_member(network)
    assert isinstance(failure_of(member.next_ruid()), MemberStopped)


# -- stopping ----------------------------------------------------------------------------------------------


def test_stop_leaves_closes_and_cancels_every_timer(network):
    member, seen = joined_member(network)
    network.run(0.3)
    stopped = member.stop()
    network.settle()

    assert result_of(stopped) is None
    assert network[A].names()[-1] == "Leave"
    assert seen.states[-2:] == ["leaving", "stopped"]
    assert network[A].live() == []
    assert network.reactor.getDelayedCalls() == []
    network.run(2.0)
    assert network.connects == [A]
    assert result_of(member.stop()) is None


def test_stop_while_reconnecting_cancels_the_retry(network):
    for replica in network.replicas.values():
        replica.up = False
    member, seen = make_member(network)
    started = member.start()
    network.run(0.02)
    assert member.state is State.DISCONNECTED
    waiting = member.cast(CS, {})

    stopped = member.stop()
    network.settle()
    assert result_of(stopped) is None
    assert isinstance(failure_of(started), MemberStopped)
    assert isinstance(failure_of(waiting), MemberStopped)
    assert network.reactor.getDelayedCalls() == []
    assert seen.states[-1] == "stopped"


# -- the pure parts ----------------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_resets():
    backoff = Backoff()
    assert [backoff.next() for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.fresh and backoff.next() == 0.05


def test_coordinator_list_rotates_and_learns_primaries():
    coordinators = CoordinatorList([A, B, A])
    assert coordinators.addresses == (A, B)
    assert [coordinators.advance(), coordinators.advance()] == [B, A]
    assert coordinators.point_at(C) == C and coordinators.addresses == (A, B, C)
    assert coordinators.advance() == A
    with pytest.raises(ValueError):
        coordinators.point_at("nowhere")
    with pytest.raises(ValueError):
        CoordinatorList([])


@pytest.mark.parametrize("text", ["host", ":7000", "host:", "host:port", "host:0", "host:70000"])
def test_parse_address_refuses_non_addresses(text):
    with pytest.raises(ValueError):
        parse_address(text)
    assert parse_address("coord-1.example:7000") == ("coord-1.example", 7000)


def test_decode_events_is_all_or_nothing():
    assert decode_events([event_to_dict(VIEW)]) == [VIEW]
    for bad in ({}, [event_to_dict(VIEW), {"v": 1, "type": "ViewChanged"}], [["v", 1]]):
        with pytest.raises(ValueError):
            decode_events(bad)


def test_every_state_but_stopped_can_be_stopped():
    stoppable = {state for (state, input) in GroupMember._TRANSITIONS if input in ("stop", "left")}
    assert stoppable == set(State) - {State.STOPPED}


def test_bad_settings_are_usage_errors(network):
    with pytest.raises(UsageError):
        make_member(network, coordinators=["nowhere"])
    with pytest.raises(UsageError):
        GroupMember(network.reactor, [A], SECRET, ME, "robot", "cs", "10.1.0.1:8000")
    with pytest.raises(UsageError):
        make_member(network, heartbeat_interval=0)
    assert issubclass(GroupUnavailable, VodError) and issubclass(CoordinatorRefused, VodError)
