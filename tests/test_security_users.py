"""Users with their own credentials, for real: three coordinators, one server, users alice and bob, an admin.

Alice plays a movie with her credential file. Bob, with his, cannot see her request (`vod-admin requests`,
`vod-admin request RUID`) nor CDONE, cancel or read it (a probe joined as his client); he can open and
cancel his own. Alice sees hers, with its log; an admin credential sees both. Every process is on
127.0.0.1, every wait is bounded, and everything is SIGKILLed at the end (tests/test_crash_support.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cluster import wait_for
from test_crash_support import launcher, running_system
from vod.coordinator import requests as rq
from vod.credentials import read_credential
from vod.groups import wire
from vod.groups.probe import BlockingClient
from vod.strategy.mask import FrameMask


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=1) as s:
        yield s


def vod_admin(system, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(launcher("vod.admin") + ["--coordinators", ",".join(system.cluster.coordinators),
                                                   "--timeout", "2", *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def issue(system, name: str, role: str = "viewer"):
    path = system.base / f"{name}.cred"
    run = vod_admin(system, "--secret-file", str(system.cluster.secret_file), "user", "add", name, "--role", role,
                    "--out", str(path))
    assert run.returncode == 0, run.stderr
    return path


def listed(system, credential, *command: str) -> list[dict] | None:
    run = vod_admin(system, "--credential-file", str(credential), *command, "--json")
    return json.loads(run.stdout) if run.returncode == 0 else None


def joined_probe(system, credential, member_id: str) -> BlockingClient:
    """A client of `credential`'s user, joined at the primary: it sends what a client may send."""
    primary = system.cluster.wait_primary()
    probe = BlockingClient(system.cluster.listen(primary), timeout=5.0)
    probe.authenticate(read_credential(str(credential)), member_id)
    probe.call(wire.Join, kind="client", domain="d", address="127.0.0.1:1", user="", capacity=0, movies=[])
    return probe


def refusal(probe: BlockingClient, command, **arguments) -> str:
    with pytest.raises(wire.Refused) as refused:
        probe.call(command, **arguments)
    return str(refused.value)


def test_user_a_cannot_see_or_cdone_user_bs_ruid(system):
    alice, bob, root = issue(system, "alice"), issue(system, "bob"), issue(system, "root", "admin")
    play = system.play(name="alice-tv", credential=alice)
    request = wait_for(lambda: [r for r in listed(system, alice, "requests") or [] if r["state"] == "streaming"],
                       30, "alice's request to stream", interval=0.3, describe=system.describe)[0]
    ruid = request["ruid"]
    assert request["user"] == "alice" and request["client"] == "alice-tv"

    # Bob's own client: alice's RUID does not exist for him, whatever he sends.
    probe = joined_probe(system, bob, "bob-tv")
    try:
        held = rq.mask_to_text(FrameMask.full(system.frames))
        for command, arguments in [(wire.CDone, {"held": held}), (wire.Cancel, {}), (wire.GetRequest, {})]:
            assert f"no request with RUID {ruid} among the requests of user bob" in \
                refusal(probe, command, ruid=ruid, **arguments)
        own = probe.call(wire.OpenRequest, request_id="b1", movie="m", wanted=held)["ruid"]
        probe.call(wire.Cancel, ruid=own)  # his own he may cancel
    finally:  # no Leave: its answer races the coordinator closing the link; a closed link is excluded anyway
        probe.close()

    assert [r["ruid"] for r in listed(system, bob, "requests")] == [own]
    run = vod_admin(system, "--credential-file", str(bob), "request", str(ruid))
    assert run.returncode == 7 and f"no request with RUID {ruid}" in run.stderr, run.stderr
    run = vod_admin(system, "--credential-file", str(bob), "status")
    assert run.returncode == 2 and "needs the admin role" in run.stderr, run.stderr

    assert play.wait(timeout=60) == 0, system.describe()
    summary = json.loads((system.base / "alice-tv.out").read_text())
    assert summary["frames_received"] == system.frames
    mine = listed(system, alice, "requests")
    assert [(r["ruid"], r["state"]) for r in mine] == [(ruid, "done")]
    log = listed(system, alice, "request", str(ruid))
    assert log["sources"] == {"s1": system.frames} and [e["state"] for e in log["log"]][-1] == "done"

    everyone = listed(system, root, "requests")
    assert {(r["ruid"], r["user"]) for r in everyone} == {(ruid, "alice"), (own, "bob")}
