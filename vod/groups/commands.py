"""Commands for the group state machine: versioned, plain JSON-able dicts.

Build them with the `*_cmd` functions, never by hand. Every replica runs
`parse` on every command before the state machine looks at it, so a malformed
command is refused whole, identically everywhere, and never half-applied.
The shape of each command lives in `_FIELDS`, one line per op.
"""

import math
from collections.abc import Callable, Iterable, Mapping  # not typing's aliases: isinstance is slower through them
from typing import Any

from vod.errors import VodError
from vod.groups.records import is_version

COMMAND_VERSION = 1
KINDS = ("server", "client", "admin")


class BadCommand(VodError):
    """The group state refused a command; the state is exactly as it was before."""


class StaleView(BadCommand):
    """A cast addressed to a view that has since been replaced: resend it in the new view."""


Check = Callable[[str, Any], Any]


class _Optional:
    """Marks a field that may be absent (or None); it then parses as None."""

    def __init__(self, check: Check):
        self.check = check


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadCommand(f"{what} must be a non-empty string, not {value!r}")
    return str(value)


def _text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadCommand(f"{what} must be a string, not {value!r}")
    return str(value)


def _count(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadCommand(f"{what} must be a whole number >= 0, not {value!r}")
    return int(value)


def _kind(what: str, value: Any) -> str:
    if not isinstance(value, str) or value not in KINDS:
        raise BadCommand(f"{what} must be one of {', '.join(KINDS)}, not {value!r}")
    return value


def _address(what: str, value: Any) -> str:
    host, _, port = _name(what, value).rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise BadCommand(f"{what} must be host:port, not {value!r}")
    return value


def _names(what: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise BadCommand(f"{what} must be a list of names, not {value!r}")
    names = tuple(_name(f"{what}[{i}]", item) for i, item in enumerate(value))
    if len(set(names)) != len(names):
        raise BadCommand(f"{what} names someone twice: {list(names)!r}")
    return names


def _some_names(what: str, value: Any) -> tuple[str, ...]:
    names = _names(what, value)
    if not names:
        raise BadCommand(f"{what} must name at least one member")
    return names


def _incarnations(what: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise BadCommand(f"{what} must map member ids to incarnations, not {value!r}")
    return {_name(what, key): _count(f"{what}[{key!r}]", number) for key, number in value.items()}


def _json(what: str, value: Any) -> Any:
    """A fresh canonical copy of JSON data (tuples become lists), or BadCommand.

    Canonical so that replicas that received the command by different routes
    (pickled by pysyncobj, or restored from a JSON snapshot) hold equal data.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadCommand(f"{what} must be finite, not {value!r}")
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json(f"{what}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadCommand(f"{what} has a key that is not a string: {key!r}")
            copy[str(key)] = _json(f"{what}.{key}", item)
        return copy
    raise BadCommand(f"{what} is not JSON data: {type(value).__name__}")


def _data(what: str, value: Any) -> Any:
    try:
        return _json(what, value)
    except RecursionError:
        raise BadCommand(f"{what} is nested too deeply") from None


def _payload(what: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise BadCommand(f"{what} must be a dict, not {value!r}")
    return _data(what, value)


_FIELDS: dict[str, dict[str, Check | _Optional]] = {
    "join": {"member_id": _name, "kind": _kind, "domain": _name, "address": _address,
             "user": _text, "capacity": _count, "movies": _names},
    "leave": {"member_id": _name},
    "exclude": {"member_ids": _some_names, "reason": _text, "incarnations": _Optional(_incarnations)},
    "create_group": {"name": _name, "members": _names},
    "dissolve_group": {"name": _name},
    "regroup": {"name": _name, "members": _some_names},
    "cast": {"group": _name, "sender": _name, "payload": _payload, "view_id": _Optional(_count)},
    "next_ruid": {},
    "put": {"table": _name, "key": _name, "value": _data},
    "delete": {"table": _name, "key": _name},
}
OPS = tuple(_FIELDS)


def parse(command: Any) -> tuple[str, dict[str, Any]]:
    """`(op, fields)` with every field checked and normalised, or BadCommand."""
    if not isinstance(command, Mapping):
        raise BadCommand(f"a command is a dict, not {type(command).__name__}")
    if not is_version(command.get("v"), COMMAND_VERSION):
        raise BadCommand(f"unknown command version {command.get('v')!r} (this replica speaks v{COMMAND_VERSION})")
    op = command.get("op")
    shape = _FIELDS.get(op) if isinstance(op, str) else None
    if shape is None:
        raise BadCommand(f"unknown command op {op!r}")
    unknown = set(command) - set(shape) - {"v", "op"}
    if unknown:
        raise BadCommand(f"{op}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}")
    fields = {}
    for field, check in shape.items():
        value = command.get(field)
        if isinstance(check, _Optional):
            fields[field] = None if value is None else check.check(f"{op}: {field}", value)
        elif field not in command:
            raise BadCommand(f"{op}: missing field {field!r}")
        else:
            fields[field] = check(f"{op}: {field}", value)
    return op, fields


def _command(op: str, **fields: Any) -> dict[str, Any]:
    shape = _FIELDS[op]
    command = {"v": COMMAND_VERSION, "op": op}
    command.update(
        (field, value) for field, value in fields.items()
        if not (value is None and isinstance(shape[field], _Optional))
    )
    parse(command)  # refuse at the caller, not later on every replica
    return _json("command", command)


def join_cmd(member_id: str, kind: str, domain: str, address: str, *,
             user: str = "", capacity: int = 0, movies: Iterable[str] = ()) -> dict[str, Any]:
    """`member_id` (a server, client or admin at `address`) joins the group of `domain`."""
    return _command("join", member_id=member_id, kind=kind, domain=domain, address=address,
                    user=user, capacity=capacity, movies=list(movies))


def leave_cmd(member_id: str) -> dict[str, Any]:
    """`member_id` leaves every group it is in, and the system."""
    return _command("leave", member_id=member_id)


def exclude_cmd(member_ids: Iterable[str], reason: str,
                incarnations: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The failure detector's verdict: drop `member_ids` from every group.

    With `incarnations` (one per member id), a member is only excluded if it
    is still that incarnation, so a verdict on an old process that arrives
    after the member rejoined does not throw out the new one.
    """
    return _command("exclude", member_ids=list(member_ids), reason=reason,
                    incarnations=None if incarnations is None else dict(incarnations))


def create_group_cmd(name: str, members: Iterable[str]) -> dict[str, Any]:
    """A new group (e.g. `video_group(ruid)`) whose first view is `members`."""
    return _command("create_group", name=name, members=list(members))


def dissolve_group_cmd(name: str) -> dict[str, Any]:
    """End a group made by `create_group_cmd`."""
    return _command("dissolve_group", name=name)


def regroup_cmd(name: str, members: Iterable[str]) -> dict[str, Any]:
    """A new view of a created group with exactly `members` (a restripe brings in backup servers)."""
    return _command("regroup", name=name, members=sorted(members))


def cast_cmd(group: str, sender: str, payload: Mapping[str, Any], view_id: int | None = None) -> dict[str, Any]:
    """Deliver `payload` to every member of `group`'s current view, in total order.

    With `view_id`, the cast is refused (StaleView) if the view changed since
    the sender saw it: the strict virtual synchrony rule that a message is
    delivered in the view it was sent in.
    """
    return _command("cast", group=group, sender=sender, payload=payload, view_id=view_id)


def next_ruid_cmd() -> dict[str, Any]:
    """Hand out the next RUID."""
    return _command("next_ruid")


def put_cmd(table: str, key: str, value: Any) -> dict[str, Any]:
    """Set `tables[table][key] = value` (any JSON data)."""
    return _command("put", table=table, key=key, value=value)


def delete_cmd(table: str, key: str) -> dict[str, Any]:
    """Remove `tables[table][key]`; nothing happens if it is already gone."""
    return _command("delete", table=table, key=key)
