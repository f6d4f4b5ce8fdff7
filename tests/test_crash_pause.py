"""Issue 6, pause and resume: the session on a fake clock, the terminal and signal hooks, then real processes.

Pure part: a pause asked before the play has a buffer is kept; feeds opened while paused (a restripe) say
PAUSE right after HELLO; resume says RESUME to every server and plays on without a stall; `p`/space on a
terminal (a pseudo-terminal here) and SIGUSR1 toggle it, and the terminal's mode is put back.

Real part: 3 coordinators, 2 rate-limited `vod-server`s, a real-time `vod-client play` whose credit covers
the whole movie (so only PAUSE can stop the servers). SIGUSR1 pauses it: what it receives meanwhile is at
most what was in flight; SIGUSR1 resumes it and the movie completes frame-exact. A client SIGKILLed while
paused is cleaned up as any crash: request failed, video group dissolved, the servers' streams ended.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cluster import wait_for
from test_client_session import FRAMES, Harness, jpeg, run_for, stream_all, strategy_event
from test_crash_support import assert_cleaned_up_after_crash, running_system
from vod.client.cli import KeyReader, install_pause_signal
from vod.client.session import PlayState
from vod.strategy.mask import FrameMask
from vod.stream import protocol as p


def controls(transport) -> list[str]:
    return [m.name for m in p.ControlDecoder().feed(transport.value())]


# -- the session, on a fake clock ----------------------------------------------------------------------------


def test_a_pause_before_the_buffer_exists_is_kept_and_told_after_hello(tmp_path):
    h = Harness(tmp_path)
    h.session.pause()
    assert h.session.paused
    h.start()
    p1, t1, p2, t2 = stream_all(h)
    for t in (t1, t2):
        names = controls(t)
        assert names[0] == "HELLO" and names[1] == "PAUSE"
    h.send(p1, range(0, FRAMES, 2))
    h.send(p2, range(1, FRAMES, 2))
    run_for(h, 5)
    assert h.sink.frames == [] and h.session.state is PlayState.DRAINING  # all in, nothing played: paused
    h.session.toggle_pause()
    assert not h.session.paused
    run_for(h, 3)
    assert h.result.state is PlayState.DONE and h.result.summary["stalls"] == 0
    assert h.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)]


def test_a_feed_opened_by_a_restripe_while_paused_starts_paused_and_resume_reaches_all(tmp_path):
    h = Harness(tmp_path).start()
    p1, t1, p2, t2 = stream_all(h)
    h.send(p1, [0])
    h.send(p2, [1])
    run_for(h, 0.05)  # frame 0 shown, frame 1 due at 0.1 s: no stall before the pause
    h.session.pause()
    played = len(h.sink.frames)
    assert controls(t1)[-1] == "PAUSE" and controls(t2)[-1] == "PAUSE"
    # s2 failed: its frames go to s3, a server this play has no feed for yet.
    rest = FrameMask.from_indices(FRAMES, range(3, FRAMES, 2))
    h.session.on_event(strategy_event(2, {"s1": FrameMask.from_indices(FRAMES, range(0, FRAMES, 2)), "s3": rest},
                                      reason="restripe", addresses={"s1": "10.0.0.1:9000", "s3": "10.0.0.3:9000"}))
    h.clock.advance(0.02)
    links = h.accept_all()
    p3, t3 = links["10.0.0.3:9000"]
    assert controls(t3)[:2] == ["HELLO", "PAUSE"]
    run_for(h, 10)
    assert len(h.sink.frames) == played and h.session.paused and h.result is None
    h.session.resume()
    for t in (t1, t3):
        assert controls(t)[-1] != "PAUSE" and "RESUME" in controls(t)
    h.send(p1, range(2, FRAMES, 2), revision=2)
    h.send(p3, range(3, FRAMES, 2), revision=2)
    run_for(h, 3)
    assert h.result.state is PlayState.DONE and h.result.summary["stalls"] == 0
    assert h.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)]


def test_a_stall_cut_by_a_pause_counts_only_until_the_pause(tmp_path):
    h = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, [0])
    run_for(h, 0.5)  # frame 1 was due at 0.1 s after the start: stalled since
    h.session.pause()
    run_for(h, 20)
    h.send(p2, range(1, FRAMES, 2))
    h.send(p1, range(2, FRAMES, 2))
    h.session.resume()
    run_for(h, 3)
    assert h.result.state is PlayState.DONE and h.result.summary["stalls"] == 1
    assert h.result.summary["stall_ms"] < 1000  # the twenty paused seconds are not stall time


# -- the hooks: a terminal's keys, SIGUSR1 ------------------------------------------------------------------


class FakeReactor:
    def __init__(self):
        self.readers = []

    def addReader(self, reader):
        self.readers.append(reader)

    def removeReader(self, reader):
        self.readers.remove(reader)

    def callFromThread(self, fn, *args):
        fn(*args)


def test_p_or_space_on_a_terminal_toggles_and_the_mode_is_put_back():
    import termios

    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        reactor, toggles = FakeReactor(), []
        keys = KeyReader(reactor, slave, lambda: toggles.append(1))
        assert reactor.readers == [keys]
        assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak: keys one by one
        os.write(master, b"p")
        keys.doRead()
        os.write(master, b"x ")
        keys.doRead()
        assert len(toggles) == 2
        keys.stop()
        keys.stop()
        assert reactor.readers == [] and termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_sigusr1_toggles_and_the_old_handler_comes_back():
    toggles = []
    previous = signal.getsignal(signal.SIGUSR1)
    undo = install_pause_signal(FakeReactor(), lambda: toggles.append(1))
    try:
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
    finally:
        undo()
    assert toggles == [1, 1] and signal.getsignal(signal.SIGUSR1) == previous


# -- real processes -----------------------------------------------------------------------------------------

PAUSE_LINE = re.compile(r"^(?P<t>\d+\.\d+) INFO vod\.client\.session: (?P<what>paused|resumed) at frame (?P<at>\d+): "
                        r"received (?P<received>\d+), played (?P<played>\d+)")
PAUSED_FOR = 2.5  # seconds; the servers, unpaused, would send about 90 frames meanwhile


@pytest.fixture
def system(tmp_path):
    # About 1.6 times the movie's rate together (its frames are ~2 KB, 24 per second): without PAUSE
    # they keep sending through a pause, since the client's credit covers the whole movie.
    with running_system(tmp_path, servers=2, server_args=("--rate-limit", "40K")) as s:
        yield s


def pause_lines(system):
    out = []
    for _, line in system.log("client"):
        m = PAUSE_LINE.match(line)
        if m:
            out.append({"time": float(m["t"]), "what": m["what"], "at": int(m["at"]),
                        "received": int(m["received"]), "played": int(m["played"])})
    return out


def start_streaming(system):
    client = system.play("--lead", "12")  # credit for the whole ten-second movie at once
    request = wait_for(lambda: (r := system.request_of()) and r["state"] == "streaming" and r, 30,
                       "the request streaming", interval=0.2, describe=system.describe)
    time.sleep(1.0)  # a second into the movie: well under way, far from its end
    assert client.poll() is None
    return client, request["ruid"]


def toggle(system, what):
    seen = len(pause_lines(system))
    system.procs["client"].send_signal(signal.SIGUSR1)
    return wait_for(lambda: (lines := pause_lines(system)) and len(lines) > seen and lines[-1]["what"] == what
                    and lines[-1], 10, f"the client {what}", interval=0.05, describe=system.describe)


def test_pause_stops_the_servers_and_resume_completes_the_movie_frame_exact(system):
    client, ruid = start_streaming(system)
    paused = toggle(system, "paused")
    assert 0 < paused["received"] < system.frames
    time.sleep(PAUSED_FOR)
    resumed = toggle(system, "resumed")
    # Only what was in flight when PAUSE reached the servers came in meanwhile; the playhead stood still.
    assert resumed["received"] - paused["received"] <= 16, (paused, resumed)
    assert resumed["played"] == paused["played"] and resumed["at"] == paused["at"]
    assert resumed["received"] < system.frames

    summary = system.finished_whole(client, ruid)
    assert summary["frames_received"] == system.frames and summary["frames_missing"] == 0
    assert sorted(summary["per_server"]) == system.server_ids
    assert summary["stall_ms"] < 1000 * PAUSED_FOR / 2  # the pause is not a stall
    assert system.played_frames() == system.expected_frames()
    for sid in system.server_ids:  # each sent its stripe once, as one stream
        ends = system.stream_ends(sid, ruid)
        assert len(ends) == 1 and ends[0]["frames"] == system.frames // 2, (sid, ends)


def test_a_client_killed_while_paused_is_cleaned_up_like_any_crash(system):
    client, ruid = start_streaming(system)
    toggle(system, "paused")
    time.sleep(1.0)
    killed_at = system.kill("client")
    assert_cleaned_up_after_crash(system, ruid, killed_at)
    assert system.live_servers() == set(system.server_ids)
