"""The stream session as pure code: inputs in, outputs out, time from a Clock; no sockets, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from vod.server.session import SendEnd, SendError, SendFrame, State, Stripe, StreamSession
from vod.strategy.mask import FrameMask
from vod.stream import protocol as p

from test_server_support import TOKENS, mask_text, strategy

ME = "s1"
WAIT = 5.0


def stripe(text: str, revision: int = 1, ruid: int = 7, client: str = "c1") -> Stripe:
    return Stripe(ruid, revision, client, "m", len(text), FrameMask.from_text(text))


def session(clock=None) -> StreamSession:
    return StreamSession(ME, clock or Clock(), WAIT, tokens=TOKENS)


def greeted(held: str | None = None, clock=None, client: str = "c1") -> StreamSession:
    s = session(clock)
    s.hello(7, client, FrameMask.from_text(held) if held else None, "play")
    return s


def drain(s: StreamSession, limit: int = 1000) -> list:
    """Everything the session has to send now, as if every write went through at once."""
    out = []
    while (item := s.next_output()) is not None and len(out) < limit:
        s.sent(item)
        out.append(item)
    return out


def indices(outputs) -> list:
    return [o.index if isinstance(o, SendFrame) else o for o in outputs]


# -- the normal course -----------------------------------------------------------------------------


def test_frames_in_order_below_the_credit_then_end():
    s = greeted()
    assert s.state is State.WAITING_STRATEGY
    s.strategy(stripe("1011011011"))
    assert s.state is State.STREAMING
    assert s.next_output() is None  # no credit yet
    s.credit(4)
    assert drain(s) == [SendFrame(0, 1), SendFrame(2, 1), SendFrame(3, 1)]
    s.credit(10)
    assert indices(drain(s)) == [5, 6, 8, 9, SendEnd(1, 7)]
    assert s.state is State.COMPLETE and s.frames_sent == 7


def test_frames_the_client_holds_are_not_sent():
    s = greeted(held="1100000011")
    s.strategy(stripe("1111111111"))
    s.credit(100)
    assert indices(drain(s)) == [2, 3, 4, 5, 6, 7, SendEnd(1, 6)]


def test_asking_is_free_until_the_write_is_reported():
    s = greeted()
    s.strategy(stripe("0110"))
    s.credit(4)
    assert s.next_output() == s.next_output() == SendFrame(1, 1)
    s.sent(SendFrame(1, 1))
    assert s.next_output() == SendFrame(2, 1)
    with pytest.raises(ValueError):
        s.sent(SendFrame(3, 1))


def test_everything_held_means_an_end_at_once():
    s = greeted(held="1111")
    s.strategy(stripe("0101"))
    assert drain(s) == [SendEnd(1, 0)]


# -- waiting -------------------------------------------------------------------------------------------


def test_a_strategy_may_come_after_the_hello_and_the_credit():
    clock = Clock()
    s = greeted(clock=clock)
    s.credit(3)
    clock.advance(WAIT - 0.1)
    s.expire()
    assert s.state is State.WAITING_STRATEGY and s.next_output() is None
    s.strategy(stripe("111"))
    assert indices(drain(s)) == [0, 1, 2, SendEnd(1, 3)]
    clock.advance(10)
    s.expire()  # no deadline once streaming
    assert s.state is State.COMPLETE


def test_no_strategy_within_the_wait_is_an_error():
    clock = Clock()
    s = greeted(clock=clock)
    assert s.deadline == WAIT
    clock.advance(WAIT)
    s.expire()
    assert s.state is State.ENDED
    (error,) = drain(s)
    assert isinstance(error, SendError) and "no strategy of RUID 7" in error.reason
    assert s.error == error.reason


def test_no_hello_within_the_wait_is_an_error():
    clock = Clock()
    s = session(clock)
    clock.advance(WAIT)
    s.expire()
    assert drain(s) == [SendError(f"no HELLO within {WAIT:g} s")]


def test_a_strategy_that_does_not_name_this_server_is_refused_unless_a_newer_one_does():
    clock = Clock()
    s = greeted(clock=clock)
    s.strategy(stripe("0000", revision=1))  # revision 1 gives us nothing
    assert s.state is State.WAITING_STRATEGY
    clock.advance(WAIT)
    s.expire()
    (error,) = drain(s)
    assert "revision 1 of RUID 7 gives server s1 no frames" in error.reason

    s = greeted(clock=clock)  # a newer revision (a restripe taking us on) arrives in time
    s.strategy(stripe("0000", revision=1))
    s.strategy(stripe("0011", revision=2))
    s.credit(4)
    assert drain(s) == [SendFrame(2, 2), SendFrame(3, 2), SendEnd(2, 2)]


def test_pause_before_the_strategy_is_kept():
    s = greeted()
    s.credit(10)
    s.pause()
    s.strategy(stripe("11"))
    assert s.state is State.PAUSED and s.next_output() is None
    s.resume()
    assert indices(drain(s)) == [0, 1, SendEnd(1, 2)]


# -- restripes -----------------------------------------------------------------------------------------


def test_a_new_mask_replaces_the_old_and_nothing_is_sent_twice():
    s = greeted(held="1000000000")
    s.strategy(stripe("1010101010", revision=1))
    s.credit(5)
    assert indices(drain(s)) == [2, 4]
    # Restripe: we keep our unsent frames 6 and 8 and take over 5, 7, 9; 2 and 4 stay in the mask
    # (the coordinator's held mask lagged) but went already; frame 0 is held.
    s.strategy(stripe("1010111111", revision=2))
    s.credit(10)
    assert drain(s) == [SendFrame(5, 2), SendFrame(6, 2), SendFrame(7, 2), SendFrame(8, 2), SendFrame(9, 2),
                        SendEnd(2, 7)]


def test_a_restripe_after_the_end_brings_more_frames_and_another_end():
    s = greeted()
    s.strategy(stripe("1100"))
    s.credit(4)
    assert indices(drain(s)) == [0, 1, SendEnd(1, 2)]
    s.strategy(stripe("1111", revision=2))
    assert s.state is State.STREAMING
    assert drain(s) == [SendFrame(2, 2), SendFrame(3, 2), SendEnd(2, 4)]
    assert s.state is State.COMPLETE and s.frames_sent == 4


def test_a_restripe_that_leaves_nothing_ends_under_the_new_revision():
    s = greeted()
    s.strategy(stripe("1111"))
    s.credit(2)
    drain(s)
    s.strategy(stripe("0000", revision=2))  # this server dropped: nothing more to send
    assert drain(s) == [SendEnd(2, 2)]


def test_an_unwritten_end_is_dropped_by_a_restripe_and_old_revisions_are_ignored():
    s = greeted()
    s.strategy(stripe("10", revision=3))
    s.credit(2)
    s.sent(s.next_output())
    assert s.next_output() == SendEnd(3, 1)  # due, but not written yet (a full socket buffer, say)
    s.strategy(stripe("11", revision=4))
    assert drain(s) == [SendFrame(1, 4), SendEnd(4, 2)]
    s.strategy(stripe("10", revision=2))
    assert s.revision == 4 and s.next_output() is None


def test_a_restripe_while_paused_waits_for_resume():
    s = greeted()
    s.strategy(stripe("1100"))
    s.credit(4)
    s.pause()
    s.strategy(stripe("1111", revision=2))
    assert s.state is State.PAUSED and s.next_output() is None
    s.resume()
    assert indices(drain(s)) == [0, 1, 2, 3, SendEnd(2, 4)]


# -- resends, pause, the end ------------------------------------------------------------------------------


def test_resends_go_in_index_order_with_the_rest():
    s = greeted()
    s.strategy(stripe("11111111"))
    s.credit(4)
    assert indices(drain(s)) == [0, 1, 2, 3]
    s.resend([2, 0, 7])  # 7 is pending anyway
    s.credit(8)
    assert indices(drain(s)) == [0, 2, 4, 5, 6, 7, SendEnd(1, 10)]


def test_resends_outside_the_mask_are_ignored_and_after_the_end_bring_another_end():
    s = greeted()
    s.strategy(stripe("0110"))
    s.credit(4)
    drain(s)
    assert s.state is State.COMPLETE
    s.resend([0, 3, 9])
    assert s.state is State.COMPLETE and s.next_output() is None
    s.resend([2])
    assert drain(s) == [SendFrame(2, 1), SendEnd(1, 3)]


def test_a_resend_of_a_frame_moved_away_by_a_restripe_is_dropped():
    s = greeted()
    s.strategy(stripe("1111"))
    s.credit(2)
    drain(s)
    s.pause()
    s.resend([1])
    s.strategy(stripe("0011", revision=2))  # frame 1 now belongs to someone else
    s.resume()
    s.credit(4)
    assert drain(s) == [SendFrame(2, 2), SendFrame(3, 2), SendEnd(2, 4)]


def test_pause_and_resume():
    s = greeted()
    s.strategy(stripe("1111"))
    s.credit(4)
    s.sent(s.next_output())
    s.pause()
    assert s.state is State.PAUSED and s.next_output() is None
    s.credit(4)
    s.resume()
    assert indices(drain(s)) == [1, 2, 3, SendEnd(1, 4)]
    s.pause()
    s.resume()
    assert s.state is State.COMPLETE and s.next_output() is None  # no second END for the same revision


@pytest.mark.parametrize("finish, reason", [
    (StreamSession.stop, "stopped by the client"),
    (StreamSession.dissolved, "video group dissolved (SDONE)"),
    (StreamSession.gone, "client connection lost"),
    (StreamSession.replaced, "replaced by a newer connection of the client for this RUID"),
])
def test_the_end_of_a_stream_sends_nothing_more(finish, reason):
    s = greeted()
    s.strategy(stripe("1111"))
    s.credit(4)
    finish(s)
    assert s.state is State.ENDED and s.end_reason == reason and s.error is None
    assert s.next_output() is None
    s.credit(10)
    s.strategy(stripe("1111", revision=2))
    assert s.next_output() is None


def test_a_late_hello_for_a_dissolved_group_is_told_so():
    s = greeted()
    s.dissolved()
    assert drain(s) == [SendError("request 7 is over: its video group was dissolved")]


def test_a_strategy_of_another_client_or_movie_size_is_refused():
    s = greeted(client="intruder")
    s.strategy(stripe("11"))
    assert drain(s) == [SendError("RUID 7 is a request of client c1, not of intruder")]
    s = greeted(held="111")
    s.strategy(stripe("11"))
    assert drain(s) == [SendError("the held mask covers 3 frames; movie m has 2")]


def test_refuse_ends_with_an_error_from_any_live_state():
    s = greeted()
    s.strategy(stripe("11"))
    s.refuse("server s1 is shutting down")
    assert drain(s) == [SendError("server s1 is shutting down")] and s.state is State.ENDED


def test_stripe_of_a_strategy():
    st = strategy(7, "m", 4, {"s1": "1010", "s2": "0101"})
    assert Stripe.of(st, 3, "s1") == Stripe(7, 3, "c1", "m", 4, FrameMask.from_text("1010"))
    assert not Stripe.of(st, 3, "s9").mask and len(Stripe.of(st, 3, "s9").mask) == 4


# -- control messages ------------------------------------------------------------------------------------


def control(type_, body=None) -> p.ControlMessage:
    return p.ControlMessage(type_, body or {})


def signed(ruid: int, client: str, **fields) -> dict:
    """A HELLO body with the stream token the coordinator issues for (ruid, client)."""
    return {"ruid": ruid, "client": client, "token": TOKENS.mint(ruid, client), **fields}


def test_control_messages_drive_the_session():
    s = session()
    s.receive(control(p.HELLO, signed(7, "c1", held=mask_text(FrameMask.from_text("1000")), mode="fast")))
    assert (s.ruid, s.client, s.mode) == (7, "c1", "fast")
    s.strategy(stripe("1111"))
    s.receive(control(p.CREDIT, {"until": 4}))
    s.receive(control(p.PAUSE))
    assert s.state is State.PAUSED
    s.receive(control(p.RESUME))
    assert indices(drain(s)) == [1, 2, 3, SendEnd(1, 3)]
    s.receive(control(p.RESEND, {"frames": [1]}))
    assert indices(drain(s)) == [1, SendEnd(1, 4)]
    s.receive(control(p.STOP))
    assert s.state is State.ENDED
    s.receive(control(p.HELLO, {"garbage": True}))  # ignored once ended


def test_hello_defaults_play_and_nothing_held():
    s = session()
    s.receive(control(p.HELLO, signed(0, "c1")))
    assert s.mode == "play" and s.state is State.WAITING_STRATEGY


@pytest.mark.parametrize("messages, error", [
    ([control(p.CREDIT, {"until": 1})], "CREDIT before HELLO"),
    ([control(p.HELLO, signed(1, "c")), control(p.HELLO, signed(1, "c"))], "second HELLO"),
    ([control(p.HELLO, {"ruid": "7", "client": "c"})], "'ruid' must be"),
    ([control(p.HELLO, {"ruid": True, "client": "c"})], "'ruid' must be"),
    ([control(p.HELLO, {"ruid": 7, "client": ""})], "'client' must be"),
    ([control(p.HELLO, {"ruid": 7, "client": "c", "mode": "rewind"})], "'mode' must be"),
    ([control(p.HELLO, signed(7, "c", held="***"))], "'held' is not a frame mask"),
    ([control(p.HELLO, signed(7, "c", held="AAAA"))], "'held' is not a frame mask"),
    ([control(p.HELLO, signed(7, "c", held=5))], "'held' must be"),
    ([control(p.HELLO, signed(7, "c")), control(p.CREDIT, {"until": -1})], "'until' must be"),
    ([control(p.HELLO, signed(7, "c")), control(p.CREDIT, {})], "'until' must be"),
    ([control(p.HELLO, signed(7, "c")), control(p.RESEND, {"frames": [1, "2"]})], "'frames' must"),
    ([control(p.HELLO, signed(7, "c")), control(p.RESEND, {"frames": 3})], "'frames' must"),
])
def test_malformed_or_out_of_order_control_is_a_protocol_error(messages, error):
    s = session()
    with pytest.raises(p.ProtocolError, match=error):
        for message in messages:
            s.receive(message)


def test_wait_must_be_positive():
    with pytest.raises(ValueError):
        StreamSession(ME, Clock(), 0, tokens=TOKENS)


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_take_frames_is_next_output_and_sent_in_bulk(data):
    """A download's turn takes its frames at once; the same frames, the same state after, as one by one."""
    n = data.draw(st.integers(1, 80))
    text = data.draw(st.text("01", min_size=n, max_size=n))
    held = data.draw(st.text("01", min_size=n, max_size=n))
    bulk, single = greeted(held), greeted(held)
    for s in (bulk, single):
        s.strategy(stripe(text))
    until = 0
    while True:
        until = min(n, until + data.draw(st.integers(1, 30)))
        limit = data.draw(st.integers(1, 10))
        for s in (bulk, single):
            s.credit(until)
        taken = bulk.take_frames(limit)
        one_by_one = []
        while len(one_by_one) < limit and isinstance(item := single.next_output(), SendFrame):
            single.sent(item)
            one_by_one.append(item.index)
        assert taken == one_by_one
        assert (bulk.state, bulk.frames_sent, bulk.next_output()) == (single.state, single.frames_sent,
                                                                        single.next_output())
        if not taken and bulk.until >= n:
            break
