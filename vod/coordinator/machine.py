"""What a coordinator replica replicates: `GroupState` plus each member's recent deliveries.

`RaftLog` applies commands here on every replica in log order. Besides the
state's events, each apply works out who must receive what (recipients are
only valid right after the apply) and appends it to a bounded per-member
outbox. The outbox is what makes failover seamless for members: events the
old primary committed but never pushed are still in the new primary's
outboxes, so a member that reconnects and says where it is (`Resume`) gets
exactly what it missed; its `DeliveryLog` drops what it already had.

The outbox is derived data: not part of the snapshot, rebuilt as the log is
applied. It is bounded (`OUTBOX_LIMIT` events; they are shared with the other
members' outboxes, so an entry costs a reference). A member whose outbox lost
events (it overflowed, or the replica restored a snapshot since the member
joined) and whose position is older than what is kept gets a resync instead
of a replay (`resync`): the current views of its groups and the current
strategies and states of its requests. Replaying a truncated outbox lost
strategies: a server never learned its stripe, and its client waited forever.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from vod.coordinator.requests import RequestBook, is_request_command
from vod.groups.events import MemberExcluded, Resynced, event_to_dict
from vod.groups.state import BadSnapshot, GroupState, ruid_of_group

SNAPSHOT_VERSION = 1

# Events kept per member for a Resume replay: ~0.3 s of a server's pushes at 1,000 admissions/s (each
# admission pushes every server a view, a strategy and later a dissolve); beyond that, a resync. 10,000
# was tried: the events it keeps alive (clients' outboxes are not shared) cost more elections and member
# reconnections under bench/strategy.py's overload (2 runs each way).
OUTBOX_LIMIT = 1000


class GroupMachine:
    def __init__(self, outbox_limit: int = OUTBOX_LIMIT):
        self.state = GroupState()
        self.requests = RequestBook()
        self._outbox_limit = outbox_limit
        self._outboxes: dict[str, deque] = {}
        self._truncated: set[str] = set()  # members whose outbox lost events since they joined

    def apply(self, command: dict) -> dict[str, Any]:
        """Apply `command`; returns {"events": [...], "pushes": [[event, [member ids]], ...]} as plain data."""
        if is_request_command(command):
            pushed = self.requests.apply(command, self.state)
        else:
            events = self.state.apply(command)
            if command.get("op") == "join" and events:
                # A join is a new incarnation: what the previous one was owed is void. (A repeated
                # identical join returns no events and keeps the incarnation, and its outbox.)
                self._outboxes.pop(command.get("member_id"), None)
                self._truncated.discard(command.get("member_id"))
            pushed = [(event, None) for event in events]
            gone = [e.member_id for e in events if isinstance(e, MemberExcluded)]
            if command.get("op") == "leave":
                gone.append(command.get("member_id"))
            # The same log entry ends the requests of clients that are gone: every replica agrees when.
            pushed += self.requests.clients_gone(gone, self.state)
        pushes = []
        events = []
        for event, recipients in pushed:
            if recipients is None:
                recipients = self.state.recipients(event)
            data = event_to_dict(event)  # one dict per event, shared by the result, the pushes and outboxes
            events.append(data)
            outboxes, limit = self._outboxes, self._outbox_limit  # (inlined: ~a dozen outboxes per admission)
            for member_id in recipients:
                box = outboxes.get(member_id)
                if box is None:
                    box = outboxes[member_id] = deque(maxlen=limit)
                elif len(box) == limit:
                    self._truncated.add(member_id)  # its oldest event is dropped now
                box.append(data)
            if recipients:
                pushes.append([data, list(recipients)])
            if isinstance(event, MemberExcluded):
                self._outboxes.pop(event.member_id, None)
                self._truncated.discard(event.member_id)
        if command.get("op") == "leave":
            self._outboxes.pop(command.get("member_id"), None)
            self._truncated.discard(command.get("member_id"))
        return {"events": events, "pushes": pushes}

    def _outbox(self, member_id: str) -> deque:
        box = self._outboxes.get(member_id)
        if box is None:
            box = self._outboxes[member_id] = deque(maxlen=self._outbox_limit)
        return box

    def outbox(self, member_id: str) -> list[dict]:
        """Recent events owed to `member_id`, oldest first (for a `Resume` replay)."""
        return list(self._outboxes.get(member_id, ()))

    def outbox_complete(self, member_id: str) -> bool:
        """Whether `member_id`'s outbox holds every event it was owed since it joined (nothing dropped)."""
        return member_id not in self._truncated

    def replay(self, member_id: str, positions: Mapping[str, Any]) -> list[dict] | None:
        """What a member resuming from `positions` missed, from its outbox; None when the outbox cannot
        tell (it lost events and holds nothing the member says it saw): then it needs `resync`."""
        outbox = self.outbox(member_id)
        last = last_seen(outbox, positions)
        if last < 0 and not self.outbox_complete(member_id):
            return None
        return outbox[last + 1:]

    def resync(self, member_id: str, positions: Mapping[str, Any]) -> list[dict]:
        """The present, for a member whose replay would miss events (see `Resynced`).

        One `Resynced` per group it is in, then the current strategy of each active request whose video
        group it is in and, if it is a client, the current state of its requests in those groups and in
        the video groups it held a position in but is no longer in (ended meanwhile)."""
        state = self.state
        mine = sorted((name, group) for name, group in state.groups.items() if member_id in group.members)
        events = [event_to_dict(Resynced(name, group.view_id, group.members, group.casts, i == 0, i == len(mine) - 1))
                  for i, (name, group) in enumerate(mine)]
        now = {ruid for ruid in (ruid_of_group(name) for name, _ in mine) if ruid is not None}
        gone = {ruid for ruid in (ruid_of_group(name) for name in positions if isinstance(name, str))
                if ruid is not None} - now
        events += [event_to_dict(event) for event in self.requests.present(member_id, now, gone, state)]
        return events

    def snapshot(self) -> dict:
        return {"v": SNAPSHOT_VERSION, "groups": self.state.snapshot(), "requests": self.requests.snapshot()}

    def restore(self, snapshot: dict) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise BadSnapshot(f"unknown coordinator snapshot version {snapshot.get('v')!r}")
        self.state = GroupState.from_snapshot(snapshot["groups"])
        self.requests = RequestBook.from_snapshot(snapshot["requests"])
        self._outboxes = {}
        # What was owed before the snapshot is not known here: every member resuming is resynced.
        self._truncated = set(self.state.members)


def last_seen(outbox: list[dict], positions: Mapping[str, Any]) -> int:
    """The index of the last event in `outbox` that a member at `positions` had delivered (-1: none).

    One connection delivers in order, so everything before that event reached it too; replaying only
    what follows keeps a reconnect from replaying strategies and request changes it already acted on.
    A position [view_id, casts, 1] is a group the member saw dissolved there (its GroupDissolved).
    """
    for i in range(len(outbox) - 1, -1, -1):  # the newest first: a resuming member is usually close behind
        event = outbox[i]
        kind = event.get("type")
        if kind not in ("ViewChanged", "Delivered", "GroupDissolved"):
            continue  # only these carry a position in their group
        where = positions.get(event["group"])
        if not isinstance(where, (list, tuple)) or len(where) not in (2, 3) \
                or type(where[0]) is not int or type(where[1]) is not int:
            continue
        if kind == "GroupDissolved":
            if len(where) == 3 and event["view_id"] <= where[0]:
                return i
        elif (event["view_id"], event.get("seq", 0)) <= (where[0], where[1]):
            return i
    return -1
