"""One member's AMP connection to a coordinator replica.

Connection life: UNAUTHENTICATED --Challenge--> CHALLENGED --Authenticate--> AUTHENTICATED
--Join/Resume--> MEMBER. A command out of order, a wrong MAC or a malformed
box closes this connection with one log line; nothing else is disturbed.
Authentication fixes the connection's principal (domain secret, or a user
credential and its role); what each may do is `vod/coordinator/access.py`,
and a command it may not do is refused with one log line.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.protocols import amp

from vod import credentials
from vod.coordinator import access
from vod.coordinator import limits
from vod.coordinator import requests as rq
from vod.coordinator.strictamp import StrictAMP
from vod.credentials import ADMIN
from vod.groups import commands as cmds
from vod.groups.commands import BadCommand
from vod.groups.wire import (
    COMMON_ERRORS, MAX_JSON, PROTOCOL_VERSION, AuthFailed, Authenticate, Cast, CDone, Cancel, Challenge, Deliver,
    EncodedJson, GetRequest, Groups, Heartbeat, Join, Leave, NextRuid, NotPrimary, OpenRequest, Progress, Refused,
    RegisterMovies, RegisterStandby, Requests, Resume, RevokeUser, Started, Status, auth_mac, encode_json, fits,
    json_list,
)

if TYPE_CHECKING:
    from vod.coordinator.replica import CoordinatorReplica

log = logging.getLogger("vod.coordinator.session")

UNAUTHENTICATED, CHALLENGED, AUTHENTICATED, MEMBER = "unauthenticated", "challenged", "authenticated", "member"
# AMP bounds each key (255 bytes) and value (65,535) but not how many a box holds. The largest box a member
# sends is a Join or RegisterMovies with one full JSON value (MAX_JSON): four times that is ample.
MAX_BOX_BYTES = 4 * MAX_JSON
# A peer that has not authenticated by then is closed: idle half-open connections must not pile up.
AUTH_TIMEOUT = 10.0


class MemberSession(StrictAMP):
    _auth_deadline = None  # set when the connection is made
    def __init__(self, replica: "CoordinatorReplica"):
        super().__init__()
        self.replica = replica
        self.phase = UNAUTHENTICATED
        self.member_id: str | None = None
        self.principal: access.Principal | None = None
        self._nonce: bytes | None = None
        self._commands = replica.command_limit()  # None: no limit
        self._box_bytes = 0  # of the box being read

    def connectionMade(self):
        super().connectionMade()
        # Answers are small and written after pushes: without this, Nagle holds them ~40 ms.
        self.transport.setTcpNoDelay(True)
        self._auth_deadline = self.replica.reactor.callLater(AUTH_TIMEOUT, self._authentication_overdue)

    def _authentication_overdue(self) -> None:
        if self.phase in (UNAUTHENTICATED, CHALLENGED):
            self._refuse_connection(f"not authenticated within {AUTH_TIMEOUT:g} s")

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        if peer is not None and not hasattr(peer, "host"):
            return "the local socket"
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def _refuse_connection(self, why: str) -> None:
        log.warning("closing connection from %s (%s): %s", self._peer(), self.member_id or "unauthenticated", why)
        self.pauseProducing()  # read nothing more: boxes already buffered behind this one are not run
        self.transport.loseConnection()

    # -- limits ---------------------------------------------------------------------------------------

    def locateResponder(self, name):
        """Every command passes the connection's rate limit first; over it, it is refused unparsed and unrun."""
        verdict = limits.ALLOW if self._commands is None else self._commands.check()
        if verdict == limits.ALLOW:
            return super().locateResponder(name)
        refusal = self._commands.refusal()
        if verdict == limits.CLOSE:
            self._refuse_connection(f"{self._commands.strikes} commands in a row over the rate limit")
        return lambda box: defer.fail(amp.RemoteAmpError(COMMON_ERRORS[Refused], refusal))

    def proto_init(self, string):
        self._box_bytes = 0
        return super().proto_init(string)

    def proto_value(self, string):
        self._box_bytes += len(self._currentKey) + len(string) + 4  # as framed: two 16-bit lengths
        if self._box_bytes > MAX_BOX_BYTES:
            self._refuse_connection(f"an AMP box of more than {MAX_BOX_BYTES} bytes")
            return "key"  # the value is dropped; reading has stopped
        return super().proto_value(string)

    def before_parsing(self, command: bytes) -> None:
        """Before authentication only Challenge, then Authenticate: anything else is refused unread."""
        first = {UNAUTHENTICATED: Challenge, CHALLENGED: Authenticate}.get(self.phase)
        if first is not None and command != first.commandName:
            self._refuse_connection(f"{command[:40]!r} in state {self.phase}")
            raise AuthFailed(f"not allowed in state {self.phase}")

    def _require(self, *states: str) -> None:
        if self.phase not in states:
            self._refuse_connection(f"command in state {self.phase}")
            raise AuthFailed(f"not allowed in state {self.phase}")

    def _require_primary(self) -> None:
        if not self.replica.is_primary_now():
            raise NotPrimary(self.replica.primary_listen())

    def _checked(self, check, *args):
        """Run an access check; a refusal is logged once, with who asked, and answered (the link stays)."""
        try:
            return check(self.principal, *args)
        except Refused as refusal:
            log.warning("refused %s from %s (%s): %s", self.member_id, self._peer(),
                        self.principal.label if self.principal else "unauthenticated", refusal)
            raise

    def _authorise(self, command: str) -> None:
        self._checked(access.authorise, command)

    # -- authentication ------------------------------------------------------------------------------

    @Challenge.responder
    def challenge(self, protocol: int):
        self._require(UNAUTHENTICATED)
        if protocol != PROTOCOL_VERSION:
            self._refuse_connection(f"protocol version {protocol} (we speak {PROTOCOL_VERSION})")
            raise AuthFailed(f"protocol version {protocol} is not supported")
        self._nonce = os.urandom(16)
        self.phase = CHALLENGED
        return {"nonce": self._nonce, "replica": self.replica.replica_id}

    @Authenticate.responder
    def authenticate(self, member_id: str, mac: bytes, user: str | None = None, role: str | None = None):
        self._require(CHALLENGED)
        if user is None and role is None:
            key, principal, what = self.replica.secret, access.SECRET_HOLDER, "wrong secret"
        else:
            try:
                key = credentials.derive(self.replica.secret, user, role)
            except Exception:  # a malformed user or role (or one of them missing): no such credential
                key = b""
            principal, what = access.Principal(user, role), f"wrong credential for user {str(user)[:64]!r}"
        expected = auth_mac(key, self._nonce, member_id)
        if not key or not member_id or len(member_id) > 200 or not hmac.compare_digest(expected, mac):
            self._refuse_connection(f"{what} from a peer claiming to be {member_id[:200]!r}")
            raise AuthFailed("authentication failed")
        revoked = self.replica.raft.read(lambda m: m.state.table(access.REVOKED_TABLE))
        try:
            access.check_not_revoked(principal, revoked)
        except Refused as refusal:
            self._refuse_connection(str(refusal))
            raise AuthFailed(str(refusal)) from None
        self.member_id = member_id
        self.principal = principal
        self.phase = AUTHENTICATED
        return {}

    # -- membership ---------------------------------------------------------------------------------

    def _take_over(self) -> None:
        """A reconnecting member replaces its old connection here (it may be half-open after a network blip).

        Somebody else claiming the id from another address is refused by the
        state machine's join check, not here.
        """
        holder = self.replica.sessions.get(self.member_id)
        if holder is not None and holder is not self:
            log.info("%s reconnected from %s; closing its previous connection", self.member_id, self._peer())
            del self.replica.sessions[self.member_id]
            holder.transport.loseConnection()

    @Join.responder
    def join(self, kind, domain, address, user, capacity, movies):
        self._require(AUTHENTICATED, MEMBER)
        self._require_primary()
        if not isinstance(movies, list):
            raise Refused("movies must be a list of movie ids")
        user = self._checked(access.join_user, kind, user)
        self._check_member_owner()
        d = self.replica.join(self, kind, domain, address, user, capacity, movies)

        def joined(view):
            self.phase = MEMBER
            return {"view": view, "term": self.replica.term}

        def refused(failure):
            if failure.check(Refused):
                log.warning("join of %s from %s refused: %s", self.member_id, self._peer(), failure.value)
            return failure

        return d.addCallback(joined).addErrback(self._as_refusal).addErrback(refused)

    def _check_member_owner(self) -> None:
        """Before this connection takes the member id over: a user may take only its own members."""
        member = self.replica.raft.read(lambda m: m.state.members.get(self.member_id))
        self._checked(access.check_member, self.member_id, None if member is None else member.user)

    @Resume.responder
    def resume(self, positions):
        self._require(AUTHENTICATED, MEMBER)
        self._require_primary()
        self._check_member_owner()
        self._take_over()
        owed = self.replica.resume(self, positions if isinstance(positions, dict) else {})
        if owed is None:
            raise Refused(f"{self.member_id} is not a member any more; join again")
        self.phase = MEMBER
        self.deliver(owed)
        return {"term": self.replica.term}

    @Heartbeat.responder
    def heartbeat(self):
        self._require(MEMBER)
        self._require_primary()
        if self.replica.sessions.get(self.member_id) is not self:
            raise Refused(f"{self.member_id} is not a member any more; join again")
        self.replica.detector.heartbeat(self.member_id)
        return {"term": self.replica.term}

    @Leave.responder
    def leave(self):
        self._require(MEMBER)
        self._require_primary()
        d = self.replica.propose(cmds.leave_cmd(self.member_id))
        return d.addCallback(lambda _: {}).addErrback(self._as_refusal)

    @Cast.responder
    def cast(self, group, view_id, payload):
        self._require(MEMBER)
        self._authorise("Cast")
        self._require_primary()
        if not isinstance(payload, dict):
            raise Refused("a cast payload is a JSON object")
        try:
            command = cmds.cast_cmd(group, self.member_id, payload, view_id)
        except BadCommand as err:  # an empty group name, say: answered, not logged as a crash
            raise Refused(str(err)) from None
        d = self.replica.propose(command)

        def delivered(result):
            if "error" in result:
                raise Refused(result["message"])
            event = next(e for e in result["events"] if e["type"] == "Delivered")
            return {"view_id": event["view_id"], "seq": event["seq"]}

        return d.addCallback(delivered).addErrback(self._as_refusal)

    @NextRuid.responder
    def next_ruid(self):
        self._require(MEMBER, AUTHENTICATED)
        self._authorise("NextRuid")
        self._require_primary()
        return self.replica.next_ruid().addCallback(lambda ruid: {"ruid": ruid}).addErrback(self._as_refusal)

    @RegisterStandby.responder
    def register_standby(self, replica_id, raft, listen):
        self._require(AUTHENTICATED)
        self._authorise("RegisterStandby")
        self._require_primary()
        if self.member_id != f"replica:{replica_id}":
            self._refuse_connection(f"standby registration for {replica_id!r} from {self.member_id!r}")
            raise Refused("a standby registers under its own replica id")
        record = {"id": replica_id, "raft": raft, "listen": listen, "standby": True}
        return {"voters": self.replica.register_standby(record)}

    # -- requests ---------------------------------------------------------------------------------------

    def _member_of_kind(self, kind: str) -> None:
        self._require(MEMBER)
        self._require_primary()
        member = self.replica.raft.read(lambda m: m.state.members.get(self.member_id))
        if member is None or member.kind != kind:
            raise Refused(f"only a {kind} may do that")

    @RegisterMovies.responder
    def register_movies(self, movies):
        self._authorise("RegisterMovies")
        self._member_of_kind("server")
        if not isinstance(movies, list) or len(movies) > 10_000:
            raise Refused("movies must be a list (at most 10,000 entries)")
        d = self.replica.register_movies(self.member_id, movies)
        return d.addCallback(lambda _: {}).addErrback(self._as_refusal)

    @OpenRequest.responder
    def open_request(self, request_id, movie, wanted):
        self._member_of_kind("client")
        info = self.replica.raft.read(lambda m: m.state.row(rq.MOVIES_TABLE, movie))
        if info is not None:  # (an unknown movie is refused when applied, in the catalogue's words)
            _fits_movie(wanted, int(info["frame_count"]), "wanted mask")
        d = self.replica.open_request(self.member_id, request_id, movie, wanted)
        return d.addCallback(lambda r: {"ruid": r[0], "state": r[1]}).addErrback(self._as_refusal)

    def _own_request(self, ruid) -> dict:
        """The record of `ruid`, if this connection's user may act on it (checked again when applied)."""
        record = self.replica.raft.read(lambda m: m.requests.request(ruid))
        self._checked(access.check_owner, ruid, record)
        return record

    def _request_step(self, command):
        self._member_of_kind("client")
        record = self._own_request(command["ruid"])
        if "held" in command:  # a CDONE: a mask that does not fit the movie costs no log entry
            _fits_movie(command["held"], record["frame_count"], "held mask")
        return self.replica.request_step(command).addCallback(lambda _: {}).addErrback(self._as_refusal)

    @Started.responder
    def started(self, ruid):
        return self._request_step(rq.start_cmd(ruid, self.member_id))

    @Progress.responder
    def progress(self, ruid, held):
        self._member_of_kind("client")
        record = self._own_request(ruid)
        if record["client"] != self.member_id:
            raise Refused(f"request {ruid} is not yours")
        _fits_movie(held, record["frame_count"], "held mask")
        self.replica.report_progress(ruid, held)
        return {}

    @CDone.responder
    def cdone(self, ruid, held):
        return self._request_step(rq.cdone_cmd(ruid, self.member_id, held))

    @Cancel.responder
    def cancel(self, ruid):
        return self._request_step(rq.cancel_cmd(ruid, self.member_id))

    @Requests.responder
    def requests(self, after=None, limit=None, active=None):
        """A page of the requests an admin may see (a viewer: its own user's only), the caches and catalogue.

        Every value stays within one AMP value however long the book: the page is cut to fit, and the
        caches (one per client and movie) are listed as far as they fit (`page["caches_total"]`)."""
        self._require(AUTHENTICATED, MEMBER)
        see = self.principal
        after = 0 if after is None else after
        limit = rq.REQUESTS_PAGE if limit is None else max(1, min(limit, rq.REQUESTS_PAGE))
        keep = None if see.at_least(ADMIN) else (lambda r: access.may_see(see, r))
        listed, counts, more, caches, movies = self.replica.raft.read(lambda m: (
            *m.requests.summaries(after, limit, keep, bool(active)),
            [{k: v for k, v in c.items() if k != "mask"} for c in access.visible(see, m.requests.caches())],
            m.state.table(rq.MOVIES_TABLE)))
        while len(listed) > 1 and not fits(listed):
            listed, more = listed[:len(listed) // 2], True
        caches_total = len(caches)
        while caches and not fits(caches):
            caches = caches[:len(caches) // 2]
        page = {"v": 1, "total": sum(counts.values()), "listed": len(listed), "counts": counts,
                "next": listed[-1]["ruid"] if listed and more else None, "caches_total": caches_total}
        return {"requests": listed, "caches": caches, "movies": movies, "page": page}

    @Groups.responder
    def groups(self, after=None, limit=None):
        self._require(AUTHENTICATED, MEMBER)
        self._authorise("Groups")
        return {"groups": self.replica.groups_page(after, limit)}

    @GetRequest.responder
    def get_request(self, ruid):
        self._require(AUTHENTICATED, MEMBER)
        return {"request": self._own_request(ruid)}

    @Status.responder
    def status(self):
        self._require(AUTHENTICATED, MEMBER)
        self._authorise("Status")
        return {"status": self.replica.status()}

    @RevokeUser.responder
    def revoke_user(self, user, revoke):
        self._require(AUTHENTICATED, MEMBER)
        self._authorise("RevokeUser")
        self._require_primary()
        try:
            credentials.check_user_name(user)
        except Exception as err:
            raise Refused(str(err)) from None
        log.warning("%s %s user %s", self.principal.label, "revokes" if revoke else "restores", user)
        d = self.replica.revoke_user(user, revoke, by=self.principal.user or self.member_id)
        return d.addCallback(lambda _: {}).addErrback(self._as_refusal)

    # -- pushing ---------------------------------------------------------------------------------------

    def deliver(self, events: list[dict]) -> None:
        """Push events in order, split so each AMP value stays under its size limit.

        A strategy pushed to its client carries the client's stream token, minted here rather than
        replicated: the secret stays out of the Raft log (`vod.stream.tokens`).

        While the replica pushes an applied entry, `replica.push_encoded` maps id(event) to its JSON
        text for all of that entry's pushes, so an event that goes to several members is encoded once.
        Only the replicated events themselves, which outlive the push, are looked up there: the copies
        `issue_in` makes (a strategy with this client's token) are encoded apart, since a copy's id
        may be the id of another member's copy freed a moment ago."""
        shared = {id(event) for event in events}  # alive for the whole push: their ids stay theirs
        events = self.replica.stream_tokens.issue_in(events, self.member_id)
        encoded: dict[int, EncodedJson] = getattr(self.replica, "push_encoded", None)
        if encoded is None:
            encoded = {}
        batch: list[EncodedJson] = []
        size = 0
        for event in events:
            if id(event) in shared:
                text = encoded.get(id(event))
                if text is None:
                    text = encoded[id(event)] = encode_json(event)
            else:
                text = encode_json(event)
            if batch and size + len(text) + 1 > MAX_JSON // 2:
                self.callRemote(Deliver, events=json_list(batch), term=self.replica.term)
                batch, size = [], 0
            batch.append(text)
            size += len(text) + 1
        if batch:
            self.callRemote(Deliver, events=json_list(batch), term=self.replica.term)

    def _as_refusal(self, failure):
        if failure.check(NotPrimary, AuthFailed, Refused):
            return failure
        if failure.check(BadCommand):
            raise Refused(str(failure.value))
        log.info("command from %s not committed: %s", self.member_id, failure.getErrorMessage())
        raise NotPrimary(self.replica.primary_listen() if not self.replica.acting else "")

    def connectionLost(self, reason):
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        if self.member_id and self.replica.sessions.get(self.member_id) is self:
            del self.replica.sessions[self.member_id]
            self.replica.member_disconnected(self.member_id)
        super().connectionLost(reason)


def _fits_movie(mask_text, frame_count: int, what: str) -> None:
    """Refused unless `mask_text` is a valid mask of exactly the movie's frames (decoded no further than that)."""
    try:
        rq.mask_from_text(mask_text, frame_count, what)
    except BadCommand as err:
        raise Refused(str(err)) from None
