"""`vod-admin user add / revoke / restore`: issue user credentials and shut users out.

`add` is local: it derives the credential from the domain secret (so it needs
`--secret-file`) and writes the mode-600 file; no coordinator is asked, and
none keeps a list of users. `revoke` and `restore` change the replicated list
of revoked user names at the primary (an admin credential may do it too).
"""

from __future__ import annotations

from vod.credentials import ADMIN, ROLES, VIEWER, UserCredential, check_user_name, write_credential
from vod.errors import UsageError
from vod.groups.control import call_once
from vod.groups.wire import RevokeUser


def add_user_command(sub) -> None:
    user = sub.add_parser("user", help="issue user credentials (add), shut a user out (revoke) or back in (restore)",
                          description="Users: clients and vod-admin runs that do not hold the domain secret. "
                                      "See docs/SECURITY.md.")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="write a credential file for user NAME (needs the domain secret)",
                             description="Write a credential file (JSON, mode 600) for user NAME, derived from "
                                         "the domain secret. Give it to the user; it works until the user is "
                                         "revoked or the domain secret is rotated.")
    add.add_argument("name", metavar="NAME", help="the user's name (letters, digits, '.', '_', '-')")
    add.add_argument("--role", choices=ROLES, default=VIEWER,
                     help=f"{VIEWER}: plays and sees its own requests only; {ADMIN}: also every request and the "
                          "cluster-wide views (status, groups, servers), and may revoke users")
    add.add_argument("--out", metavar="FILE", required=True, help="the credential file to create (never overwritten)")
    for action, what in (("revoke", "refuse every credential of NAME from now on and close its connections"),
                         ("restore", "let NAME in again (its old credential files work again)")):
        a = actions.add_parser(action, help=what, description=what)
        a.add_argument("name", metavar="NAME")


def issue(args, secret: bytes) -> str:
    """`user add`: write the file; the message for the operator."""
    credential = UserCredential.issue(secret, args.name, args.role)
    write_credential(args.out, credential)
    return (f"wrote {args.out}: user {credential.user}, role {credential.role}; the user passes it with "
            "--credential-file (keep it mode 600)")


def check_issuer(key) -> bytes:
    if isinstance(key, UserCredential):
        raise UsageError("vod-admin user add derives credentials from the domain secret: give --secret-file, not "
                         "--credential-file")
    return key


async def set_access(reactor, args, target: str, key, member_id: str) -> str:
    """`user revoke / restore` at the primary `target`; the message for the operator."""
    name = check_user_name(args.name)
    revoke = args.action == "revoke"
    await call_once(reactor, target, key, member_id, RevokeUser, timeout=args.timeout, user=name, revoke=revoke)
    if revoke:
        return f"user {name} revoked: their credentials are refused and their connections closed"
    return f"user {name} restored: their credentials work again"
