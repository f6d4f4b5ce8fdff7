"""The member's side of ordered delivery: each group event once, in order, or a loud gap.

After a coordinator failover the new coordinator replays events from where
the member says it is, and may well resend some it already had. A
`DeliveryLog` keeps one position per group, `(view_id, seq)`, with a view
change at `(view_id, 0)`, drops what it has seen and refuses to skip ahead.
A group name used again after a dissolve starts at a higher view id (see
`vod.groups.state.Group`), which is how the new group is told from a replay
of the old one. Order is per group: Raft orders all groups together, but a member only
relies on the order within each group, which is the virtual synchrony promise.
"""

from collections import OrderedDict
from typing import Any, Mapping

from vod.errors import VodError
from vod.groups.events import GROUP_EVENTS, Delivered, GroupDissolved, ViewChanged

Position = tuple[int, int]
RECENT = 256  # groups whose latest event `resume_positions` names first (dissolved ones included)
RESUME_POSITIONS = 1_000  # at most this many live groups' positions in a Resume (the most recent first)
GroupEvent = ViewChanged | Delivered | GroupDissolved


class DeliveryGap(VodError):
    """An event that does not follow what was delivered: ask for a replay from `position`.

    `position` is None when nothing of `group` was delivered yet: the replay
    has to start at the view that brought this member in.
    """

    def __init__(self, group: str, position: Position | None, event: GroupEvent):
        self.group = group
        self.position = position
        self.event = event
        where = "nothing yet" if position is None else f"view {position[0]} cast {position[1]}"
        super().__init__(f"group {group}: {type(event).__name__} out of sequence after {where}: {event}")


class DeliveryLog:
    """Where member `member_id` is in each of its groups; `receive` says whether to hand an event on."""

    def __init__(self, member_id: str, positions: Mapping[str, Position] | None = None):
        self.member_id = member_id
        self._positions: dict[str, Position] = dict(positions or {})
        self._dissolved: dict[str, int] = {}  # group -> its last view id
        self._dissolved_at: dict[str, Position] = {}  # group -> where it was dissolved (recent ones)
        self._recent: OrderedDict[str, None] = OrderedDict()  # groups by their latest delivery, newest last

    def position(self, group: str) -> Position | None:
        """The last delivered `(view_id, seq)` of `group`; None if none (or dissolved)."""
        return self._positions.get(group)

    def positions(self) -> dict[str, Position]:
        """Every live group's position: what to tell a new coordinator to resume from."""
        return dict(self._positions)

    def resume_positions(self) -> dict[str, Any]:
        """What a Resume says: group -> [view_id, seq], bounded however many groups the member is in.

        The coordinator replays what follows the last event it finds the member had; that is most likely
        among the groups delivered to last, so those come first: the `RECENT` groups with the newest
        deliveries, a recently dissolved one as [view_id, casts, 1] (its GroupDissolved was delivered);
        then other live groups up to `RESUME_POSITIONS` in all."""
        out: dict[str, Any] = {}
        for group in reversed(self._recent):
            if group in self._positions:
                out[group] = list(self._positions[group])
            elif group in self._dissolved_at:
                out[group] = [*self._dissolved_at[group], 1]
        for group, position in self._positions.items():
            if len(out) >= RESUME_POSITIONS:
                break
            out.setdefault(group, list(position))
        return out

    def receive(self, event: GroupEvent) -> bool:
        """True: `event` is next, deliver it. False: a duplicate, drop it. DeliveryGap: something is missing.

        On DeliveryGap the log is unchanged, so the replay can be fed in as is.
        """
        if not isinstance(event, GROUP_EVENTS):
            raise TypeError(f"only group events are ordered, not {type(event).__name__}")
        if event.view_id <= self._dissolved.get(event.group, 0):
            return False  # a replay from before the group was dissolved
        position = self._positions.get(event.group)
        if position is None:
            # A member's first view of a group is always the one it joined in;
            # any other start means that view was lost.
            if not (isinstance(event, ViewChanged) and self.member_id in event.joined):
                raise DeliveryGap(event.group, None, event)
        elif _already_seen(event, position):
            return False
        elif not _follows(event, position):
            raise DeliveryGap(event.group, position, event)
        self._advance(event)
        return True

    def resync(self, group: str, view_id: int, casts: int) -> None:
        """The coordinator says where `group` is now (a `Resynced`): start from there, what came before is
        not coming. A replay of older events of it is dropped as seen."""
        self._positions[group] = (view_id, casts)
        self._dissolved.pop(group, None)

    def forget(self, group: str) -> Position | None:
        """`group` is gone for this member (after a resync it is not in it): its position, now dropped."""
        position = self._positions.pop(group, None)
        if position is not None:
            self._dissolved[group] = position[0]
        return position

    def _advance(self, event: GroupEvent) -> None:
        recent = self._recent
        recent[event.group] = None
        recent.move_to_end(event.group)
        if len(recent) > RECENT:
            self._dissolved_at.pop(recent.popitem(last=False)[0], None)
        if isinstance(event, GroupDissolved):
            del self._positions[event.group]
            self._dissolved[event.group] = event.view_id
            self._dissolved_at[event.group] = (event.view_id, event.casts)
        elif isinstance(event, ViewChanged):
            self._positions[event.group] = (event.view_id, 0)
        else:
            self._positions[event.group] = (event.view_id, event.seq)


def _already_seen(event: GroupEvent, position: Position) -> bool:
    if isinstance(event, ViewChanged):
        return (event.view_id, 0) <= position
    if isinstance(event, Delivered):
        return (event.view_id, event.seq) <= position
    return False  # the dissolve itself is never seen twice: see receive


def _follows(event: GroupEvent, position: Position) -> bool:
    view_id, seq = position
    if isinstance(event, ViewChanged):
        return event.view_id == view_id + 1 and event.previous_casts == seq
    if isinstance(event, Delivered):
        return event.view_id == view_id and event.seq == seq + 1
    return event.view_id == view_id and event.casts == seq
