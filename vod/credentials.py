"""User credentials: who a client or a `vod-admin` is when it does not hold the domain secret.

A credential is derived from the domain secret, so coordinators check it
without any stored table:

    credential(user, role) = HMAC-SHA256(secret, b"vod user credential v1|" + user + b"|" + role)

Whoever holds the secret can issue one (`vod-admin user add`); the holder of a
credential proves it the way secret holders prove theirs, by a MAC over the
coordinator's nonce (keyed with the credential instead of the secret), and
says which user and role it claims so the coordinator can derive the key.
The role is inside the MAC: a viewer cannot turn its file into an admin's.

Rotating the domain secret voids every credential at once; a single user is
shut out by revoking the name (a replicated list, see `vod-admin user revoke`).

The file (`vod-admin user add NAME --out FILE`, mode 600) is versioned JSON:

    {"v": 1, "format": "vod-credential", "user": "alice", "role": "viewer", "credential": "<64 hex digits>"}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from dataclasses import dataclass

from vod.errors import UsageError

CREDENTIAL_VERSION = 1
FORMAT = "vod-credential"
VIEWER, ADMIN = "viewer", "admin"
ROLES = (VIEWER, ADMIN)  # the roles a credential can carry; the domain secret is above both
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DERIVATION = b"vod user credential v1|"


def check_user_name(user: object) -> str:
    """A user name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (never '|')."""
    if not isinstance(user, str) or not _USER_NAME.fullmatch(user):
        raise UsageError(f"user name {user!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return user


def check_role(role: object) -> str:
    if role not in ROLES:
        raise UsageError(f"role {role!r}: a credential's role is one of {', '.join(ROLES)}")
    return role


def derive(secret: bytes, user: str, role: str) -> bytes:
    """The credential of (user, role) under `secret`; both are checked first, so the input is unambiguous."""
    check_user_name(user)
    check_role(role)
    return hmac.new(secret, _DERIVATION + user.encode() + b"|" + role.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class UserCredential:
    user: str
    role: str
    key: bytes  # the derived credential: what keys this user's authentication MAC

    def __repr__(self) -> str:  # never print the key into a log or a traceback
        return f"UserCredential(user={self.user!r}, role={self.role!r})"

    @classmethod
    def issue(cls, secret: bytes, user: str, role: str) -> "UserCredential":
        return cls(user, role, derive(secret, user, role))

    def to_json(self) -> str:
        return json.dumps({"v": CREDENTIAL_VERSION, "format": FORMAT, "user": self.user, "role": self.role,
                           "credential": self.key.hex()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "UserCredential":
        try:
            data = json.loads(text)
        except ValueError:
            raise UsageError(f"{where} is not a vod credential file (not JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"{where} is not a vod credential file (no \"format\": \"{FORMAT}\")")
        if data.get("v") != CREDENTIAL_VERSION:
            raise UsageError(f"{where} is a version {data.get('v')!r} credential; this vod reads version "
                             f"{CREDENTIAL_VERSION}: ask for a new one (vod-admin user add)")
        key = data.get("credential")
        if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{64}", key):
            raise UsageError(f"{where}: \"credential\" must be 64 lowercase hex digits")
        try:
            return cls(check_user_name(data.get("user")), check_role(data.get("role")), bytes.fromhex(key))
        except UsageError as err:
            raise UsageError(f"{where}: {err}") from None


def add_credential_argument(parser) -> None:
    parser.add_argument("--credential-file", metavar="FILE", default=None,
                        help="act as the user of this credential file (from vod-admin user add) instead of "
                             "with the domain secret")


def read_credential(path: str) -> UserCredential:
    """Read a credential file; like the secret file, it must be readable by its owner only."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            text = f.read(4096)
    except OSError as err:
        raise UsageError(f"credential file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a vod credential file (not UTF-8 text)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"credential file {path} is readable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}); fix it with: chmod 600 {path}")
    return UserCredential.from_json(text, f"credential file {path}")


def write_credential(path: str, credential: UserCredential) -> None:
    """Create `path` with mode 600; an existing file is never overwritten (it may be someone's credential)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists; remove it first or choose another --out") from None
    except OSError as err:
        raise UsageError(f"cannot create {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(credential.to_json() + "\n")
