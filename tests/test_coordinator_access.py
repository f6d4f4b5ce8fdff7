"""Users and roles at the coordinator: real AMP boxes (iosim) to a MemberSession on a FakeRaft and a Clock.

Viewer A cannot see, cancel or CDONE viewer B's RUID; a viewer cannot use the cluster-wide views nor the
members' commands; an admin sees everybody; a wrong credential, a role claimed above the credential and a
revoked user are refused; a user cannot take over another user's member id.
"""

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from fakes import FakeRaft, RecordingSession
from vod.coordinator import requests as rq
from vod.coordinator.replica import CoordinatorReplica
from vod.coordinator.session import MemberSession
from vod.credentials import UserCredential
from vod.groups import commands as gc
from vod.groups import wire
from vod.strategy.mask import FrameMask

SECRET = b"s" * 32
PEERS = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
N = 24
ALICE = UserCredential.issue(SECRET, "alice", "viewer")
BOB = UserCredential.issue(SECRET, "bob", "viewer")
ROOT = UserCredential.issue(SECRET, "root", "admin")
FULL = rq.mask_to_text(FrameMask.full(N))


class Link(amp.AMP):
    """The member's end: keeps what the coordinator pushes and whether it hung up."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.lost = False

    @wire.Deliver.responder
    def deliver(self, events, term):
        self.events.extend(events)
        return {}

    def connectionLost(self, reason):
        self.lost = True
        super().connectionLost(reason)


@pytest.fixture
def replica():
    r = CoordinatorReplica(Clock(), replica_id="c1", raft_addr=PEERS[0], peers=PEERS, listen="127.0.0.1:11",
                           secret=SECRET, data_dir=None, raft_factory=FakeRaft)
    r.raft.set_leader(term=3)
    r._check()
    r.join(RecordingSession("s1"), "server", "d", "127.0.0.1:9001", "", 1, ["m"])
    r.raft.propose(gc.put_cmd(rq.MOVIES_TABLE, "m", {"frame_count": N, "fps": 24, "width": 8, "height": 8}))
    return r


class Member:
    """One connection, authenticated with `key` (the secret or a credential) as `member_id`."""

    def __init__(self, replica, key, member_id):
        self.link, self.session, self.pump = iosim.connectedServerAndClient(lambda: MemberSession(replica), Link)
        nonce = self.call(wire.Challenge, protocol=wire.PROTOCOL_VERSION)["nonce"]
        self.answer = self.call(wire.Authenticate, **wire.authenticate_arguments(key, nonce, member_id))

    def call(self, command, **arguments):
        results = []
        self.link.callRemote(command, **arguments).addBoth(results.append)
        self.pump.flush()
        assert results, f"{command.__name__} was not answered"
        return results[0]

    def refused(self, command, **arguments) -> str:
        result = self.call(command, **arguments)
        assert isinstance(result, Failure) and result.check(wire.Refused), result
        return result.getErrorMessage()

    def join(self, user="", kind="client"):
        return self.call(wire.Join, kind=kind, domain="d", address=f"h:{id(self) % 60000 + 1}", user=user,
                         capacity=0, movies=[])

    def open(self, request_id="r1"):
        return self.call(wire.OpenRequest, request_id=request_id, movie="m", wanted=FULL)["ruid"]

    def listed(self):
        return [r["ruid"] for r in self.call(wire.Requests)["requests"]]


def shut_out(member) -> bool:
    """Authentication refused and the connection closed (iosim drops the AuthFailed box written after the
    close, which TCP delivers: tests/test_coordinator_integration.py sees it)."""
    member.pump.flush()
    return isinstance(member.answer, Failure) and member.link.lost


def client(replica, key, member_id):
    member = Member(replica, key, member_id)
    assert "view" in member.join(user=getattr(key, "user", ""))
    return member


def test_a_viewer_sees_cancels_and_completes_only_its_own_requests(replica):
    a = client(replica, ALICE, "client-a")
    b = client(replica, BOB, "client-b")
    ruid = a.open()
    own = b.open()

    assert b.listed() == [own]
    assert "no request with RUID" in b.refused(wire.GetRequest, ruid=ruid)
    for command, arguments in [(wire.CDone, {"held": FULL}), (wire.Cancel, {}), (wire.Started, {}),
                               (wire.Progress, {"held": FULL})]:
        assert f"no request with RUID {ruid} among the requests of user bob" in \
            b.refused(command, ruid=ruid, **arguments)
    assert replica.raft.read(lambda m: m.requests.request(ruid))["state"] == rq.STRATEGIZED

    assert a.listed() == [ruid]
    record = a.call(wire.GetRequest, ruid=ruid)["request"]
    assert record["user"] == "alice" and record["client"] == "client-a"
    assert a.call(wire.CDone, ruid=ruid, held=FULL) == {}
    assert replica.raft.read(lambda m: m.requests.request(ruid))["state"] == rq.DONE
    assert [c["client"] for c in b.call(wire.Requests)["caches"]] == []  # alice's cache is hers too
    assert not a.link.lost and not b.link.lost  # refusals answer; they do not hang up


@pytest.mark.parametrize("command, arguments", [
    (wire.Status, {}), (wire.NextRuid, {}), (wire.RevokeUser, {"user": "bob", "revoke": True}),
    (wire.Cast, {"group": "domain:d", "view_id": 1, "payload": {}}),
    (wire.RegisterStandby, {"replica_id": "c9", "raft": "h:1", "listen": "h:2"}),
    (wire.RegisterMovies, {"movies": []}),
])
def test_a_viewer_may_not_use_cluster_views_or_the_members_commands(replica, command, arguments):
    # A standby registers before it joins anything; everything else is asked by a joined client.
    viewer = Member(replica, ALICE, "replica:c9") if command is wire.RegisterStandby else \
        client(replica, ALICE, "client-a")
    assert "you are user alice (viewer)" in viewer.refused(command, **arguments)
    assert viewer.listed() == []  # still connected and served


def test_an_admin_sees_everybody_and_the_domain_secret_still_works(replica):
    a = client(replica, ALICE, "client-a")
    b = client(replica, BOB, "client-b")
    ruids = [a.open(), b.open()]

    admin = Member(replica, ROOT, "vod-admin")
    assert admin.answer == {}
    assert admin.listed() == ruids
    assert admin.call(wire.GetRequest, ruid=ruids[0])["request"]["user"] == "alice"
    assert admin.call(wire.Status)["status"]["replica"]["id"] == "c1"
    assert "holding the domain secret" in admin.refused(wire.NextRuid)

    operator = Member(replica, SECRET, "vod-admin")  # the old Authenticate: no user, no role
    assert operator.listed() == ruids
    assert operator.call(wire.NextRuid)["ruid"] > max(ruids)


@pytest.mark.parametrize("key", [
    UserCredential.issue(b"another domain's secret.", "alice", "viewer"),  # wrong credential
    UserCredential("alice", "admin", ALICE.key),  # a viewer's credential claiming the admin role
    UserCredential("bob", "viewer", ALICE.key),  # someone else's name
])
def test_a_wrong_credential_is_refused_and_that_connection_closed(replica, key, caplog):
    assert shut_out(Member(replica, key, "client-x"))
    assert "wrong credential for user" in caplog.text
    bystander = client(replica, ALICE, "client-a")  # nothing else disturbed
    assert bystander.listed() == []


def test_a_user_joins_as_a_client_and_as_itself_only(replica):
    assert "joins as a client only" in Member(replica, ALICE, "srv").call(wire.Join, kind="server", domain="d",
                                                                             address="h:5", user="", capacity=1,
                                                                             movies=[]).getErrorMessage()
    member = Member(replica, ALICE, "client-a")
    assert "cannot join as user bob" in member.join(user="bob").getErrorMessage()
    assert "view" in member.join(user="")  # "" means: the user I authenticated as
    assert replica.raft.read(lambda m: m.state.members["client-a"].user) == "alice"


def test_a_user_cannot_take_over_another_users_member_id(replica):
    a = client(replica, ALICE, "client-a")
    ruid = a.open()
    impostor = Member(replica, BOB, "client-a")
    assert "belongs to another user" in impostor.join(user="bob").getErrorMessage()
    assert "belongs to another user" in impostor.refused(wire.Resume, positions={})
    assert replica.sessions["client-a"] is a.session and not a.link.lost
    assert a.call(wire.GetRequest, ruid=ruid)["request"]["state"] == rq.STRATEGIZED


def test_a_revoked_user_is_cut_off_and_refused_until_restored(replica, caplog):
    a = client(replica, ALICE, "client-a")
    admin = Member(replica, ROOT, "vod-admin")
    assert admin.call(wire.RevokeUser, user="alice", revoke=True) == {}
    a.pump.flush()
    assert a.link.lost
    assert shut_out(Member(replica, ALICE, "client-a"))
    assert "user alice is revoked" in caplog.text
    assert Member(replica, BOB, "client-b").answer == {}  # only alice
    assert admin.call(wire.RevokeUser, user="alice", revoke=False) == {}
    assert Member(replica, ALICE, "client-a").answer == {}
