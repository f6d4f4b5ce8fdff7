"""Acceptance tests: three real `vod-coordinator` processes on 127.0.0.1, killed and paused for real.

Each test gets a fresh group from the `cluster` fixture (tests/cluster.py), which
SIGKILLs every replica when the test ends, pass or fail. RUIDs are obtained with
the scripted client `vod.groups.probe`; every wait has a deadline, and the only
timing assertions are generous bounds (a failover is measured in tenths of a
second; `bench/failover.py` reports the numbers).

A test that ends in XFAIL hit a known coordinator bug (UNANSWERED_BUG) after
all its safety checks passed; once the bug is fixed it simply passes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from cluster import Cluster, acting_alone, acting_intervals, cluster, overlaps, wait_for  # noqa: F401 (fixture)
from vod.groups.probe import BlockingClient, ProbeTimeout, Ruid, encode_box
from vod.groups.raft import RaftSettings
from vod.groups.wire import PROTOCOL_VERSION, AuthFailed, Authenticate, Challenge, NextRuid, NotPrimary, Status

FAILOVER_BOUND = 10.0  # seconds; measured medians are ~0.2 s, so this only catches "never"
DRAIN = 5.0  # seconds an open-loop load waits for its last answers (they normally take milliseconds)


def assert_strictly_increasing(ruids: list[Ruid]) -> None:
    values = [r.ruid for r in ruids]
    bad = [(a, b) for a, b in zip(values, values[1:]) if b <= a]
    assert not bad, f"RUIDs not strictly increasing in acknowledgement order at {bad[:5]}"


class Load(threading.Thread):
    """Obtains RUIDs one after another (each acknowledged before the next is asked) until stopped."""

    def __init__(self, cluster: Cluster):
        super().__init__(daemon=True)
        self.probe = cluster.probe(give_up_after=FAILOVER_BOUND)
        self.acked: list[Ruid] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self.acked.append(self.probe.next_ruid())
        except BaseException as err:  # reported by the test, not lost in the thread
            self.error = err
        finally:
            self.probe.close()

    def stop(self) -> list[Ruid]:
        self._halt.set()
        self.join(FAILOVER_BOUND + 5)
        assert not self.is_alive(), "the load thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}")
        return list(self.acked)

    def wait_count(self, predicate, count: int, timeout: float, what: str, describe=None) -> None:
        def enough():
            if self.error is not None:
                raise AssertionError(f"the load failed: {self.error!r}")
            return sum(1 for r in list(self.acked) if predicate(r)) >= count

        wait_for(enough, timeout, what, describe=describe)


def test_sigkill_of_the_primary_gives_a_new_primary_and_loses_no_ruid(cluster):
    old = cluster.wait_primary()
    load = Load(cluster)
    load.start()
    try:
        load.wait_count(lambda r: r.replica == old, 50, 10, f"50 RUIDs from {old}", cluster.describe)
        killed_at = time.monotonic()
        cluster.kill(old)
        new = cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        failover = time.monotonic() - killed_at
        load.wait_count(lambda r: r.replica != old, 50, FAILOVER_BOUND, "50 RUIDs after the kill", cluster.describe)
    finally:
        acked = load.stop()
    assert new != old
    assert failover < FAILOVER_BOUND
    assert_strictly_increasing(acked)
    before = [r for r in acked if r.replica == old]
    after = [r for r in acked if r.replica != old]
    # No acknowledged RUID is lost: the new primary's counter is past every RUID acknowledged before the kill
    # (a request in flight at the kill may have been committed unacknowledged: a gap, never a repeat).
    assert after[0].ruid > max(r.ruid for r in before)
    assert len({r.ruid for r in acked}) == len(acked)
    status = cluster.statuses([after[-1].replica])[after[-1].replica]
    assert status["last_ruid"] >= acked[-1].ruid


# -- pausing the primary (SIGSTOP) ------------------------------------------------------------------
#
# How acting intervals are judged, here and in every pause test below:
#
# - A replica's acting interval runs from its `ROLE acting-primary` line to its next `ROLE not-primary`
#   line (or its death). A SIGSTOPped process cannot log, so taken literally the paused primary's interval
#   runs until it wakes and logs `not-primary`. But a stopped process cannot do anything else either:
#   between the instant it was seen stopped (state T in /proc) and SIGCONT it does not act. So that
#   interval is split around the pause (`split_at_pause`).
# - After SIGCONT, if another replica acted during the rest of that interval, the woken replica had been
#   deposed: the rest is dropped -- provided it did nothing as primary in it, which is what the tests check
#   from outside (a request that waited in its socket is answered NotPrimary; no RUID it answered was served
#   while another replica was the acting primary; no primary work in its log). If nobody else acted, it
#   rightly went on acting and the rest is kept.
# - Then no two replicas' intervals may share an instant. A woken replica that goes back to acting in its
#   old term next to the new primary shows up as such an overlap.
# All timestamps are time.time() on one machine: the replicas' log lines and the harness's events.


def was_acting(cluster: Cluster, rid: str, t: float) -> bool:
    """Whether `rid`'s last ROLE line at or before `t` says acting-primary."""
    mine = [line for line in cluster.role_lines() if line.replica == rid and line.time <= t]
    return bool(mine) and mine[-1].role == "acting-primary"


def split_at_pause(intervals, rid: str, stopped_at: float, resumed_at: float):
    """Split `rid`'s interval that spans the pause, as described above; returns it unsplit (or None)."""
    frozen = next((iv for iv in intervals.get(rid, []) if iv[0] <= stopped_at < iv[1]), None)
    if frozen is None:
        return None
    start, end, term = frozen
    pieces = [(start, stopped_at, term)]
    deposed = any(s < end and e > resumed_at for other, ivs in intervals.items() if other != rid
                  for s, e, _ in ivs)
    if end > resumed_at and not deposed:
        pieces.append((resumed_at, end, term))
    intervals[rid] = [iv for iv in intervals[rid] if iv != frozen] + pieces
    return frozen


def pause_acting_primary(cluster: Cluster, prepare=None, attempts: int = 20) -> tuple[str, float, list]:
    """SIGSTOP the acting primary, retried until its ROLE lines show it was still acting when stopped.

    `prepare(old)` runs before each attempt and returns things to `close()` if the attempt is dropped.
    Returns (old, stopped_at, prepared).
    """
    for _ in range(attempts):
        old = cluster.wait_primary()
        prepared = prepare(old) if prepare else []
        stopped_at = cluster.pause(old)
        if was_acting(cluster, old, stopped_at):
            return old, stopped_at, prepared
        cluster.resume(old)
        for thing in prepared:
            thing.close()
    pytest.fail(f"the primary kept losing its role before it could be paused\n{cluster.describe()}")


class OpenLoop:
    """One authenticated connection sending NextRuid at a fixed rate whatever the answers (open loop).

    A sender thread and a reader thread share the socket (one only writes, one only reads). `sent`
    records time.time() taken *before* each send, so a request recorded after an instant was really
    sent after it; `answers` maps each tag to (time.time() when read, RUID or None for an error answer),
    so the coordinator handled it within [sent, answered].
    """

    def __init__(self, addr: str, secret: bytes, member_id: str, rate: float):
        self.client = BlockingClient(addr, timeout=FAILOVER_BOUND)
        self.client.authenticate(secret, member_id)
        self.rate = rate
        self.sent: dict[bytes, float] = {}
        self.answers: dict[bytes, tuple[float, int | None]] = {}
        self.halt = threading.Event()
        self.sender_done = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        start, i = time.perf_counter(), 0
        try:
            while True:
                delay = start + i / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if self.halt.is_set():
                    return
                t = time.time()
                self.sent[self.client.ask(NextRuid)] = t
                i += 1
        except OSError:
            pass  # connection closed under us: the reader reports what was answered
        finally:
            self.sender_done.set()

    def _read(self) -> None:
        drain_until = None
        while True:
            if self.sender_done.is_set():
                if len(self.answers) >= len(self.sent):
                    return
                drain_until = drain_until or time.monotonic() + DRAIN
                if time.monotonic() > drain_until:
                    return  # never answered: `unanswered` reports them
            try:
                box = self.client.read_box(0.2)
            except ProbeTimeout:
                continue  # a partial box stays buffered
            except OSError:
                return  # ConnectionClosed or reset
            tag = box.get(b"_answer") or box.get(b"_error")
            ruid = NextRuid.parseResponse(box, None)["ruid"] if b"_answer" in box else None
            self.answers[tag] = (time.time(), ruid)

    @property
    def unanswered(self) -> list[float]:
        return sorted(t for tag, t in list(self.sent.items()) if tag not in self.answers)

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(FAILOVER_BOUND + 5)
        self.client.close()
        assert not any(t.is_alive() for t in self.threads), "an open-loop thread did not stop"

    close = stop



def test_sigstop_of_the_primary_never_gives_two_acting_primaries(cluster):
    """Pause the primary ~2 s, let the others elect a new one, resume it; judge the ROLE lines as above.

    An idle primary is paused (blocked in epoll_wait); test_sigstop_under_load... pauses a busy one.
    """
    with cluster.probe() as probe:
        ruids = [probe.next_ruid() for _ in range(20)]

    def stale_connection(old):
        stale = BlockingClient(cluster.listen(old), timeout=FAILOVER_BOUND)
        stale.authenticate(cluster.secret, "stale-member")
        return [stale]

    old, stopped_at, (stale,) = pause_acting_primary(cluster, stale_connection)
    others = [r for r in cluster.ids if r != old]
    try:
        new = cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        with cluster.probe([cluster.listen(r) for r in others]) as probe:
            during = [probe.next_ruid() for _ in range(20)]
        assert old not in {r.replica for r in during}
        tag = stale.ask(NextRuid)  # waits in the frozen process's socket, read only after SIGCONT
        time.sleep(max(0.0, stopped_at + 2.0 - time.time()))
        resumed_at = cluster.resume(old)
        with pytest.raises(NotPrimary) as refused:
            got = stale.answer(NextRuid, tag)
            pytest.fail(f"the woken old primary {old} answered NextRuid with {got} after {new} took over")
    finally:
        stale.close()

    def woke_and_stepped_down():
        return [line for line in cluster.role_lines()
                if line.replica == old and line.role == "not-primary" and line.time >= resumed_at]

    stepped_down = wait_for(woke_and_stepped_down, 5, f"{old} to log ROLE not-primary after SIGCONT",
                            describe=cluster.describe)[0]
    with cluster.probe() as probe:
        after = [probe.next_ruid() for _ in range(20)]
    assert_strictly_increasing(ruids + during + after)

    # Nothing done as primary between waking and stepping down.
    primary_work = re.compile(r"not committed|excluding silent|ROLE acting-primary")
    woke_lines = [line for t, line in cluster.log_lines(old) if resumed_at <= t <= stepped_down.time]
    assert not [line for line in woke_lines if primary_work.search(line)], woke_lines

    lines = cluster.role_lines()
    intervals = acting_intervals(lines, until=time.time(), deaths=cluster.deaths())
    frozen = split_at_pause(intervals, old, stopped_at, resumed_at)
    assert frozen is not None, f"{old} was not acting when paused: {intervals}"
    assert frozen[1] == stepped_down.time, "its acting interval ends with the not-primary line it logged on waking"
    assert not overlaps(intervals), f"two acting primaries at once: {overlaps(intervals)}\n{lines}"
    new_start = min(s for s, e, t in intervals[new] if e > stopped_at)
    assert new_start > stopped_at, "the new primary started acting only after the old one was stopped"
    assert max(t for s, e, t in intervals[new]) > frozen[2], "the new primary acts in a later term"
    # The refusal does not send members back to the replica that refused them.
    assert str(refused.value) != cluster.listen(old), "a replica that is not primary named itself as primary"


def pause_under_load(cluster: Cluster, pause: float, connections: int, rate: float, load_seconds: float,
                     after: float, wait_new_primary: bool = False) -> tuple[str, float, float, list[OpenLoop]]:
    """Open-loop NextRuid load on the primary, which is paused `pause` s meanwhile; loads stopped on return."""
    loads: list[OpenLoop] = []

    def start_loads(old):
        loads[:] = [OpenLoop(cluster.listen(old), cluster.secret, f"load-{len(cluster.events)}-{i}", rate)
                    for i in range(connections)]
        time.sleep(load_seconds)
        return loads

    try:
        old, stopped_at, _ = pause_acting_primary(cluster, start_loads)
        if wait_new_primary:
            cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        time.sleep(max(0.0, stopped_at + pause - time.time()))
        resumed_at = cluster.resume(old)
        time.sleep(after)
    finally:
        for load in loads:
            load.halt.set()  # all drain at once
        for load in loads:
            load.stop()
    return old, stopped_at, resumed_at, loads


def unfair_answers(intervals, old: str, stopped_at: float, loads: list[OpenLoop]) -> list[tuple]:
    """RUIDs `old` answered for requests sent after it was paused, with no instant between send and answer
    at which it acted and no other replica did: served as primary while another replica was primary."""
    return sorted((sent, at, ruid) for load in loads for tag, sent in list(load.sent.items())
                  for at, ruid in [load.answers.get(tag, (None, None))]
                  if ruid is not None and sent > stopped_at and not acting_alone(intervals, old, sent, at))


UNANSWERED_BUG = (
    "known bug (see the report): NextRuid the primary proposed just before its pause was never answered: after "
    "stepping down its log is truncated below the indexes under which pysyncobj keeps the callbacks "
    "(__commandsWaitingCommit); they fire only once entries at those indexes are applied, which an idle group "
    "never does, and RaftLog.propose has no timeout")


def check_pauses(cluster: Cluster, pauses: list[tuple[str, float, float, list[OpenLoop]]]) -> None:
    """The safety checks (strict), then the liveness one: every request answered (an xfail while the
    known bug stands, so the safety checks keep guarding)."""
    lines = cluster.role_lines()
    intervals = acting_intervals(lines, until=time.time(), deaths=cluster.deaths())
    for old, stopped_at, resumed_at, _ in pauses:
        assert split_at_pause(intervals, old, stopped_at, resumed_at) is not None
    loads = [load for *_, ls in pauses for load in ls]
    ruids = [ruid for load in loads for _, ruid in load.answers.values() if ruid is not None]
    assert len(ruids) == len(set(ruids)), "a RUID was handed out twice"
    for old, stopped_at, _, ls in pauses:
        unfair = unfair_answers(intervals, old, stopped_at, ls)
        assert not unfair, (f"{old} answered {len(unfair)} NextRuid sent after it was paused at {stopped_at:.6f} "
                            f"while another replica was the acting primary; first: sent {unfair[0][0]:.6f}, "
                            f"answered {unfair[0][1]:.6f}, RUID {unfair[0][2]}\nROLE lines: {lines}")
    assert not overlaps(intervals), f"two acting primaries at once: {overlaps(intervals)}\nROLE lines: {lines}"
    unanswered = [(old, round(t - stopped_at, 3)) for old, stopped_at, _, ls in pauses for load in ls
                  for t in load.unanswered]
    if unanswered:
        pytest.xfail(f"{UNANSWERED_BUG}: {len(unanswered)} not answered within {DRAIN:g}s (primary paused, "
                     f"seconds sent after its pause: {unanswered[:8]})")


def test_sigstop_under_load_old_primary_answers_nothing_after_the_new_primary_starts(cluster):
    """Six connections keep the primary's reactor busy, so the SIGSTOP lands while it handles requests rather
    than idle in epoll_wait: requests read from already-ready sockets after SIGCONT must still be refused."""
    check_pauses(cluster, [pause_under_load(cluster, pause=1.0, connections=6, rate=400, load_seconds=1.0,
                                            after=1.0, wait_new_primary=True)])


def test_short_sigstops_under_load_never_give_two_acting_primaries(cluster):
    """Pauses across the election-timeout window (from RaftSettings, so this follows the tuning): a new
    primary is elected during some and not others; in none may the woken one act next to it, whether its
    tick thread noticed the pause or not, and every request it accepted is answered."""
    settings = RaftSettings()
    lo, hi = settings.election_min, settings.election_max
    pauses = [0.8 * lo, lo, (lo + hi) / 2, hi, 1.25 * hi, 0.9 * lo, 1.1 * lo, 0.75 * (lo + hi)]
    check_pauses(cluster, [pause_under_load(cluster, pause=pause, connections=4, rate=300, load_seconds=0.5,
                                            after=0.7) for pause in pauses])


def test_full_restart_keeps_the_ruid_counter(cluster):
    with cluster.probe() as probe:
        before = [probe.next_ruid() for _ in range(30)]
    for rid in cluster.ids:
        cluster.kill(rid)
    for rid in cluster.ids:
        cluster.start_replica(rid, wait=0)
    for rid in cluster.ids:
        cluster.wait_listening(rid)
    cluster.wait_primary(20)
    with cluster.probe() as probe:
        after = [probe.next_ruid() for _ in range(10)]
    assert_strictly_increasing(before + after)
    assert after[0].ruid > max(r.ruid for r in before), "the journal in --data kept the counter"


def _closed(client: BlockingClient) -> bool:
    return client.wait_closed(5)


@pytest.mark.parametrize("target", ["primary", "follower"])
def test_bad_input_is_refused_and_the_coordinator_keeps_serving(cluster, target):
    primary = cluster.wait_primary()
    rid = primary if target == "primary" else next(r for r in cluster.ids if r != primary)
    addr = cluster.listen(rid)

    # A wrong secret: AuthFailed, the connection closed, and one log line naming the claimed id.
    claimed = f"mallory-{target}"
    with BlockingClient(addr) as c:
        with pytest.raises(AuthFailed):
            c.authenticate(b"not the domain secret, but long enough", claimed)
        assert _closed(c)
    wait_for(lambda: re.search(rf"wrong secret from a peer claiming to be '{claimed}'", cluster.log(rid)), 5,
             f"{rid} to log the wrong secret", describe=cluster.describe)

    # A command before authentication is refused and the connection closed.
    for command, kwargs in [(NextRuid, {}), (Status, {}), (Authenticate, {"member_id": "x", "mac": b"0" * 32})]:
        with BlockingClient(addr) as c:
            with pytest.raises(AuthFailed):
                c.call(command, **kwargs)
            assert _closed(c), f"{command.__name__} before authentication left the connection open"
    # After a good challenge, a second one is out of order too.
    with BlockingClient(addr) as c:
        c.call(Challenge, protocol=PROTOCOL_VERSION)
        with pytest.raises(AuthFailed):
            c.call(Challenge, protocol=PROTOCOL_VERSION)
        assert _closed(c)
    # An unknown protocol version is refused.
    with BlockingClient(addr) as c:
        with pytest.raises(AuthFailed):
            c.call(Challenge, protocol=PROTOCOL_VERSION + 99)
        assert _closed(c)

    # Malformed AMP: raw garbage, a box with no command, a value that does not parse, a truncated box.
    malformed = [
        b"\xff\xfe this is not AMP at all \r\n" * 4,
        encode_box({b"hello": b"world"}),
        encode_box({b"_command": b"Challenge", b"_ask": b"1", b"protocol": b"one"}),
        encode_box({b"_command": b"Join", b"_ask": b"1", b"kind": b"server", b"domain": b"d", b"address": b"a",
                    b"user": b"u", b"capacity": b"1", b"movies": b"{not json"}),
    ]
    for data in malformed:
        with BlockingClient(addr) as c:
            c.send_raw(data)
            assert _closed(c), f"{data[:40]!r} left the connection open"
    with BlockingClient(addr) as c:
        c.send_raw(b"\x00\x08_command\x00\x09Chall")  # the rest never comes: only this connection waits
        # ... while a good client is served at once on another connection.
        with cluster.probe([addr]) as probe:
            assert probe.status(addr)["replica"]["id"] == rid

    # After all that: still alive, still answering status, and the group still hands out RUIDs.
    assert cluster.replicas[rid].running
    with cluster.probe([addr]) as probe:
        status = probe.status(addr)
        assert status["replica"]["id"] == rid
    with cluster.probe([addr]) as probe:  # a follower redirects to the primary
        ruids = [probe.next_ruid() for _ in range(5)]
    assert_strictly_increasing(ruids)
    # (Which replica is primary is not asserted: a spurious election on a loaded machine is no failure here.)
    cluster.wait_primary()


def test_admin_status_json_shows_roles_and_a_killed_replica_as_down(cluster):
    primary = cluster.wait_primary()
    doc = cluster.admin_status()
    assert sorted(r["id"] for r in doc["replicas"]) == cluster.ids
    roles = {r["id"]: r["role"] for r in doc["replicas"]}
    assert [rid for rid, role in roles.items() if role == "primary"] == [primary], roles
    assert sorted(role for rid, role in roles.items() if rid != primary) == ["backup", "witness"], roles
    assert doc["primary"] == primary

    cluster.kill(primary)
    new = cluster.wait_primary(FAILOVER_BOUND, exclude={primary})

    def settled():
        doc = cluster.admin_status()
        roles = {r["id"]: r["role"] for r in doc["replicas"]}
        return doc if roles.get(primary) == "down" and roles.get(new) == "primary" else None

    doc = wait_for(settled, FAILOVER_BOUND, "vod-admin to show the killed primary down and the new one primary",
                   interval=0.1, describe=cluster.describe)
    roles = {r["id"]: r["role"] for r in doc["replicas"]}
    assert len(doc["replicas"]) == 3, doc["replicas"]
    assert [rid for rid, role in roles.items() if role == "primary"] == [new], roles
    assert roles[primary] == "down"
    assert doc["primary"] == new


def test_probe_command_line(cluster):
    base = [sys.executable, "-m", "vod.groups.probe", "--coordinators", ",".join(cluster.coordinators),
            "--secret-file", str(cluster.secret_file)]
    out = subprocess.run(base + ["ruids", "5"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5
    assert [x["ruid"] for x in lines] == sorted({x["ruid"] for x in lines})
    assert {x["replica"] for x in lines} == {cluster.wait_primary()}
    out = subprocess.run(base + ["status"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["primary"] == cluster.wait_primary() and doc["last_ruid"] >= lines[-1]["ruid"]
    # A wrong secret is an error exit, not a hang.
    wrong = cluster.base / "wrong-secret"
    wrong.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    wrong.chmod(0o600)
    out = subprocess.run(base[:-1] + [str(wrong), "--give-up-after", "5", "ruids", "1"], capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 7, (out.returncode, out.stderr)
    assert "secret" in out.stderr
