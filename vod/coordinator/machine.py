"""What a coordinator replica replicates: `GroupState` plus each member's recent deliveries.

`RaftLog` applies commands here on every replica in log order. Besides the
state's events, each apply works out who must receive what (recipients are
only valid right after the apply) and appends it to a bounded per-member
outbox. The outbox is what makes failover seamless for members: events the
old primary committed but never pushed are still in the new primary's
outboxes, so a member that reconnects and says where it is (`Resume`) gets
exactly what it missed; its `DeliveryLog` drops what it already had.

The outbox is derived data: not part of the snapshot, rebuilt as the log is
applied. After a restore from a snapshot it starts empty, and members whose
position is older than what is kept must join again.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from vod.coordinator.requests import RequestBook, is_request_command
from vod.groups.events import MemberExcluded, event_to_dict
from vod.groups.state import BadSnapshot, GroupState

SNAPSHOT_VERSION = 1

OUTBOX_LIMIT = 1000


class GroupMachine:
    def __init__(self, outbox_limit: int = OUTBOX_LIMIT):
        self.state = GroupState()
        self.requests = RequestBook()
        self._outbox_limit = outbox_limit
        self._outboxes: dict[str, deque] = {}

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
            for member_id in recipients:
                self._outbox(member_id).append(data)
            if recipients:
                pushes.append([data, list(recipients)])
            if isinstance(event, MemberExcluded):
                self._outboxes.pop(event.member_id, None)
        if command.get("op") == "leave":
            self._outboxes.pop(command.get("member_id"), None)
        return {"events": events, "pushes": pushes}

    def _outbox(self, member_id: str) -> deque:
        box = self._outboxes.get(member_id)
        if box is None:
            box = self._outboxes[member_id] = deque(maxlen=self._outbox_limit)
        return box

    def outbox(self, member_id: str) -> list[dict]:
        """Recent events owed to `member_id`, oldest first (for a `Resume` replay)."""
        return list(self._outboxes.get(member_id, ()))

    def snapshot(self) -> dict:
        return {"v": SNAPSHOT_VERSION, "groups": self.state.snapshot(), "requests": self.requests.snapshot()}

    def restore(self, snapshot: dict) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise BadSnapshot(f"unknown coordinator snapshot version {snapshot.get('v')!r}")
        self.state = GroupState.from_snapshot(snapshot["groups"])
        self.requests = RequestBook.from_snapshot(snapshot["requests"])
        self._outboxes = {}
