"""Recruiting a new backup (the seed's SETUP): standbys offer themselves; the primary replaces dead voters.

Primary side (`Recruiter`): a voter whose Raft link has been down for
`replace_after` seconds is replaced by a standby that registered recently:
remove the dead voter first, then add the standby. The order matters (see
../shared/notes/measured-pysyncobj.md): with one of three voters dead the
cluster is at bare quorum, and adding a fourth voter first would need three
of four alive and stall every commit. Changes are serialized: one at a time.

Standby side (`StandbyWaiter`): registers with the primary every
`interval` seconds (so a new primary learns of it within that time) and
starts its Raft node with the full current voter list once it is one of them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from twisted.internet import defer

from vod.groups import commands as cmds
from vod.groups.control import call_once
from vod.groups.wire import NotPrimary, RegisterStandby

if TYPE_CHECKING:
    from vod.coordinator.replica import CoordinatorReplica

log = logging.getLogger("vod.coordinator.recruit")

REPLICAS_TABLE = "replicas"


class Recruiter:
    def __init__(self, replica: "CoordinatorReplica", replace_after: float = 1.0, standby_ttl: float = 2.0):
        self.replica = replica
        self.clock = replica.clock
        self.replace_after = replace_after
        self.standby_ttl = standby_ttl
        self._standbys: dict[str, tuple[dict, float]] = {}  # raft addr -> (record, last registration)
        self._down_since: dict[str, float] = {}
        self._busy = False

    def standby_seen(self, record: dict) -> None:
        self._standbys[record["raft"]] = (record, self.clock.seconds())

    def tick(self) -> None:
        view = self.replica.raft.view
        if view is None or self._busy:
            return
        now = self.clock.seconds()
        others = set(view.voters) - {self.replica.raft_addr}
        down = others - set(view.connected)
        for addr in list(self._down_since):
            if addr not in down:
                del self._down_since[addr]
        for addr in down:
            self._down_since.setdefault(addr, now)
        dead = sorted(a for a in down if now - self._down_since[a] >= self.replace_after)
        standby = self._pick_standby(set(view.voters), now)
        if dead and standby:
            self._replace(dead[0], standby)

    def _pick_standby(self, voters: set[str], now: float) -> dict | None:
        fresh = [rec for raft, (rec, seen) in sorted(self._standbys.items())
                 if raft not in voters and now - seen < self.standby_ttl]
        return fresh[0] if fresh else None

    def _replace(self, dead: str, standby: dict) -> None:
        self._busy = True
        started = self.clock.seconds()
        raft = self.replica.raft
        log.warning("replacing dead voter %s with standby %s (%s)", dead, standby["id"], standby["raft"])

        def recruited(_):
            elapsed = self.clock.seconds() - started
            log.warning("RECRUITED %s as voter in place of %s in %.2fs", standby["id"], dead, elapsed)
            self._standbys.pop(standby["raft"], None)
            self._down_since.pop(dead, None)
            record = dict(standby, standby=False)
            return defer.gatherResults([raft.propose(cmds.put_cmd(REPLICAS_TABLE, standby["raft"], record)),
                                        raft.propose(cmds.delete_cmd(REPLICAS_TABLE, dead))])

        def failed(failure):
            log.error("replacing %s failed: %s", dead, failure.getErrorMessage())

        def done(_):
            self._busy = False

        d = raft.remove_voter(dead)
        d.addCallback(lambda _: raft.add_voter(standby["raft"]))
        d.addCallback(recruited)
        d.addErrback(failed)
        d.addBoth(done)


class StandbyWaiter:
    def __init__(self, replica: "CoordinatorReplica", coordinators: list[str], interval: float = 0.25):
        self.replica = replica
        self.coordinators = list(coordinators)
        self.interval = interval
        self._next = 0.0
        self._asking = False
        self._target = 0  # index into coordinators; moved by NotPrimary answers
        self.promoted = False

    def tick(self) -> None:
        now = self.replica.clock.seconds()
        if self.promoted or self._asking or now < self._next:
            return
        self._next = now + self.interval
        self._asking = True
        d = defer.ensureDeferred(self._register())
        d.addErrback(lambda f: log.debug("standby registration: %s", f.getErrorMessage()))
        d.addBoth(lambda _: setattr(self, "_asking", False))

    async def _register(self) -> None:
        r = self.replica
        addr = self.coordinators[self._target % len(self.coordinators)]
        try:
            answer = await call_once(r.reactor, addr, r.secret, f"replica:{r.replica_id}", RegisterStandby,
                                     timeout=1.0, replica_id=r.replica_id, raft=r.raft_addr, listen=r.listen)
        except NotPrimary as err:
            primary = str(err)
            if primary and primary not in self.coordinators:
                self.coordinators.append(primary)
            self._target = self.coordinators.index(primary) if primary else self._target + 1
            return
        except Exception:
            self._target += 1
            raise
        voters = answer["voters"]
        if r.raft_addr in voters and not self.promoted:
            self.promoted = True
            log.warning("standby %s is now a voter; starting Raft with %s", r.replica_id, ", ".join(voters))
            r.promote(voters)
