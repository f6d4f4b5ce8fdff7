"""In-memory fakes for unit tests: a Raft log that commits at once, and a member session that records pushes."""

from twisted.internet import defer

from vod.groups.raft import FOLLOWER, LEADER, RaftView


class FakeRaft:
    """Commits every proposal immediately, in order, on the caller's thread; the test sets the role."""

    def __init__(self, reactor, self_addr, peers, secret, machine, data_dir=None, settings=None,
                 on_view=None, on_applied=None):
        self.reactor = reactor
        self.self_addr = self_addr
        self.peers = list(peers)
        self.machine = machine
        self.on_view = on_view
        self.on_applied = on_applied
        self.acting = False
        self.started = False
        self.view = RaftView(FOLLOWER, None, 0, False, 0, tuple(sorted([self_addr, *peers])), ())
        self.membership_calls = []

    def start(self, peers=None):
        self.started = True
        if peers is not None:
            self.peers = [p for p in peers if p != self.self_addr]

    def stop(self):
        self.started = False

    def set_leader(self, term=1, connected=None):
        others = tuple(sorted(p for p in self.peers if p != self.self_addr))
        self.view = RaftView(LEADER, self.self_addr, term, True, self.machine.state.last_applied,
                             tuple(sorted([self.self_addr, *others])), others if connected is None else tuple(connected))
        self.acting = True
        if self.on_view:
            self.on_view(self.view)

    def is_acting_primary(self):
        return self.acting

    def propose(self, command):
        try:
            result = self.machine.apply(command)
        except Exception as err:  # the real RaftLog turns refusals into results the same way
            result = {"error": type(err).__name__, "message": str(err)}
        if self.on_applied:
            self.on_applied(command, result)
        return defer.succeed(result)

    def read(self, fn):
        return fn(self.machine)

    def remove_voter(self, addr):
        self.membership_calls.append(("remove", addr))
        self.peers.remove(addr)
        return defer.succeed(addr)

    def add_voter(self, addr):
        self.membership_calls.append(("add", addr))
        self.peers.append(addr)
        return defer.succeed(addr)


class FakeTransport:
    connected = True

    def loseConnection(self):
        self.connected = False

    def getPeer(self):
        return None


class RecordingSession:
    """Stands in for a MemberSession: what the replica pushes to it is kept in `delivered`."""

    def __init__(self, member_id):
        self.member_id = member_id
        self.delivered = []
        self.transport = FakeTransport()

    def deliver(self, events):
        self.delivered.extend(events)
