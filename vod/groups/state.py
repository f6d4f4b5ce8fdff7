"""The group service's replicated state machine: commands in, events out.

Every coordinator replica applies the same commands in Raft log order, so
nothing here may depend on anything but the command and the state: no clock,
no randomness, and no iteration in dict order (a replica restored from a
snapshot has its dicts in a different order), only in sorted order.

Virtual synchrony then holds by construction: casts and view changes sit in
one total order, so every member that survives view v into v + 1 was
delivered exactly the casts of v, and an excluded member is simply never
addressed again.
"""

import copy
from dataclasses import dataclass, replace
from types import MappingProxyType
from collections.abc import Callable, Mapping  # not typing's aliases: isinstance is slower through them
from typing import Any

from vod.errors import VodError
from vod.groups.commands import BadCommand, StaleView, parse
from vod.groups.events import (
    Delivered, Event, GroupDissolved, MemberExcluded, RuidAssigned,
    TableDeleted, TablePut, ViewChanged,
)
from vod.groups.records import is_version, record_from_dict, record_to_dict

__all__ = ["BadCommand", "BadSnapshot", "GroupState", "Group", "Member", "StaleView",
           "domain_group", "video_group"]

SNAPSHOT_VERSION = 1
DOMAIN_PREFIX = "domain:"


def domain_group(domain: str) -> str:
    """The group every member of `domain` is in from its join until it leaves or is excluded."""
    return DOMAIN_PREFIX + domain


def video_group(ruid: int) -> str:
    """The conventional name of the group that serves one playback (`ruid` from `next_ruid_cmd`)."""
    return f"video:{ruid}"


def ruid_of_group(name: str) -> int | None:
    """The RUID of video group `name` (`video_group`), None for any other group name."""
    if not name.startswith("video:"):
        return None
    digits = name[len("video:"):]
    return int(digits) if digits.isascii() and digits.isdigit() else None


class BadSnapshot(VodError):
    """Data that `GroupState.from_snapshot` cannot restore."""


@dataclass(frozen=True)
class Member:
    """A live member. `incarnation` is new on every join, so a rejoin is a different member."""

    member_id: str
    kind: str
    domain: str
    address: str
    user: str
    capacity: int
    movies: tuple[str, ...]
    incarnation: int


@dataclass(frozen=True)
class Group:
    """A group in view `view_id`; the next cast in this view gets `next_seq`.

    A group's first view id is the log index of the command that made it, not
    1: a name used again after a dissolve then never repeats an old view id,
    so members can tell the new group from a replay of the old one.
    """

    name: str
    view_id: int
    members: tuple[str, ...]
    next_seq: int

    @property
    def casts(self) -> int:
        """How many casts this view has delivered so far."""
        return self.next_seq - 1


class GroupState:
    """Members, groups, the RUID counter and the generic tables, as one Raft replica holds them."""

    def __init__(self) -> None:
        self._last_applied = 0
        self._last_ruid = 0
        self._joins = 0
        self._members: dict[str, Member] = {}
        self._groups: dict[str, Group] = {}
        self._tables: dict[str, dict[str, Any]] = {}

    # -- reading ---------------------------------------------------------

    @property
    def last_applied(self) -> int:
        """Log index (or count) of the last command applied; 0 before the first."""
        return self._last_applied

    @property
    def last_ruid(self) -> int:
        return self._last_ruid

    @property
    def members(self) -> Mapping[str, Member]:
        return MappingProxyType(self._members)

    @property
    def groups(self) -> Mapping[str, Group]:
        return MappingProxyType(self._groups)

    def table(self, name: str) -> dict[str, Any]:
        """A copy of one table (empty if it has no rows)."""
        return _json_copy(self._tables.get(name, {}))

    def row(self, name: str, key: str) -> Any:
        """A copy of one row of a table (None if absent), without copying the rest of the table."""
        return _json_copy(self._tables.get(name, {}).get(key))

    def recipients(self, event: Event) -> tuple[str, ...]:
        """The member ids `event` must be pushed to.

        Valid right after the `apply` that returned `event`, before the next
        one: a cast goes to the view it was delivered in, which is the current
        one until the next command. Events with no recipients are answers for
        whoever submitted the command.
        """
        if isinstance(event, (ViewChanged, GroupDissolved)):
            return event.members
        if isinstance(event, Delivered):
            group = self._groups.get(event.group)
            if group is None or group.view_id != event.view_id:
                raise ValueError(f"{event} is not from the current view; ask for recipients right after apply")
            return group.members
        return ()

    # -- applying commands -------------------------------------------------

    def apply(self, command: Mapping[str, Any], index: int | None = None) -> list[Event]:
        """Apply one command (at Raft log `index`, if given) and return what happened.

        Raises BadCommand, leaving the state untouched, if the command is
        malformed or refused. `index` must grow but may skip (Raft log entries
        that are not ours); without it, applied commands are counted.
        """
        op, fields = parse(command)
        index = self._check_index(index)
        events = self._TRANSITIONS[op](self, index, **fields)
        self._last_applied = index
        return events

    def apply_step(self, op: str, **fields: Any) -> list[Event]:
        """Apply one step of a larger command that the caller built from data it has already checked
        (the request book's RUID, video group create and dissolve): as `apply` would, counting one
        applied command, but without building a command dict and parsing it. Building and parsing them
        twice was a quarter of an admission's apply, which every replica runs."""
        index = self._last_applied + 1
        events = self._TRANSITIONS[op](self, index, **fields)
        self._last_applied = index
        return events

    def _check_index(self, index: int | None) -> int:
        if index is None:
            return self._last_applied + 1
        if isinstance(index, bool) or not isinstance(index, int):
            raise BadCommand(f"log index must be a whole number, not {index!r}")
        if index <= self._last_applied:
            raise BadCommand(f"log index {index} already applied (last applied: {self._last_applied})")
        return index

    # Each transition checks everything first and mutates only after its last
    # raise. `index` is the log index being applied.

    def _join(self, index, member_id, kind, domain, address, user, capacity, movies) -> list[Event]:
        details = dict(kind=kind, domain=domain, address=address, user=user, capacity=capacity, movies=movies)
        existing = self._members.get(member_id)
        if existing is not None:
            if existing.address != address:
                raise BadCommand(f"member id {member_id} already in use (by {existing.address})")
            if replace(existing, **details) != existing:
                raise BadCommand(f"member id {member_id} already in use (joined from {address} "
                                 "with other details; leave first)")
            # The very same join again: a retry after a coordinator failover.
            return []
        self._joins += 1
        self._members[member_id] = Member(member_id, incarnation=self._joins, **details)
        name = domain_group(domain)
        group = self._groups.get(name)
        return [self._install_view(name, (group.members if group else ()) + (member_id,), index)]

    def _leave(self, index, member_id) -> list[Event]:
        if member_id not in self._members:
            raise BadCommand(f"no member {member_id}")
        return self._remove([member_id], index)

    def _exclude(self, index, member_ids, reason, incarnations) -> list[Event]:
        if incarnations is not None and set(incarnations) != set(member_ids):
            raise BadCommand("exclude: incarnations must name exactly the excluded members")
        # Members already gone (left, excluded, or since rejoined as a new
        # incarnation) are skipped: verdicts race with everything else.
        doomed = sorted(
            member_id for member_id in member_ids
            if member_id in self._members
            and (incarnations is None or incarnations[member_id] == self._members[member_id].incarnation)
        )
        verdicts: list[Event] = [MemberExcluded(member_id, reason) for member_id in doomed]
        return verdicts + self._remove(doomed, index)

    def _create_group(self, index, name, members) -> list[Event]:
        if name.startswith(DOMAIN_PREFIX):
            raise BadCommand(f"group {name}: domain groups are made by joins, not created")
        if name in self._groups:
            raise BadCommand(f"group {name} already exists")
        unknown = [member_id for member_id in members if member_id not in self._members]
        if unknown:
            raise BadCommand(f"group {name}: no member(s) {', '.join(unknown)}")
        return [self._install_view(name, members, index)]

    def _dissolve_group(self, index, name) -> list[Event]:
        group = self._existing_group(name)
        if name.startswith(DOMAIN_PREFIX):
            raise BadCommand(f"group {name}: domain groups last as long as the coordinator")
        del self._groups[name]
        return [GroupDissolved(name, group.view_id, group.casts, group.members)]

    def _regroup(self, index, name, members) -> list[Event]:
        group = self._existing_group(name)
        if name.startswith(DOMAIN_PREFIX):
            raise BadCommand(f"group {name}: domain views change only by joins, leaves and exclusions")
        unknown = [member_id for member_id in members if member_id not in self._members]
        if unknown:
            raise BadCommand(f"group {name}: no member(s) {', '.join(unknown)}")
        if tuple(sorted(members)) == group.members:
            return []
        return [self._install_view(name, members, index)]

    def _cast(self, index, group, sender, payload, view_id) -> list[Event]:
        current = self._existing_group(group)
        if sender not in current.members:
            raise BadCommand(f"{sender} is not a member of view {current.view_id} of {group}")
        if view_id is not None and view_id != current.view_id:
            raise StaleView(f"cast for view {view_id} of {group}, which is now in view {current.view_id}")
        self._groups[group] = replace(current, next_seq=current.next_seq + 1)
        return [Delivered(group, current.view_id, current.next_seq, sender, payload)]

    def _next_ruid(self, index) -> list[Event]:
        self._last_ruid += 1
        return [RuidAssigned(self._last_ruid)]

    def _put(self, index, table, key, value) -> list[Event]:
        self._tables.setdefault(table, {})[key] = value
        return [TablePut(table, key, copy.deepcopy(value))]

    def _delete(self, index, table, key) -> list[Event]:
        rows = self._tables.get(table, {})
        if key not in rows:
            return []
        del rows[key]
        if not rows:
            del self._tables[table]  # so equal contents always mean equal snapshots
        return [TableDeleted(table, key)]

    _TRANSITIONS: dict[str, Callable[..., list[Event]]] = {
        "join": _join, "leave": _leave, "exclude": _exclude,
        "create_group": _create_group, "dissolve_group": _dissolve_group, "regroup": _regroup, "cast": _cast,
        "next_ruid": _next_ruid, "put": _put, "delete": _delete,
    }

    def _existing_group(self, name: str) -> Group:
        group = self._groups.get(name)
        if group is None:
            raise BadCommand(f"no group {name}")
        return group

    def _remove(self, member_ids, index: int) -> list[Event]:
        """Drop members from the system: one new view for each group they were in."""
        gone = set(member_ids)
        for member_id in gone:
            del self._members[member_id]
        affected = sorted(name for name, group in self._groups.items() if gone.intersection(group.members))
        return [
            self._install_view(name, [m for m in self._groups[name].members if m not in gone], index)
            for name in affected
        ]

    def _install_view(self, name: str, members, index: int) -> ViewChanged:
        """Replace the view of group `name` by one with `members`; a new group starts at view `index`."""
        old = self._groups.get(name)
        if old is None:
            old = Group(name, view_id=index - 1, members=(), next_seq=1)
        members = tuple(sorted(members))
        self._groups[name] = Group(name, old.view_id + 1, members, next_seq=1)
        return ViewChanged(
            name, old.view_id + 1, members,
            joined=tuple(m for m in members if m not in old.members),
            left=tuple(m for m in old.members if m not in members),
            previous_casts=old.casts,
        )

    # -- snapshots ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON data, in a canonical (sorted) order."""
        return {
            "v": SNAPSHOT_VERSION,
            "last_applied": self._last_applied,
            "last_ruid": self._last_ruid,
            "joins": self._joins,
            "members": [record_to_dict(self._members[m]) for m in sorted(self._members)],
            "groups": [record_to_dict(self._groups[g]) for g in sorted(self._groups)],
            "tables": {
                table: {key: copy.deepcopy(rows[key]) for key in sorted(rows)}
                for table, rows in sorted(self._tables.items())
            },
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> "GroupState":
        """The state `snapshot()` described; BadSnapshot if `data` is not such a snapshot."""
        if not isinstance(data, Mapping) or not is_version(data.get("v"), SNAPSHOT_VERSION):
            raise BadSnapshot(f"not a v{SNAPSHOT_VERSION} group state snapshot")
        try:
            state = cls()
            state._last_applied = int(data["last_applied"])
            state._last_ruid = int(data["last_ruid"])
            state._joins = int(data["joins"])
            for item in data["members"]:
                member = record_from_dict(Member, item)
                state._members[member.member_id] = member
            for item in data["groups"]:
                group = record_from_dict(Group, item)
                state._groups[group.name] = group
            state._tables = {table: copy.deepcopy(dict(rows)) for table, rows in data["tables"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise BadSnapshot(f"damaged group state snapshot: {err}") from None
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupState):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return (f"<GroupState last_applied={self._last_applied} members={len(self._members)} "
                f"groups={len(self._groups)}>")


def _json_copy(value: Any) -> Any:
    """A copy of table data, which is plain JSON data (`put` stores what `parse` made of it, a snapshot
    what JSON made of it): copy.deepcopy without its memo, several times faster. Admission reads a
    catalogue row on every replica for every request."""
    if type(value) is dict:
        return {key: _json_copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_json_copy(item) for item in value]
    return value  # str, int, float, bool, None: immutable
