"""The control-plane protocol between members (servers, clients, admins) and coordinators: AMP commands.

Every connection starts with a challenge-response on the domain secret or a
user credential derived from it (`Challenge`, then `Authenticate` with
HMAC-SHA256(key, nonce | member id); `vod/credentials.py`); any other command
before that is refused and the connection closed. Values
that carry structure are JSON text with a version field (`{"v": 1, ...}`),
never pickle. A replica that is not the acting primary answers every member
command with `NotPrimary`, whose description is the primary's listen address
(empty when unknown); members follow it.

Coordinator -> member: `Deliver` pushes committed events (views, casts) in log
order; each event carries its group position (view id, seq), so a member that
reconnects after a failover resumes with `Resume` and drops duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zlib
from typing import Any

from twisted.protocols import amp

from vod.credentials import UserCredential

PROTOCOL_VERSION = 1
MAX_JSON = 60_000  # one AMP value holds at most 65,535 bytes
COMPRESS_ABOVE = 8_000
MAX_EXPANDED = 16_000_000
ZLIB_MARKER = b"\x00Z"


class NotPrimary(Exception):
    """This replica is not the acting primary; the description is where the primary listens."""


class AuthFailed(Exception):
    """Wrong secret, or a command before authentication."""


class Refused(Exception):
    """The command is well-formed but the coordinator refuses it; the description says why."""


COMMON_ERRORS = {NotPrimary: b"NOT_PRIMARY", AuthFailed: b"AUTH_FAILED", Refused: b"REFUSED"}


class EncodedJson(bytes):
    """JSON text already encoded as `Json` encodes it (compact, sorted keys): sent as is, not dumped again.

    The primary pushes the same events to several members; it encodes each once (`encode_json`)."""


def encode_json(value: Any) -> EncodedJson:
    return EncodedJson(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def json_list(items: list[EncodedJson]) -> EncodedJson:
    """The encoded JSON array of already encoded items: the same text `encode_json` gives for the list."""
    return EncodedJson(b"[" + b",".join(items) + b"]")


def encoded_size(value: Any) -> int:
    """How many bytes `value` takes as one `Json` AMP value (compressed as `Json` compresses it)."""
    data = bytes(value) if isinstance(value, EncodedJson) else \
        json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > COMPRESS_ABOVE:
        return len(ZLIB_MARKER) + len(zlib.compress(data, 6))
    return len(data)


def fits(value: Any, limit: int = MAX_JSON) -> bool:
    """Whether `value` travels as one `Json` AMP value of at most `limit` bytes."""
    return encoded_size(value) <= limit


class Json(amp.Argument):
    """A JSON value, size-limited, decoded strictly (a bad value is a protocol error: always ValueError).

    Encoding: the UTF-8 JSON text; or, when that is over `COMPRESS_ABOVE` bytes
    (strategies carry frame masks), the marker b"\\x00Z" then the zlib-compressed
    text. Decompression stops at `MAX_EXPANDED` bytes, so a small box cannot
    make us allocate without bound.
    """

    def toString(self, inObject: Any) -> bytes:
        if isinstance(inObject, EncodedJson):
            data = bytes(inObject)
        else:
            data = json.dumps(inObject, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > COMPRESS_ABOVE:
            data = ZLIB_MARKER + zlib.compress(data, 6)
        if len(data) > MAX_JSON:
            raise ValueError(f"JSON value of {len(data)} bytes (compressed) exceeds {MAX_JSON}")
        return data

    def fromString(self, inString: bytes) -> Any:
        if len(inString) > MAX_JSON:
            raise ValueError("JSON value too large")
        if inString.startswith(ZLIB_MARKER):
            inflater = zlib.decompressobj()
            try:
                inString = inflater.decompress(inString[len(ZLIB_MARKER):], MAX_EXPANDED)
            except zlib.error as err:
                raise ValueError(f"compressed JSON value is corrupt ({err})") from None
            if inflater.unconsumed_tail or not inflater.eof:
                raise ValueError("compressed JSON value is truncated or expands beyond the limit")
        try:
            return json.loads(inString.decode("utf-8"))
        except RecursionError:
            raise ValueError("JSON value nested too deeply") from None


class Challenge(amp.Command):
    arguments = [(b"protocol", amp.Integer())]
    response = [(b"nonce", amp.String()), (b"replica", amp.Unicode())]
    errors = COMMON_ERRORS


class Authenticate(amp.Command):
    """Prove the domain secret (`mac` keyed with it), or a user credential: then `user` and `role` say whose,
    and `mac` is keyed with that credential (`vod/credentials.py`). Both absent: the domain secret."""

    arguments = [(b"member_id", amp.Unicode()), (b"mac", amp.String()),
                 (b"user", amp.Unicode(optional=True)), (b"role", amp.Unicode(optional=True))]
    response: list = []
    errors = COMMON_ERRORS


class Join(amp.Command):
    """Join the domain group as `kind`; the answer is the member's incarnation and the domain's view."""

    arguments = [(b"kind", amp.Unicode()), (b"domain", amp.Unicode()), (b"address", amp.Unicode()),
                 (b"user", amp.Unicode()), (b"capacity", amp.Integer()), (b"movies", Json())]
    response = [(b"view", Json()), (b"term", amp.Integer())]
    errors = COMMON_ERRORS


class Resume(amp.Command):
    """After reconnecting: the member's last delivered position per group; the primary replays the rest."""

    arguments = [(b"positions", Json())]
    response = [(b"term", amp.Integer())]
    errors = COMMON_ERRORS


class Heartbeat(amp.Command):
    arguments: list = []
    response = [(b"term", amp.Integer())]
    errors = COMMON_ERRORS


class Leave(amp.Command):
    arguments: list = []
    response: list = []
    errors = COMMON_ERRORS


class Cast(amp.Command):
    """An ordered message to a group, sent in the view the sender last saw."""

    arguments = [(b"group", amp.Unicode()), (b"view_id", amp.Integer()), (b"payload", Json())]
    response = [(b"view_id", amp.Integer()), (b"seq", amp.Integer())]
    errors = COMMON_ERRORS


class NextRuid(amp.Command):
    arguments: list = []
    response = [(b"ruid", amp.Integer())]
    errors = COMMON_ERRORS


class Status(amp.Command):
    """Any replica answers (no NotPrimary): its own view of the cluster, as `vod-admin status` shows it.

    Bounded whatever the number of requests (status v2): counts of everything, the members, and the
    domain groups plus the most recent video groups (`groups_more` says how many are left out; `Groups`
    lists them all, page by page)."""

    arguments: list = []
    response = [(b"status", Json())]
    errors = COMMON_ERRORS


class Groups(amp.Command):
    """Admin: every group with its view, in name order, one bounded page at a time.

    `after`: the last group name of the previous page (absent: from the start); `limit`: at most this
    many groups (capped by the replica). The answer is {"v": 1, "groups": [...], "total", "next"}:
    `next` is the `after` of the next page, null on the last one."""

    arguments = [(b"after", amp.Unicode(optional=True)), (b"limit", amp.Integer(optional=True))]
    response = [(b"groups", Json())]
    errors = COMMON_ERRORS


class RegisterStandby(amp.Command):
    """A standby replica offers itself to the primary as a future voter (the seed's SETUP)."""

    arguments = [(b"replica_id", amp.Unicode()), (b"raft", amp.Unicode()), (b"listen", amp.Unicode())]
    response = [(b"voters", Json())]
    errors = COMMON_ERRORS


class RegisterMovies(amp.Command):
    """A server tells the coordinator the movies it holds: [{"id", "frame_count", "fps", "width", "height"}]."""

    arguments = [(b"movies", Json())]
    response: list = []
    errors = COMMON_ERRORS


class OpenRequest(amp.Command):
    """A client asks for frames of a movie (seed: REQUEST). `wanted` is a base64 FrameMask wire encoding.

    The answer is the RUID; the strategy arrives as a StrategyAssigned push to the video group. The
    client-chosen `request_id` makes retries safe: the same id always gets the same RUID.
    """

    arguments = [(b"request_id", amp.Unicode()), (b"movie", amp.Unicode()), (b"wanted", amp.Unicode())]
    response = [(b"ruid", amp.Integer()), (b"state", amp.Unicode())]
    errors = COMMON_ERRORS


class Started(amp.Command):
    """The client receives frames of `ruid`: the request is streaming."""

    arguments = [(b"ruid", amp.Integer())]
    response: list = []
    errors = COMMON_ERRORS


class Progress(amp.Command):
    """The client's latest held mask for `ruid` (base64), sent every second or so while streaming.

    Kept in the primary's memory only, as the starting point of a restripe: a stale mask only
    makes servers send frames the client already has, never lose one.
    """

    arguments = [(b"ruid", amp.Integer()), (b"held", amp.Unicode())]
    response: list = []
    errors = COMMON_ERRORS


class CDone(amp.Command):
    """The client is done with `ruid` and holds `held` (base64 FrameMask) of the movie (seed: CDONE)."""

    arguments = [(b"ruid", amp.Integer()), (b"held", amp.Unicode())]
    response: list = []
    errors = COMMON_ERRORS


class Cancel(amp.Command):
    """The client gives up `ruid`; its video group is dissolved and its servers stop."""

    arguments = [(b"ruid", amp.Integer())]
    response: list = []
    errors = COMMON_ERRORS


class Requests(amp.Command):
    """Admin: the requests as summaries (no masks), the caches, and the known movies.

    The requests come one bounded page at a time, in RUID order: those after RUID `after` (absent: from
    the first), at most `limit` (capped by the replica), only the active ones with `active`. `page` is
    {"v": 1, "total", "listed", "next", "counts", "caches_total"}: `next` is the `after` of the next page
    (null on the last), `counts` the visible requests per state. Without arguments (as a client asks for
    the catalogue) the answer is the first page, so it stays one bounded box however long the book."""

    arguments = [(b"after", amp.Integer(optional=True)), (b"limit", amp.Integer(optional=True)),
                 (b"active", amp.Boolean(optional=True))]
    response = [(b"requests", Json()), (b"caches", Json()), (b"movies", Json()), (b"page", Json(optional=True))]
    errors = COMMON_ERRORS


class GetRequest(amp.Command):
    """Admin: one request in full, its strategy (with masks) and restripe history included."""

    arguments = [(b"ruid", amp.Integer())]
    response = [(b"request", Json())]
    errors = COMMON_ERRORS


class RevokeUser(amp.Command):
    """Admin: shut out every credential of `user` (`revoke` false lets them in again); primary only.

    The user's open connections are closed; the list is replicated, so every replica refuses them.
    """

    arguments = [(b"user", amp.Unicode()), (b"revoke", amp.Boolean())]
    response: list = []
    errors = COMMON_ERRORS


class Deliver(amp.Command):
    """Coordinator -> member: committed events for this member, in log order.

    `term` is the fencing token: the Raft term of the primary that sends. A
    member ignores a Deliver whose term is older than the newest it has seen,
    so a deposed primary that wakes up cannot push anything.
    """

    arguments = [(b"events", Json()), (b"term", amp.Integer())]
    response: list = []
    requiresAnswer = False


def auth_mac(secret: bytes, nonce: bytes, member_id: str) -> bytes:
    return hmac.new(secret, nonce + b"|" + member_id.encode(), hashlib.sha256).digest()


def authenticate_arguments(key: "bytes | UserCredential", nonce: bytes, member_id: str) -> dict[str, Any]:
    """The Authenticate arguments for the domain secret (bytes) or a user credential."""
    if isinstance(key, UserCredential):
        return {"member_id": member_id, "mac": auth_mac(key.key, nonce, member_id), "user": key.user,
                "role": key.role}
    return {"member_id": member_id, "mac": auth_mac(key, nonce, member_id)}
