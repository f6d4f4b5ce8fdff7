"""`vod-client play --trace FILE`: the JSON Lines writer alone (a fake stream, a Clock), and inside a play on a
fake clock (the session harness of test_client_session: scripted member, scripted servers). No sockets, no
threads, no sleeps."""

import io
import json
import logging

import pytest
from twisted.internet.task import Clock

from test_client_session import FRAMES, RUID, Harness, jpeg, run_for, stream_all, strategy_event
from vod.client.cli import build_parser
from vod.client.session import PlaybackSession, PlayOptions, PlayState
from vod.client.trace import TRACE_VERSION, TraceWriter
from vod.client.worker import InlineWorker
from vod.errors import UsageError
from vod.stream import protocol as p
from vod.strategy.mask import FrameMask


class Stream(io.StringIO):
    """A text stream that counts flushes and can be made to fail."""

    def __init__(self):
        super().__init__()
        self.flushes = 0
        self.fail = False

    def write(self, text):
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().write(text)

    def flush(self):
        self.flushes += 1
        super().flush()

    def close(self):
        self.contents = self.getvalue()
        super().close()


def lines(stream):
    text = stream.contents if stream.closed else stream.getvalue()
    return [json.loads(line) for line in text.splitlines()]


def test_the_header_comes_first_with_the_version_and_every_line_carries_the_clock_time():
    clock, stream = Clock(), Stream()
    clock.advance(1_700_000_000.25)
    trace = TraceWriter(stream, clock.seconds)
    trace.header("m", "c1", pid=42)
    clock.advance(0.5)
    trace.strategy(7, 1, "initial", {"s1": FrameMask.from_text("1010"), "s2": FrameMask.from_text("0101")})
    clock.advance(0.125)
    trace.frame(2, "s1", 1, False, "accepted")
    trace.frame(2, 's"2', 3, True, "duplicate")  # a server id that needs escaping
    clock.advance(1)
    trace.end("done")
    trace.close()
    header, strategy, frame, dup, end = lines(stream)
    assert header == {"v": TRACE_VERSION, "event": "header", "t": 1_700_000_000.25, "format": "vod-client-trace",
                      "movie": "m", "client": "c1", "pid": 42}
    assert strategy == {"event": "strategy", "t": 1_700_000_000.75, "ruid": 7, "revision": 1, "reason": "initial",
                        "assignments": {"s1": "1010", "s2": "0101"}}
    assert frame == {"event": "frame", "t": 1_700_000_000.875, "index": 2, "server": "s1", "revision": 1,
                     "duplicate": False, "arrival": "accepted"}
    assert dup["server"] == 's"2' and dup["duplicate"] is True and dup["revision"] == 3
    assert end == {"event": "end", "t": 1_700_000_001.875, "state": "done"}
    assert trace.lines == 5 and trace.closed


def test_frames_stay_buffered_but_the_header_and_strategies_are_flushed_at_once():
    stream = Stream()
    trace = TraceWriter(stream, Clock().seconds)
    trace.header("m", "c1")
    trace.strategy(7, 1, "initial", {"s1": FrameMask.full(3)})
    assert stream.flushes == 2
    for i in range(3):
        trace.frame(i, "s1", 1, False, "accepted")
    assert stream.flushes == 2


def test_a_failing_write_stops_the_trace_with_one_warning_and_never_raises(caplog):
    stream = Stream()
    trace = TraceWriter(stream, Clock().seconds, name="t.jsonl")
    trace.header("m", "c1")
    stream.fail = True
    with caplog.at_level(logging.WARNING, logger="vod.client.trace"):
        trace.frame(0, "s1", 1, False, "accepted")
        trace.frame(1, "s1", 1, False, "accepted")
        trace.end("done")
        trace.close()
    assert trace.closed and trace.lines == 1
    assert [r.getMessage() for r in caplog.records] == [
        "--trace t.jsonl: writing failed ([Errno 28] No space left on device); the trace stops here, the play goes on"]


def test_open_writes_a_file_and_a_bad_path_is_a_usage_error_naming_it(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("old contents\n")
    trace = TraceWriter.open(str(path), Clock().seconds)
    trace.header("m", "c1")
    trace.close()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["header"]
    missing = tmp_path / "no" / "such" / "t.jsonl"
    with pytest.raises(UsageError, match=f"--trace {missing}: cannot write the trace: No such file or directory"):
        TraceWriter.open(str(missing), Clock().seconds)
    with pytest.raises(UsageError, match=f"--trace {tmp_path}: is a directory"):
        TraceWriter.open(str(tmp_path), Clock().seconds)


def test_the_option_parses_and_is_off_by_default():
    base = ["play", "m", "--domain", "d", "--coordinators", "127.0.0.1:9"]
    assert build_parser().parse_args(base).trace is None
    assert build_parser().parse_args(base + ["--trace", "run.jsonl"]).trace == "run.jsonl"


# -- inside a play ---------------------------------------------------------------------------------------


def traced(tmp_path):
    """The session harness, its session rebuilt with a trace on the harness's clock."""
    h = Harness(tmp_path, cache=False)
    stream = Stream()
    trace = TraceWriter(stream, h.clock.seconds)
    h.session = PlaybackSession(h.clock, "m", "c1", member_factory=h.make_member, cache=None,
                                worker=InlineWorker(), make_sinks=lambda meta: [h.sink], options=PlayOptions(),
                                connector=h.net.connect, trace=trace)
    return h, stream, trace


def test_a_play_traces_its_strategies_and_each_frame_with_its_server_revision_and_duplicates(tmp_path):
    h, stream, trace = traced(tmp_path)
    h.start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, [0, 2])
    h.send(p2, [1])
    h.clock.advance(0.25)
    evens = FrameMask.from_indices(FRAMES, range(0, FRAMES, 2))
    rest = FrameMask.from_indices(FRAMES, range(3, FRAMES, 2))
    h.member.on_event(strategy_event(2, {"s1": evens, "s3": rest}, reason="restripe",
                                     addresses={"s1": "10.0.0.1:9000", "s3": "10.0.0.3:9000"}))
    p3, _ = h.accept_all()["10.0.0.3:9000"]
    h.send(p3, [3], revision=2)
    h.send(p3, [3], revision=2)  # received twice
    h.send(p3, range(5, FRAMES, 2), revision=2)
    h.send(p1, range(4, FRAMES, 2), revision=2)
    assert h.session.state is PlayState.DRAINING
    run_for(h, 3)
    assert h.result.state is PlayState.DONE
    trace.end(h.session.state.value)
    trace.close()

    events = lines(stream)
    strategies = [e for e in events if e["event"] == "strategy"]
    assert [(s["revision"], s["reason"], s["ruid"]) for s in strategies] == [(1, "initial", 7), (2, "restripe", 7)]
    assert strategies[1]["assignments"] == {"s1": evens.to_text(), "s3": rest.to_text()}
    assert (strategies[0]["t"], strategies[1]["t"]) == (0.02, 0.27)  # the harness clock when each was applied
    frames = [e for e in events if e["event"] == "frame"]
    assert [(f["index"], f["server"], f["revision"], f["duplicate"]) for f in frames[:5]] == [
        (0, "s1", 1, False), (2, "s1", 1, False), (1, "s2", 1, False), (3, "s3", 2, False), (3, "s3", 2, True)]
    assert frames[4]["arrival"] == "duplicate"
    assert sorted(f["index"] for f in frames if not f["duplicate"]) == list(range(FRAMES))
    assert sum(f["duplicate"] for f in frames) == h.result.summary["duplicates"] == 1
    assert all(later["t"] >= earlier["t"] for earlier, later in zip(events, events[1:]))
    assert events[-1] == {"event": "end", "t": round(h.clock.seconds(), 6), "state": "done"}


def test_a_frame_after_the_last_one_wanted_is_traced_as_ignored(tmp_path):
    h, stream, trace = traced(tmp_path)
    h.start()
    p1, _, p2, _ = stream_all(h)
    h.send(p1, range(0, FRAMES, 2))
    h.send(p2, range(1, FRAMES, 2))
    assert h.session.state is PlayState.DRAINING
    # The feeds are closed by now and drop what their servers still send; were a frame to reach the play:
    late = p.FrameMessage(p.FRAME, RUID, 1, 4, 0, p.frame_digest(jpeg(4)), jpeg(4))
    h.session.frame_received(h.session.feeds["s1"], late)
    trace.close()
    last = lines(stream)[-1]
    assert (last["index"], last["arrival"], last["duplicate"]) == (4, "ignored", True)
