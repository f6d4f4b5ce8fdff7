"""What the group state machine says happened: frozen, comparable, JSON-able.

The three group events (`ViewChanged`, `Delivered`, `GroupDissolved`) carry
enough position information for a member to check it missed nothing: a
member's stream for one group runs view, casts 1..n, next view (which says the
old view held n casts), and so on. `vod.groups.delivery` does that check.
"""

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from vod.groups.records import is_version, record_from_dict, record_to_dict

EVENT_VERSION = 1


@dataclass(frozen=True)
class ViewChanged:
    """`group` now has view `view_id` with `members` (sorted).

    `previous_casts` is how many casts view `view_id - 1` delivered, so a
    member moving into this view can tell whether it saw all of them.
    """

    group: str
    view_id: int
    members: tuple[str, ...]
    joined: tuple[str, ...]
    left: tuple[str, ...]
    previous_casts: int


@dataclass(frozen=True)
class Delivered:
    """Cast number `seq` (from 1 in each view) of view `view_id` of `group`."""

    group: str
    view_id: int
    seq: int
    sender: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class GroupDissolved:
    """`group` is gone; its last view was `view_id`, which delivered `casts` casts to `members`."""

    group: str
    view_id: int
    casts: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class RuidAssigned:
    """A fresh RUID: unique and larger than every RUID handed out before."""

    ruid: int


@dataclass(frozen=True)
class MemberExcluded:
    """The failure detector's verdict on `member_id` took effect; it gets nothing more."""

    member_id: str
    reason: str


@dataclass(frozen=True)
class TablePut:
    """`tables[table][key]` is now `value`."""

    table: str
    key: str
    value: Any


@dataclass(frozen=True)
class TableDeleted:
    """`tables[table][key]` is gone."""

    table: str
    key: str


@dataclass(frozen=True)
class StrategyAssigned:
    """Request `ruid` is served by `strategy` (a versioned Strategy dict); pushed to its video group.

    `reason` is "initial" or "restripe"; a member acts on the newest `revision` only.
    The revision is also the data plane's fencing token: a server stamps it on every frame.
    `token` is the client's stream token for this RUID (`vod.stream.tokens`), which its HELLO must
    carry: "" as replicated (no secret in the log); the replica pushing to the client fills it in.
    """

    ruid: int
    group: str
    revision: int
    reason: str
    strategy: dict[str, Any]
    addresses: dict[str, str]  # server id -> its data address "host:port", for the client to connect to
    token: str = ""


@dataclass(frozen=True)
class RequestChanged:
    """Request `ruid` (the client's `request_id`) moved to `state`; pushed to its client."""

    ruid: int
    request_id: str
    client: str
    state: str
    reason: str


@dataclass(frozen=True)
class Resynced:
    """The member's `Resume` position is older than what the coordinator still holds for it (its outbox is
    bounded): a replay would silently miss events, so it gets the present instead.

    One `Resynced` per group the member is in now: `group` is in view `view_id` with `members`, and
    `casts` casts delivered in it so far. `first` marks the first of the series, `last` the last. The
    member takes each as its new position in that group (no gap check: what it missed is not coming),
    and after the last treats every other group it held a position in as gone for it (GroupDissolved).
    The events after the series, in the same replay, are the present of its requests: the current
    `StrategyAssigned` of each active video group it is in and, to a client, a `RequestChanged` with the
    current state of each of its requests concerned."""

    group: str
    view_id: int
    members: tuple[str, ...]
    casts: int
    first: bool
    last: bool


Event = (ViewChanged | Delivered | GroupDissolved | RuidAssigned | MemberExcluded | TablePut | TableDeleted
         | StrategyAssigned | RequestChanged | Resynced)
GROUP_EVENTS = (ViewChanged, Delivered, GroupDissolved)
_EVENT_TYPES = {cls.__name__: cls for cls in Event.__args__}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as plain JSON data, for the wire: `{"v": 1, "type": "Delivered", ...}`."""
    return {"v": EVENT_VERSION, "type": type(event).__name__, **record_to_dict(event)}


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Inverse of `event_to_dict`; ValueError for anything else."""
    if not isinstance(data, Mapping) or not is_version(data.get("v"), EVENT_VERSION):
        raise ValueError(f"not a v{EVENT_VERSION} event: {data!r}")
    cls = _EVENT_TYPES.get(data.get("type"))
    if cls is None:
        raise ValueError(f"unknown event type {data.get('type')!r}")
    fields = {name: value for name, value in data.items() if name not in ("v", "type")}
    return record_from_dict(cls, fields)
