"""Acceptance tests: three real `vod-coordinator` processes on 127.0.0.1, killed and paused for real.

Each test gets a fresh group from the `cluster` fixture (tests/cluster.py), which
SIGKILLs every replica when the test ends, pass or fail. RUIDs are obtained with
the scripted client `vod.groups.probe`; every wait has a deadline, and the only
timing assertions are generous bounds (a failover is measured in tenths of a
second; `bench/failover.py` reports the numbers).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from cluster import Cluster, acting_intervals, cluster, overlaps, wait_for  # noqa: F401 (fixture)
from vod.groups.probe import BlockingClient, Ruid, encode_box
from vod.groups.wire import PROTOCOL_VERSION, AuthFailed, Authenticate, Challenge, NextRuid, NotPrimary, Status

FAILOVER_BOUND = 10.0  # seconds; measured medians are ~0.2 s, so this only catches "never"


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
        load.wait_count(lambda r: r.replica == new, 50, FAILOVER_BOUND, f"50 RUIDs from {new}", cluster.describe)
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
    status = cluster.statuses([new])[new]
    assert status["last_ruid"] >= acked[-1].ruid


def test_sigstop_of_the_primary_never_gives_two_acting_primaries(cluster):
    """Pause the primary ~2 s, let the others elect a new one, resume it; check the ROLE lines.

    What can be checked, and why it is fair:

    - Each replica's acting interval runs from its `ROLE acting-primary` line to its next `ROLE
      not-primary` line (or its death). Taken literally, the paused primary's interval would run until
      it wakes and logs `not-primary`, and would overlap the new primary's: a SIGSTOPped process cannot
      log. But it cannot do anything else either, so while it is stopped it does not act. Its interval
      therefore effectively ends when it was seen stopped (state T in /proc) -- provided that, after
      SIGCONT, it logs `not-primary` before it does anything as primary.
    - "Anything as primary" is checked from outside: a NextRuid sent to it on an authenticated connection
      while it is frozen (so read only after it wakes, when a newer primary exists) must be answered
      `NotPrimary`, not with a RUID; and its log between SIGCONT and its `not-primary` line must show no
      primary work (no proposal that failed to commit, no member exclusion, no new acting line).
    - With the paused interval cut at that point, no two replicas' intervals may share an instant, and
      RUIDs from before, during and after the pause are strictly increasing.
    All timestamps are time.time() on one machine: the replicas' log lines and the harness's events.
    """
    old = cluster.wait_primary()
    others = [r for r in cluster.ids if r != old]
    with cluster.probe() as probe:
        ruids = [probe.next_ruid() for _ in range(20)]
    stale = BlockingClient(cluster.listen(old), timeout=FAILOVER_BOUND)
    try:
        stale.authenticate(cluster.secret, "stale-member")
        stopped_at = cluster.pause(old)
        new = cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        with cluster.probe([cluster.listen(r) for r in others]) as probe:
            during = [probe.next_ruid() for _ in range(20)]
        assert old not in {r.replica for r in during}
        tag = stale.ask(NextRuid)  # waits in the frozen process's socket
        time.sleep(max(0.0, stopped_at + 2.0 - time.time()))
        resumed_at = cluster.resume(old)
        with pytest.raises(NotPrimary):
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
    frozen = [iv for iv in intervals.get(old, []) if iv[0] <= stopped_at < iv[1]]
    assert len(frozen) == 1, f"{old} was not acting when paused: {intervals}"
    start, end, term = frozen[0]
    assert end == stepped_down.time, "its acting interval ends with the not-primary line it logged on waking"
    intervals[old] = [iv for iv in intervals[old] if iv != frozen[0]] + [(start, stopped_at, term)]
    assert not overlaps(intervals), f"two acting primaries at once: {overlaps(intervals)}\n{lines}"
    new_start = min(s for s, e, t in intervals[new] if e > stopped_at)
    assert new_start > stopped_at, "the new primary started acting only after the old one was stopped"
    assert max(t for s, e, t in intervals[new]) > term, "the new primary acts in a later term"


class OpenLoop:
    """One authenticated connection sending NextRuid at a fixed rate whatever the answers (open loop).

    A sender thread and a reader thread share the socket (one only writes, one only reads). `sent`
    records time.time() taken *before* each send, so a request recorded after an instant was really
    sent after it; `answers` maps each tag to (time, RUID or None for an error answer).
    """

    def __init__(self, addr: str, secret: bytes, member_id: str, rate: float):
        self.client = BlockingClient(addr, timeout=FAILOVER_BOUND)
        self.client.authenticate(secret, member_id)
        self.rate = rate
        self.sent: dict[bytes, float] = {}
        self.answers: dict[bytes, tuple[float, int | None]] = {}
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _send(self) -> None:
        start, i = time.perf_counter(), 0
        try:
            while not self.halt.is_set():
                delay = start + i / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t = time.time()
                self.sent[self.client.ask(NextRuid)] = t
                i += 1
        except OSError:
            pass  # connection closed under us: the reader reports what was answered

    def _read(self) -> None:
        try:
            while not (self.halt.is_set() and len(self.answers) >= len(self.sent)):
                box = self.client.read_box(FAILOVER_BOUND)
                tag = box.get(b"_answer") or box.get(b"_error")
                ruid = NextRuid.parseResponse(box, None)["ruid"] if b"_answer" in box else None
                self.answers[tag] = (time.time(), ruid)
        except OSError:
            pass  # ProbeTimeout / ConnectionClosed are OSErrors: stop reading

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(FAILOVER_BOUND + 5)
        self.client.close()
        assert not any(t.is_alive() for t in self.threads), "an open-loop thread did not stop"


@pytest.mark.xfail(strict=False, reason=(
    "known bug: MemberSession._require_primary() trusts CoordinatorReplica.acting, refreshed only by the 20 ms "
    "LoopingCall; after SIGCONT the reactor can serve requests read from already-ready sockets before that "
    "call runs, and pysyncobj forwards the proposals to the new leader, so the old primary answers RUIDs. "
    "Fix: re-read the lease per command (see the report). Fails in most runs until fixed."))
def test_sigstop_under_load_old_primary_answers_nothing_after_the_new_primary_starts(cluster):
    """The outside view of "never two acting primaries": no request that reached the old primary after the
    new one started acting may be answered with a RUID by the old one. Several connections keep its
    reactor busy, so the SIGSTOP lands while it is handling requests rather than idle in epoll_wait."""
    old = cluster.wait_primary()
    loads = [OpenLoop(cluster.listen(old), cluster.secret, f"load-{i}", rate=400) for i in range(6)]
    try:
        time.sleep(1.0)
        stopped_at = cluster.pause(old)
        new = cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        time.sleep(max(0.0, stopped_at + 1.0 - time.time()))
        resumed_at = cluster.resume(old)
        time.sleep(1.0)
    finally:
        for load in loads:
            load.stop()
    new_started = min(line.time for line in cluster.role_lines()
                      if line.replica == new and line.role == "acting-primary" and line.time > stopped_at)
    assert new_started < resumed_at
    late = sorted((sent, load.answers[tag][1]) for load in loads for tag, sent in load.sent.items()
                  if sent > new_started and load.answers.get(tag, (0, None))[1] is not None)
    ruids = [ruid for load in loads for _, ruid in load.answers.values() if ruid is not None]
    assert len(ruids) == len(set(ruids)), "a RUID was handed out twice"
    assert not late, (f"{old} answered {len(late)} NextRuid sent after {new} started acting at {new_started:.6f} "
                      f"(first sent at {late[0][0]:.6f}, RUID {late[0][1]}); it logged not-primary at "
                      f"{min(l.time for l in cluster.role_lines() if l.replica == old and l.time > resumed_at):.6f}")


@pytest.mark.xfail(strict=False, reason=(
    "known bug in CoordinatorReplica.primary_listen(): just after stepping down, raft_view.leader still "
    "names this replica, so NotPrimary redirects to itself; fix: treat leader == self.raft_addr as unknown"))
def test_woken_old_primary_does_not_redirect_to_itself(cluster):
    old = cluster.wait_primary()
    with BlockingClient(cluster.listen(old), timeout=FAILOVER_BOUND) as stale:
        stale.authenticate(cluster.secret, "stale-member")
        stopped_at = cluster.pause(old)
        cluster.wait_primary(FAILOVER_BOUND, exclude={old})
        tag = stale.ask(NextRuid)
        time.sleep(max(0.0, stopped_at + 1.0 - time.time()))
        cluster.resume(old)
        with pytest.raises(NotPrimary) as refused:
            stale.answer(NextRuid, tag)
    assert str(refused.value) != cluster.listen(old), "a replica that is not primary named itself as primary"


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
