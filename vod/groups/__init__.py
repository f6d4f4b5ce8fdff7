"""Group service: virtual synchrony (views, ordered casts) on Raft, behind our own interface (issue 3).

The pure core lives here: `GroupState` (the replicated state machine every
coordinator replica applies in log order), the command constructors, the
events it returns, `DeliveryLog` (a member's exactly-once, in-order check) and
`FailureDetector` (heartbeat bookkeeping). No networking, threads or clocks.
"""

from vod.groups.commands import (
    BadCommand, StaleView, cast_cmd, create_group_cmd, delete_cmd, dissolve_group_cmd,
    exclude_cmd, join_cmd, leave_cmd, next_ruid_cmd, put_cmd, regroup_cmd,
)
from vod.groups.delivery import DeliveryGap, DeliveryLog
from vod.groups.events import (
    Delivered, Event, GroupDissolved, MemberExcluded, RuidAssigned, TableDeleted, TablePut,
    ViewChanged, event_from_dict, event_to_dict,
)
from vod.groups.liveness import FailureDetector
from vod.groups.state import BadSnapshot, Group, GroupState, Member, domain_group, video_group

__all__ = [
    "BadCommand", "BadSnapshot", "Delivered", "DeliveryGap", "DeliveryLog", "Event",
    "FailureDetector", "Group", "GroupDissolved", "GroupState", "Member", "MemberExcluded",
    "RuidAssigned", "StaleView", "TableDeleted", "TablePut", "ViewChanged",
    "cast_cmd", "create_group_cmd", "delete_cmd", "dissolve_group_cmd", "domain_group",
    "event_from_dict", "event_to_dict", "exclude_cmd", "join_cmd", "leave_cmd",
    "next_ruid_cmd", "put_cmd", "regroup_cmd", "video_group",
]
