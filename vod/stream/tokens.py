"""Stream tokens: the coordinator's permission for one client to receive the frames of one request.

A server streams request RUID to a connection only if its HELLO carries the
token the coordinator issued for (RUID, client). The token is a pure function
of the domain secret and that pair,

    token = "v1." + hex(HMAC-SHA256(K, b"vod stream token v1" | 0x00 | RUID as 8 bytes big-endian | client id))
    K     = HMAC-SHA256(domain secret, b"vod stream token key v1")

so nothing about it is stored or replicated: any coordinator replica (the new
primary after a failover too) issues the same token, and a server checks it
with the secret it already holds, without asking anyone. The secret never
enters the Raft log; the pushing replica mints the token as it pushes the
strategy to the request's client (`issue_in`).

K is derived rather than the secret used directly, so a stream token can never
be mistaken for a control-plane MAC (`vod.groups.wire.auth_mac`). "v1." keeps
the format explicit: a later scheme (an expiry, say) gets another prefix, and
a server can tell a token it does not understand from a forged one.

A token has no expiry: it is worth something only while its RUID's video group
lives (a server refuses a dissolved RUID anyway, and RUIDs are never reused),
and it dies with the domain secret.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from vod.errors import VodError

TOKEN_VERSION = 1
_PREFIX = f"v{TOKEN_VERSION}."
_KEY_LABEL = b"vod stream token key v1"
_TOKEN_LABEL = b"vod stream token v1\x00"
MAX_RUID = 2**64  # the frame header's RUID field is 8 bytes
_MAX_TEXT = 200  # a token is 67 characters; anything far longer is not worth hashing or quoting


class TokenRefused(VodError):
    """A HELLO without the coordinator's token for its RUID and client; the text says which and why."""


class StreamTokens:
    """Mints and checks stream tokens under one domain secret. Pure: no IO, no clock, no state."""

    def __init__(self, secret: bytes):
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()

    def mint(self, ruid: int, client: str) -> str:
        # surrogatepass: a client id from JSON may hold a lone surrogate; it gets a token that matches nothing.
        message = _TOKEN_LABEL + ruid.to_bytes(8, "big") + client.encode("utf-8", "surrogatepass")
        return _PREFIX + hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, ruid: int, client: str, token: Any) -> None:
        """Return if `token` is this domain's token for (`ruid`, `client`); TokenRefused saying why otherwise."""
        whom = f"RUID {ruid} as client {client[:_MAX_TEXT]!r}"
        if not 0 <= ruid < MAX_RUID:
            raise TokenRefused(f"HELLO for {whom}: no request has that RUID (RUIDs are 64-bit)")
        if token is None or token == "":
            raise TokenRefused(f"HELLO for {whom} carries no stream token (a client gets one from the "
                               "coordinator with each strategy)")
        if not isinstance(token, str) or not token.isascii() or len(token) > _MAX_TEXT:
            raise TokenRefused(f"HELLO for {whom}: the stream token is not a token")
        if not token.startswith(_PREFIX):
            raise TokenRefused(f"HELLO for {whom}: stream token version {token.split('.', 1)[0][:16]!r} is not "
                               f"supported (this server checks {_PREFIX[:-1]})")
        # compare_digest: how long the comparison takes says nothing about how much of a guess was right.
        if not hmac.compare_digest(self.mint(ruid, client).encode("ascii"), token.encode("ascii")):
            raise TokenRefused(f"HELLO for {whom}: the stream token was not issued for that RUID and client "
                               "(or under another domain secret)")

    def issue_in(self, events: list[dict], member_id: str) -> list[dict]:
        """`events` as pushed to `member_id`: each StrategyAssigned of a request of `member_id` with its token.

        Only the request's own client gets it (its servers hold the secret and need none). The events
        are the replicated ones (token ""), shared with every outbox: changed ones are copies.
        """
        out = []
        for event in events:
            if event.get("type") == "StrategyAssigned" and _client_of(event) == member_id:
                event = dict(event, token=self.mint(event["ruid"], member_id))
            out.append(event)
        return out


def _client_of(event: dict) -> str | None:
    strategy = event.get("strategy")
    return strategy.get("client") if isinstance(strategy, dict) else None
