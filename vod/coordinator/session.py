"""One member's AMP connection to a coordinator replica.

Connection life: UNAUTHENTICATED --Challenge--> CHALLENGED --Authenticate--> AUTHENTICATED
--Join/Resume--> MEMBER. A command out of order, a wrong MAC or a malformed
box closes this connection with one log line; nothing else is disturbed.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING

from twisted.protocols import amp

from vod.coordinator import requests as rq
from vod.groups import commands as cmds
from vod.groups.commands import BadCommand
from vod.groups.wire import (
    MAX_JSON, PROTOCOL_VERSION, AuthFailed, Authenticate, Cast, Challenge, Deliver, Heartbeat, Join, Leave,
    CDone, Cancel, GetRequest, NextRuid, NotPrimary, OpenRequest, Progress, Refused, RegisterMovies, RegisterStandby,
    Requests, Resume, Started, Status, auth_mac,
)

if TYPE_CHECKING:
    from vod.coordinator.replica import CoordinatorReplica

log = logging.getLogger("vod.coordinator.session")

UNAUTHENTICATED, CHALLENGED, AUTHENTICATED, MEMBER = "unauthenticated", "challenged", "authenticated", "member"


class MemberSession(amp.AMP):
    def __init__(self, replica: "CoordinatorReplica"):
        super().__init__()
        self.replica = replica
        self.phase = UNAUTHENTICATED
        self.member_id: str | None = None
        self._nonce: bytes | None = None

    def connectionMade(self):
        super().connectionMade()
        # Answers are small and written after pushes: without this, Nagle holds them ~40 ms.
        self.transport.setTcpNoDelay(True)

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def _refuse_connection(self, why: str) -> None:
        log.warning("closing connection from %s (%s): %s", self._peer(), self.member_id or "unauthenticated", why)
        self.transport.loseConnection()

    def _require(self, *states: str) -> None:
        if self.phase not in states:
            self._refuse_connection(f"command in state {self.phase}")
            raise AuthFailed(f"not allowed in state {self.phase}")

    def _require_primary(self) -> None:
        if not self.replica.is_primary_now():
            raise NotPrimary(self.replica.primary_listen())

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
    def authenticate(self, member_id: str, mac: bytes):
        self._require(CHALLENGED)
        expected = auth_mac(self.replica.secret, self._nonce, member_id)
        if not member_id or len(member_id) > 200 or not hmac.compare_digest(expected, mac):
            self._refuse_connection(f"wrong secret from a peer claiming to be {member_id[:200]!r}")
            raise AuthFailed("authentication failed")
        self.member_id = member_id
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
        d = self.replica.join(self, kind, domain, address, user, capacity, movies)

        def joined(view):
            self.phase = MEMBER
            return {"view": view, "term": self.replica.term}

        def refused(failure):
            if failure.check(Refused):
                log.warning("join of %s from %s refused: %s", self.member_id, self._peer(), failure.value)
            return failure

        return d.addCallback(joined).addErrback(self._as_refusal).addErrback(refused)

    @Resume.responder
    def resume(self, positions):
        self._require(AUTHENTICATED, MEMBER)
        self._require_primary()
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
        self._require_primary()
        if not isinstance(payload, dict):
            raise Refused("a cast payload is a JSON object")
        d = self.replica.propose(cmds.cast_cmd(group, self.member_id, payload, view_id))

        def delivered(result):
            if "error" in result:
                raise Refused(result["message"])
            event = next(e for e in result["events"] if e["type"] == "Delivered")
            return {"view_id": event["view_id"], "seq": event["seq"]}

        return d.addCallback(delivered).addErrback(self._as_refusal)

    @NextRuid.responder
    def next_ruid(self):
        self._require(MEMBER, AUTHENTICATED)
        self._require_primary()
        return self.replica.next_ruid().addCallback(lambda ruid: {"ruid": ruid}).addErrback(self._as_refusal)

    @RegisterStandby.responder
    def register_standby(self, replica_id, raft, listen):
        self._require(AUTHENTICATED)
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
        self._member_of_kind("server")
        if not isinstance(movies, list) or len(movies) > 10_000:
            raise Refused("movies must be a list (at most 10,000 entries)")
        d = self.replica.register_movies(self.member_id, movies)
        return d.addCallback(lambda _: {}).addErrback(self._as_refusal)

    @OpenRequest.responder
    def open_request(self, request_id, movie, wanted):
        self._member_of_kind("client")
        d = self.replica.open_request(self.member_id, request_id, movie, wanted)
        return d.addCallback(lambda r: {"ruid": r[0], "state": r[1]}).addErrback(self._as_refusal)

    def _request_step(self, command):
        self._member_of_kind("client")
        return self.replica.request_step(command).addCallback(lambda _: {}).addErrback(self._as_refusal)

    @Started.responder
    def started(self, ruid):
        return self._request_step(rq.start_cmd(ruid, self.member_id))

    @Progress.responder
    def progress(self, ruid, held):
        self._member_of_kind("client")
        record = self.replica.raft.read(lambda m: m.requests.request(ruid))
        if record is None or record["client"] != self.member_id:
            raise Refused(f"request {ruid} is not yours")
        try:
            rq.mask_from_text(held, record["frame_count"], "held mask")
        except Exception as err:
            raise Refused(str(err)) from None
        self.replica.report_progress(ruid, held)
        return {}

    @CDone.responder
    def cdone(self, ruid, held):
        return self._request_step(rq.cdone_cmd(ruid, self.member_id, held))

    @Cancel.responder
    def cancel(self, ruid):
        return self._request_step(rq.cancel_cmd(ruid, self.member_id))

    @Requests.responder
    def requests(self):
        self._require(AUTHENTICATED, MEMBER)
        return self.replica.raft.read(lambda m: {
            "requests": [rq.summary(r) for r in m.requests.requests()],
            "caches": [{k: v for k, v in c.items() if k != "mask"} for c in m.requests.caches()],
            "movies": m.state.table(rq.MOVIES_TABLE)})

    @GetRequest.responder
    def get_request(self, ruid):
        self._require(AUTHENTICATED, MEMBER)
        record = self.replica.raft.read(lambda m: m.requests.request(ruid))
        if record is None:
            raise Refused(f"no request with RUID {ruid}")
        return {"request": record}

    @Status.responder
    def status(self):
        self._require(AUTHENTICATED, MEMBER)
        return {"status": self.replica.status()}

    # -- pushing ---------------------------------------------------------------------------------------

    def deliver(self, events: list[dict]) -> None:
        """Push events in order, split so each AMP value stays under its size limit."""
        batch: list[dict] = []
        size = 0
        for event in events:
            event_size = len(repr(event)) + 16
            if batch and size + event_size > MAX_JSON // 2:
                self.callRemote(Deliver, events=batch, term=self.replica.term)
                batch, size = [], 0
            batch.append(event)
            size += event_size
        if batch:
            self.callRemote(Deliver, events=batch, term=self.replica.term)

    def _as_refusal(self, failure):
        if failure.check(NotPrimary, AuthFailed, Refused):
            return failure
        if failure.check(BadCommand):
            raise Refused(str(failure.value))
        log.info("command from %s not committed: %s", self.member_id, failure.getErrorMessage())
        raise NotPrimary(self.replica.primary_listen() if not self.replica.acting else "")

    def connectionLost(self, reason):
        if self.member_id and self.replica.sessions.get(self.member_id) is self:
            del self.replica.sessions[self.member_id]
            self.replica.member_disconnected(self.member_id)
        super().connectionLost(reason)

