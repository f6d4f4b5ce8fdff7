"""The chaos schedule stays inside what the system promises to survive, whatever the seed (Hypothesis)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos_schedule import KILL, STOP, Shape, client_names, client_starts, make_schedule, server_names

shapes = st.builds(Shape, servers=st.integers(1, 5), clients=st.integers(1, 4),
                   faults=st.tuples(st.integers(0, 3), st.integers(3, 12)))


@settings(max_examples=300)
@given(seed=st.integers(0, 2**32), shape=shapes)
def test_a_schedule_keeps_a_majority_and_a_live_server(seed, shape):
    faults = make_schedule(seed, shape)
    assert faults == make_schedule(seed, shape), "the same seed gives the same schedule"
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    assert len([f for f in faults if f.kind == "coordinator"]) <= 1
    out = {f.target for f in faults if f.kind == "server" and (f.action == KILL or f.duration > shape.failure_timeout)}
    assert len(out) <= max(0, shape.servers - 1)
    assert {f.target for f in faults if f.kind == "server"} <= set(server_names(shape))
    for f in faults:
        assert shape.window[0] <= f.at <= max(shape.window[1], shape.client_stagger + 0.3)
        assert (f.action == STOP) == (f.duration > 0)
        if f.kind == "client":
            assert f.target in client_names(shape)
            assert f.at >= max(client_starts(seed, shape).values())
            assert f.action == KILL or f.duration < shape.failure_timeout
    clients = [f.target for f in faults if f.kind == "client"]
    assert len(clients) == len(set(clients)), "a client is hit at most once"


def test_seeds_differ():
    assert len({tuple(make_schedule(seed)) for seed in range(20)}) == 20
