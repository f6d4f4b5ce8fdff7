"""Issue 6, a client crash without a stall anywhere: real processes, the client SIGKILLed mid-movie.

3 coordinators, 2 `vod-server`s, a real-time `vod-client play` of a ten-second movie. Once both servers
stream, the client is SIGKILLed. Within the failure timeout (plus a bound) its request is `failed` in
`vod-admin requests`, its video group is gone from `vod-admin groups`, and each server's stream of that RUID
ended no later than a second after the server heard of the dissolution (from the servers' timestamped logs).
"""

from __future__ import annotations

import time

import pytest

from test_crash_support import assert_cleaned_up_after_crash, running_system


@pytest.fixture
def system(tmp_path):
    with running_system(tmp_path, servers=2) as s:
        yield s


def test_client_killed_mid_movie_is_cleaned_up(system):
    system.play()
    request = system.wait_streaming()
    ruid = request["ruid"]
    time.sleep(1.0)  # into the movie: it is ten seconds long
    assert system.procs["client"].poll() is None

    killed_at = system.kill("client")
    assert_cleaned_up_after_crash(system, ruid, killed_at)
    # Nothing else went: the servers are still members, ready for the next client.
    assert system.live_servers() == set(system.server_ids)
