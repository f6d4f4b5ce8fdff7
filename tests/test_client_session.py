"""The playback state machine on a fake clock: a scripted group member, scripted servers over StringTransport,
a real cache in a temporary directory. No sockets, no threads, no sleeps."""

import base64

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from test_client_feed import FakeNet
from vod.client import session as session_module
from vod.client.cache import FrameCache
from vod.client.session import PlaybackSession, PlayFailed, PlayOptions, PlayState
from vod.errors import UsageError
from vod.groups import wire
from vod.groups.events import GroupDissolved, RequestChanged, StrategyAssigned
from vod.groups.member import CoordinatorRefused
from vod.stream import protocol as p
from vod.strategy.mask import FrameMask

FRAMES, FPS, RUID = 12, 10.0, 7
TOKEN = "v1." + "5e" * 32  # the stream token the coordinator pushes to c1 with each strategy
CATALOGUE = {"m": {"frame_count": FRAMES, "fps": FPS, "width": 96, "height": 64}}


def jpeg(i):
    return b"\xff\xd8movie frame %d\xff\xd9" % i


def text(mask):
    return base64.b64encode(mask.to_bytes()).decode("ascii")


def strategy_event(revision, masks, reason="initial", addresses=None):
    strategy = {"v": 1, "ruid": RUID, "movie": "m", "client": "c1", "frame_count": FRAMES, "policy": "weighted",
                "server_choice": "capacity", "assignments": [{"server": s, "mask": text(m)} for s, m in masks.items()],
                "backups": []}
    addresses = addresses or {s: f"10.0.0.{n + 1}:9000" for n, s in enumerate(masks)}
    return StrategyAssigned(RUID, f"video:{RUID}", revision, reason, strategy, addresses, TOKEN)


class FakeMember:
    """The GroupMember as the session sees it; answers scripted per command."""

    def __init__(self, on_event, script):
        self.on_event = on_event
        self.script = script
        self.calls = []
        self.coordinators = ("10.0.0.100:7000",)
        self.stopped = False

    def start(self):
        return self.script.get("start", defer.succeed({"group": "domain:d"}))

    def call(self, command, **arguments):
        self.calls.append((command.__name__, arguments))
        answer = self.script.get(command.__name__, {})
        if callable(answer):
            return answer(self, **arguments)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)

    def names(self):
        return [name for name, _ in self.calls]

    def args(self, name):
        return [a for n, a in self.calls if n == name]


class Sink:
    threaded = False
    name = "recorder"

    def __init__(self):
        self.frames, self.closed, self.aborted = [], False, False
        self.ready = defer.succeed(None)

    def open(self):
        pass

    def write(self, index, payload):
        self.frames.append((index, payload))

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def describe(self):
        return {"output": "recorder"}


class Harness:
    def __init__(self, tmp_path, script=None, cache=True, options=None):
        self.clock = Clock()
        self.net = FakeNet()
        self.sink = Sink()
        self.script = {"Requests": {"requests": [], "caches": [], "movies": CATALOGUE},
                       "OpenRequest": self.open_request, **(script or {})}
        self.members = []
        self.strategy = strategy_event(1, {"s1": FrameMask.from_indices(FRAMES, range(0, FRAMES, 2)),
                                           "s2": FrameMask.from_indices(FRAMES, range(1, FRAMES, 2))})
        self.early = False  # push the strategy before the OpenRequest answer, as a real primary may
        self.cache = FrameCache(str(tmp_path / "cache"), "m") if cache else None
        from vod.client.worker import InlineWorker
        self.session = PlaybackSession(self.clock, "m", "c1", member_factory=self.make_member, cache=self.cache,
                                       worker=InlineWorker(), make_sinks=lambda meta: [self.sink],
                                       options=options or PlayOptions(), connector=self.net.connect)
        self.result = None

    def make_member(self, on_event):
        member = FakeMember(on_event, self.script)
        self.members.append(member)
        return member

    @property
    def member(self):
        return self.members[-1]

    def open_request(self, member, **arguments):
        if self.early:
            member.on_event(self.strategy)
            return defer.succeed({"ruid": RUID, "state": "strategized"})
        self.clock.callLater(0.01, member.on_event, self.strategy)
        return defer.succeed({"ruid": RUID, "state": "strategized"})

    def start(self):
        self.session.start().addCallback(lambda r: setattr(self, "result", r))
        return self

    def accept_all(self):
        """Accept every pending connection attempt; returns {address: (protocol, transport)}."""
        out = {}
        for address, factory, d in self.net.attempts:
            if not d.called:
                from twisted.internet.testing import StringTransport
                proto = factory.buildProtocol(None)
                transport = StringTransport()
                proto.makeConnection(transport)
                d.callback(proto)
                out[address] = (proto, transport)
        return out

    def send(self, proto, indices, revision=1):
        proto.dataReceived(b"".join(p.encode_frame(RUID, revision, i, int(i * 1e6 / FPS), jpeg(i),
                                                   p.frame_digest(jpeg(i))) for i in indices))

    def end(self, proto, revision=1):
        proto.dataReceived(p.encode_end(RUID, revision, 0))


def run_for(h, seconds, step=0.05):
    """Advance the clock in small steps, as time passes (a LoopingCall skips ticks a big jump jumps over)."""
    for _ in range(round(seconds / step)):
        h.clock.advance(step)


def hello_of(transport):
    return next(m.body for m in p.ControlDecoder().feed(transport.value()) if m.name == "HELLO")


def stream_all(h):
    h.clock.advance(0.02)
    links = h.accept_all()
    assert sorted(links) == ["10.0.0.1:9000", "10.0.0.2:9000"]
    (p1, t1), (p2, t2) = links["10.0.0.1:9000"], links["10.0.0.2:9000"]
    return p1, t1, p2, t2


def test_a_whole_play_from_two_servers(tmp_path):
    h = Harness(tmp_path).start()
    assert h.session.state is PlayState.AWAITING_STRATEGY
    assert h.member.names() == ["Requests", "OpenRequest"]
    assert FrameMask.from_bytes(base64.b64decode(h.member.args("OpenRequest")[0]["wanted"])) == FrameMask.full(FRAMES)
    p1, t1, p2, t2 = stream_all(h)
    assert h.session.state is PlayState.STREAMING
    hello = hello_of(t1)
    assert hello["ruid"] == RUID and hello["client"] == "c1" and hello["mode"] == "play"
    assert hello["token"] == TOKEN and hello_of(t2)["token"] == TOKEN
    h.send(p2, [1, 3])
    h.send(p1, [0])
    assert h.member.names().count("Started") == 1
    h.clock.advance(1.0)
    assert "Progress" in h.member.names()
    progress = FrameMask.from_bytes(base64.b64decode(h.member.args("Progress")[-1]["held"]))
    assert progress == FrameMask.from_indices(FRAMES, [0, 1, 3])
    h.send(p1, range(2, FRAMES, 2))
    h.send(p2, range(5, FRAMES, 2))
    assert h.session.state is PlayState.DRAINING
    cdone = h.member.args("CDone")[0]
    assert cdone["ruid"] == RUID and FrameMask.from_bytes(base64.b64decode(cdone["held"])) == FrameMask.full(FRAMES)
    assert any(m.name == "STOP" for m in p.ControlDecoder().feed(t1.value()))
    h.clock.advance(10)
    assert h.session.state is PlayState.DONE and h.result.state is PlayState.DONE
    assert h.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)] and h.sink.closed
    assert h.member.stopped
    s = h.result.summary
    assert s["ruid"] == RUID and s["frames_received"] == FRAMES and s["per_server"] == {"s1": 6, "s2": 6}
    assert s["stalls"] >= 1  # frame 2 came late
    for key in ("startup_ms", "frames_total", "stall_ms", "rebuffer_ratio", "duplicates", "output"):
        assert key in s
    # the cache now holds every frame
    assert FrameCache(str(tmp_path / "cache"), "m").open().held() == FrameMask.full(FRAMES)


def test_a_complete_cache_plays_with_no_coordinator_and_no_server(tmp_path):
    first = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(first)
    first.send(p1, range(0, FRAMES, 2))
    first.send(p2, range(1, FRAMES, 2))
    first.clock.advance(10)
    assert first.result.state is PlayState.DONE

    again = Harness(tmp_path).start()
    assert again.members == []  # not even joined
    again.clock.advance(10)
    assert again.result.state is PlayState.DONE and again.result.summary["local"]
    assert again.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)]
    assert again.result.summary["frames_received"] == 0 and again.result.summary["frames_cached"] == FRAMES


def test_a_partial_cache_asks_only_for_the_missing_frames(tmp_path):
    first = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(first)
    first.send(p1, [0, 2, 4])
    first.session.cancel()
    assert first.result.state is PlayState.CANCELLED
    assert first.member.names()[-1] == "Cancel"

    again = Harness(tmp_path)
    again.strategy = strategy_event(1, {"s1": FrameMask.from_indices(FRAMES, range(6, FRAMES, 2)),
                                        "s2": FrameMask.from_indices(FRAMES, range(1, FRAMES, 2))})
    again.start()
    wanted = FrameMask.from_bytes(base64.b64decode(again.member.args("OpenRequest")[0]["wanted"]))
    assert wanted == FrameMask.full(FRAMES) - FrameMask.from_indices(FRAMES, [0, 2, 4])
    p1, t1, p2, _ = stream_all(again)
    assert FrameMask.from_bytes(base64.b64decode(hello_of(t1)["held"])) == FrameMask.from_indices(FRAMES, [0, 2, 4])
    again.send(p1, range(6, FRAMES, 2))
    again.send(p2, range(1, FRAMES, 2))
    again.clock.advance(10)
    assert again.result.state is PlayState.DONE
    assert again.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)]
    assert again.result.summary["frames_cached"] == 3 and again.result.summary["frames_received"] == 9


def test_a_strategy_pushed_before_the_request_answer_is_kept(tmp_path):
    h = Harness(tmp_path)
    h.early = True
    h.start()
    assert h.session.state is PlayState.STREAMING and len(h.net.attempts) == 2


def test_an_unknown_movie_says_which_movies_there_are(tmp_path):
    h = Harness(tmp_path, script={"Requests": {"movies": {"other": CATALOGUE["m"], "third": CATALOGUE["m"]}}})
    h.start()
    assert h.result.state is PlayState.FAILED
    assert isinstance(h.result.error, UsageError)
    assert "unknown movie 'm'" in str(h.result.error) and "other, third" in str(h.result.error)
    assert "OpenRequest" not in h.member.names() and h.member.stopped


def test_no_live_server_says_what_to_do(tmp_path):
    refusal = CoordinatorRefused("OpenRequest: no live server holds movie 'm'; cannot serve request 7")
    h = Harness(tmp_path, script={"OpenRequest": refusal}).start()
    assert h.result.state is PlayState.FAILED
    assert "start a vod-server" in str(h.result.error)


def test_an_unreachable_coordinator_times_out_with_advice(tmp_path):
    h = Harness(tmp_path, script={"start": defer.Deferred()}, options=PlayOptions(join_timeout=3)).start()
    h.clock.advance(3)
    assert h.result.state is PlayState.FAILED
    assert isinstance(h.result.error, PlayFailed) and "check --coordinators" in str(h.result.error)


def test_the_coordinator_ending_the_request_ends_the_play(tmp_path):
    h = Harness(tmp_path).start()
    p1, t1, _, _ = stream_all(h)
    h.send(p1, [0])
    h.member.on_event(GroupDissolved(f"video:{RUID}", 5, 0, ("c1", "s1", "s2")))
    h.member.on_event(RequestChanged(RUID, h.session.request_id, "c1", "failed",
                                     "no live server holding movie 'm' can take the 11 frames"))
    h.clock.advance(1)
    assert h.result.state is PlayState.FAILED
    assert "can take the 11 frames" in str(h.result.error) and "cached" in str(h.result.error)
    assert h.sink.aborted and "Cancel" not in h.member.names()
    assert t1.disconnecting


def test_a_restripe_drops_the_failed_server_and_adds_the_new_one(tmp_path):
    h = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, [0, 2])
    h.send(p2, [1])
    rest = FrameMask.from_indices(FRAMES, range(3, FRAMES, 2))
    h.member.on_event(strategy_event(2, {"s1": FrameMask.from_indices(FRAMES, range(0, FRAMES, 2)), "s3": rest},
                                     reason="restripe", addresses={"s1": "10.0.0.1:9000", "s3": "10.0.0.3:9000"}))
    assert h.session.feeds["s2"].state.value == "closed"
    links = h.accept_all()
    assert list(links) == ["10.0.0.3:9000"]
    h.send(p2, [3], revision=1)  # s2 is out: its frames do not count any more
    p3, t3 = links["10.0.0.3:9000"]
    h.send(p3, range(3, FRAMES, 2), revision=2)
    h.send(p1, range(4, FRAMES, 2), revision=2)
    h.clock.advance(10)
    assert h.result.state is PlayState.DONE
    assert h.result.summary["per_server"] == {"s1": 6, "s2": 1, "s3": 5}
    assert h.result.summary["revision"] == 2


def test_a_broken_server_stream_reports_what_is_held_at_once(tmp_path):
    # The coordinator restripes a crashed server's frames from the latest report, within milliseconds of the
    # crash: the frames that server sent since the periodic report must not be sent again by another.
    h = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, [0, 2])
    h.send(p2, [1, 3])
    assert "Progress" not in h.member.names()  # the periodic report is a second away
    p2.connectionLost(Failure(error.ConnectionLost()))
    assert h.session.feeds["s2"].state.value == "waiting"
    progress = FrameMask.from_bytes(base64.b64decode(h.member.args("Progress")[-1]["held"]))
    assert progress == FrameMask.from_indices(FRAMES, [0, 1, 2, 3])


def test_frames_count_only_from_the_servers_of_the_current_strategy(tmp_path):
    """Issue 8: s2 is restriped out. Its connection is closed, and what still arrives on it counts for nothing,
    even frames with good checksums stamped with the newest revision; the client dials only the addresses its
    strategies name (it listens nowhere, so no server can push frames to it unasked)."""
    h = Harness(tmp_path).start()
    p1, _, p2, t2 = stream_all(h)
    h.send(p1, [0, 2])
    h.send(p2, [1])
    rest = FrameMask.from_indices(FRAMES, range(3, FRAMES, 2))
    h.member.on_event(strategy_event(2, {"s1": FrameMask.from_indices(FRAMES, range(0, FRAMES, 2)), "s3": rest},
                                     reason="restripe", addresses={"s1": "10.0.0.1:9000", "s3": "10.0.0.3:9000"}))
    assert t2.disconnecting
    forged = b"\xff\xd8not the movie\xff\xd9"
    p2.dataReceived(b"".join(p.encode_frame(RUID, 2, i, 0, forged, p.frame_digest(forged)) for i in rest))
    assert not any(h.session.buffer.holds(i) for i in rest)
    p3, _ = h.accept_all()["10.0.0.3:9000"]
    assert [address for address, _, _ in h.net.attempts] == ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]
    h.send(p3, rest, revision=2)
    h.send(p1, range(4, FRAMES, 2), revision=2)
    h.clock.advance(10)
    assert h.result.state is PlayState.DONE
    assert h.sink.frames == [(i, jpeg(i)) for i in range(FRAMES)]
    assert h.result.summary["per_server"] == {"s1": 6, "s2": 1, "s3": 5}


def test_frames_that_never_come_are_asked_for_once_more_then_given_up(tmp_path):
    h = Harness(tmp_path).start()
    p1, t1, p2, t2 = stream_all(h)
    h.send(p1, range(0, FRAMES, 2))
    h.end(p1)
    h.send(p2, [1, 3, 5, 7, 9])
    h.end(p2)  # frame 11 never came
    t1.clear()
    t2.clear()
    run_for(h, 2.5)
    # s2 is asked again on the connection it keeps open after END; s1 owes nothing
    assert [(m.name, m.body) for m in p.ControlDecoder().feed(t2.value()) if m.name == "RESEND"] == \
        [("RESEND", {"frames": [11]})]
    assert not [m for m in p.ControlDecoder().feed(t1.value()) if m.name == "RESEND"]
    run_for(h, 2.5)
    assert h.session.state in (PlayState.DRAINING, PlayState.DONE)
    held = FrameMask.from_bytes(base64.b64decode(h.member.args("CDone")[0]["held"]))
    assert held == FrameMask.full(FRAMES) - FrameMask.from_indices(FRAMES, [11])
    h.clock.advance(10)
    assert h.result.state is PlayState.DONE and h.result.summary["frames_missing"] == 1


def refuse_pending(h, address):
    for attempt, _, d in h.net.attempts:
        if attempt == address and not d.called:
            d.errback(error.ConnectionRefusedError("refused"))


def test_a_server_given_up_on_does_not_hang_the_play_while_others_wait_for_credit(tmp_path):
    """s2 refuses every connection (say it never learned its assignment) while the coordinator, which thinks
    it fine, never restripes; s1 has sent what its credit allows and waits behind s2's first frame. The play
    asks s2 again after BLOCKED_GRACE, then gives the missing frames up: it ends instead of hanging."""
    h = Harness(tmp_path).start()
    h.clock.advance(0.02)
    refuse_pending(h, "10.0.0.2:9000")
    p1, _ = h.accept_all()["10.0.0.1:9000"]
    for _ in range(200):  # reconnections, with their back-off, until the feed gives up
        refuse_pending(h, "10.0.0.2:9000")
        h.clock.advance(0.05)
    assert h.session.feeds["s2"].state.value == "failed"
    h.send(p1, [0, 2, 4])  # no END: s1 still owes frames and waits for credit that frame 1 holds back
    attempts = len(h.net.attempts)
    run_for(h, session_module.BLOCKED_GRACE + 1.5)
    assert len(h.net.attempts) > attempts  # asked again
    for _ in range(200):
        refuse_pending(h, "10.0.0.2:9000")
        h.clock.advance(0.05)
    run_for(h, session_module.BLOCKED_GRACE + 1.5)
    assert h.session.state in (PlayState.DRAINING, PlayState.DONE)
    h.clock.advance(30)
    assert h.result.state is PlayState.DONE and h.result.summary["frames_missing"] > 0


def test_a_frame_asked_for_again_completes_the_play(tmp_path):
    h = Harness(tmp_path).start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, range(0, FRAMES, 2))
    h.end(p1)
    h.send(p2, [1, 3, 5, 7, 9])
    h.end(p2)
    run_for(h, 2.5)
    h.send(p2, [11])  # the server answers the RESEND on the same connection
    h.clock.advance(10)
    assert h.result.state is PlayState.DONE and h.result.summary["frames_missing"] == 0


def test_a_retried_request_answered_as_failed_fails_with_its_reason(tmp_path):
    def open_request(member, **arguments):
        # the first try failed the request at the primary, the answer was lost; the retry says how it is now
        member.on_event(RequestChanged(RUID, arguments["request_id"], "c1", "failed",
                                       "no live server holds movie 'm'; cannot serve request 7"))
        return defer.succeed({"ruid": RUID, "state": "failed"})

    h = Harness(tmp_path, script={"OpenRequest": open_request}).start()
    assert h.result.state is PlayState.FAILED and "start a vod-server" in str(h.result.error)
    assert "Cancel" not in h.member.names()


def test_no_strategy_asks_again_with_the_same_request_id(tmp_path):
    h = Harness(tmp_path, script={"OpenRequest": {"ruid": RUID, "state": "pending"}}).start()
    h.clock.advance(5)
    h.clock.advance(5)
    ids = {a["request_id"] for a in h.member.args("OpenRequest")}
    assert len(h.member.args("OpenRequest")) == 3 and len(ids) == 1
    h.clock.advance(5)
    assert h.result.state is PlayState.FAILED and "no strategy" in str(h.result.error)


def test_pause_holds_the_playhead_and_tells_the_servers(tmp_path):
    h = Harness(tmp_path).start()
    p1, t1, p2, _ = stream_all(h)
    h.send(p1, range(0, FRAMES, 2))
    h.send(p2, range(1, FRAMES, 2))
    h.session.pause()
    played = len(h.sink.frames)
    h.clock.advance(30)
    assert len(h.sink.frames) == played and h.session.state is PlayState.DRAINING
    h.session.resume()
    h.clock.advance(2)
    assert h.result.state is PlayState.DONE and h.result.summary["stalls"] == 0
    assert len(h.sink.frames) == FRAMES


def test_a_sink_failure_fails_the_play_and_cancels_the_request(tmp_path):
    h = Harness(tmp_path).start()
    p1, _, _, _ = stream_all(h)

    def broken(index, payload):
        raise PlayFailed("disk full")

    h.sink.write = broken
    h.send(p1, [0])
    h.clock.advance(1)
    assert h.result.state is PlayState.FAILED and str(h.result.error) == "disk full"
    assert "Cancel" in h.member.names() and h.sink.aborted


def test_credit_follows_the_playhead(tmp_path):
    h = Harness(tmp_path, options=PlayOptions(lead=0.3)).start()  # 3 frames of lead
    p1, t1, p2, _ = stream_all(h)
    first = [m.body for m in p.ControlDecoder().feed(t1.value()) if m.name == "CREDIT"]
    assert first == [{"until": 3}]
    t1.clear()
    h.send(p1, [0, 2, 4])
    h.send(p2, [1, 3, 5])
    h.clock.advance(0.25)
    credits = [m.body["until"] for m in p.ControlDecoder().feed(t1.value()) if m.name == "CREDIT"]
    assert credits and credits[-1] > 3


def test_a_download_credit_window_is_wide_but_bounded_by_the_picture_size():
    from vod.client.cache import MovieMeta
    from vod.client.session import FAST_BUFFER_FRAMES, fast_buffer_frames

    def window(width, height):
        return fast_buffer_frames(MovieMeta("m", 5000, 24.0, width, height), lead=2.0)

    assert window(640, 360) == FAST_BUFFER_FRAMES  # wide: far more than two seconds of movie
    assert 96 < window(1920, 1080) < FAST_BUFFER_FRAMES  # fewer frames of a bigger picture
    assert window(7680, 4320) == window(0, 0) == 96  # never under the play-mode window (twice the lead)
