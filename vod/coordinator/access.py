"""Who may do what on a coordinator: one table and a few pure checks, used by `MemberSession`.

A connection authenticates as one principal (see `vod/credentials.py`):

- `operator`: holds the domain secret. Servers, coordinator replicas and the operator's own tools; may do
  everything, under any member id (whoever holds the secret can issue any credential anyway).
- `admin`: a user credential with role admin. Cluster-wide views (status, every request, caches), revoking
  users; as a client, like a viewer.
- `viewer`: a user credential with role viewer. Joins as a client only, and sees, cancels and completes
  only its own user's requests.

Every check raises `Refused` with the text the caller sees; nothing here touches a connection or the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vod.credentials import ADMIN, VIEWER
from vod.groups.wire import Refused

OPERATOR = "operator"
RANK = {VIEWER: 0, ADMIN: 1, OPERATOR: 2}
REVOKED_TABLE = "revoked_users"  # replicated: user name -> {"at", "by"}

# The least role a command needs. Commands not listed are open to every authenticated principal, and the
# checks below then keep a user to its own members and requests.
NEEDS: dict[str, str] = {
    "Status": ADMIN,
    "Groups": ADMIN,
    "RevokeUser": ADMIN,
    "Cast": OPERATOR,  # no client casts; a user must not talk into other members' groups
    "NextRuid": OPERATOR,
    "RegisterMovies": OPERATOR,
    "RegisterStandby": OPERATOR,
}


@dataclass(frozen=True)
class Principal:
    user: str  # "" for the domain secret
    role: str

    @property
    def label(self) -> str:
        return "a holder of the domain secret" if self.role == OPERATOR else f"user {self.user} ({self.role})"

    def at_least(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


SECRET_HOLDER = Principal("", OPERATOR)


def authorise(principal: Principal, command: str) -> None:
    needed = NEEDS.get(command)
    if needed is None or principal.at_least(needed):
        return
    if needed == OPERATOR:
        raise Refused(f"{command} is for members holding the domain secret (servers, replicas); "
                      f"you are {principal.label}")
    raise Refused(f"{command} needs the {needed} role; you are {principal.label}: ask an operator for an "
                  f"{needed} credential (vod-admin user add NAME --role {needed})")


def check_not_revoked(principal: Principal, revoked: Mapping[str, Any]) -> None:
    if principal.role != OPERATOR and principal.user in revoked:
        raise Refused(f"user {principal.user} is revoked; an operator can let them in again with "
                      f"vod-admin user restore {principal.user}")


def join_user(principal: Principal, kind: str, user: str) -> str:
    """The user a Join records for the member: a user credential joins as a client, as itself only."""
    if principal.role == OPERATOR:
        return user
    if kind != "client":
        raise Refused(f"a user credential joins as a client only, not as a {kind}; servers and replicas use "
                      "the domain secret")
    if user not in ("", principal.user):
        raise Refused(f"you authenticated as user {principal.user}; you cannot join as user {user}")
    return principal.user


def check_member(principal: Principal, member_id: str, member_user: str | None) -> None:
    """Join or Resume as `member_id`, held now by `member_user` (None: nobody): a user takes only its own."""
    if principal.role == OPERATOR or member_user is None or member_user == principal.user:
        return
    raise Refused(f"member id {member_id} belongs to another user; choose another --id")


def may_see(principal: Principal, record: Mapping[str, Any]) -> bool:
    return principal.at_least(ADMIN) or record.get("user", "") == principal.user


def check_owner(principal: Principal, ruid: int, record: Mapping[str, Any] | None) -> None:
    """A request command or view for `ruid`: a viewer's own requests only (and no hint that others exist)."""
    if record is None or not may_see(principal, record):
        scope = "" if principal.at_least(ADMIN) else f" among the requests of user {principal.user}"
        raise Refused(f"no request with RUID {ruid}{scope}")


def visible(principal: Principal, records: Iterable[Mapping[str, Any]]) -> list:
    return [r for r in records if may_see(principal, r)]
