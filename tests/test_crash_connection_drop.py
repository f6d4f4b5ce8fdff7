"""Issue 6, a connection that breaks with nothing crashed: the client reconnects and resumes; no restripe.

First the harness: `CutProxy` (tests/tcpproxy.py) forwards both ways byte for byte, `cut()` resets both
ends of every live pair, and the next connection goes through as the first did.

Then real processes: 3 coordinators, 2 `vod-server`s, a real-time `vod-client play` of a ten-second movie.
s1 listens on one port but advertises the proxy's (`vod-server --advertise`), so the client's data
connection to s1, and only that one, goes through the proxy; every coordinator connection is direct. Twice
mid-movie the proxy cuts it. Each time the client reconnects to s1 (through the proxy) with a fresh HELLO
whose held mask is what it holds then, and s1 resumes from there (each new stream of s1 has fewer frames
left to send than the last). The client exits 0 with no stall (it holds half a second before it plays,
`STARTUP`), its output frame by frame equal (SHA-256) to the store, one reconnection per cut, all to s1.
The coordinator never had to help: the strategy is still revision 1 (the client's summary, `vod-admin
requests`, and `vod-admin strategies` with no restripe in its history), the coordinators logged no
exclusion and no restripe, s1 is still a live member, and every stream s1 started for the RUID was under
revision 1.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from cluster import wait_for
from tcpproxy import CutProxy
from test_crash_support import STARTUP, running_system

CUTS = 2
TO_SEND = re.compile(r"stream start: RUID (?P<ruid>\d+), .* (?P<left>\d+) of (?P<total>\d+) frames to send")


# -- the harness: the proxy alone -----------------------------------------------------------------------------


@pytest.fixture
def echo_server():
    """A loopback echo server (one thread per connection), closed at the end."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def echo(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def echo_back(sock: socket.socket, data: bytes) -> bytes:
    writer = threading.Thread(target=sock.sendall, args=(data,))
    writer.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    writer.join(5)
    return bytes(got)


def test_the_proxy_forwards_cuts_both_sides_and_accepts_again(echo_server):
    with CutProxy(echo_server) as proxy:
        first = connect(proxy.address)
        data = bytes(range(256)) * 20_000  # 5 MB: more than the socket buffers hold, so flow control works
        assert echo_back(first, data) == data
        assert proxy.live() == 1
        assert proxy.cut() == 1 and proxy.live() == 0
        with pytest.raises(ConnectionResetError):  # a reset, not a clean end
            first.recv(1)
        first.close()
        second = connect(proxy.address)
        assert echo_back(second, b"again") == b"again" and proxy.accepted == 2
        second.shutdown(socket.SHUT_WR)  # a clean end is passed on as one, both ways
        assert second.recv(1) == b""
        second.close()
        wait_for(lambda: proxy.live() == 0, 5, "the proxy to close the finished pair")


def test_the_proxy_holds_the_replies_of_a_connection_once_its_client_sent_the_marker(echo_server):
    with CutProxy(echo_server) as proxy:
        proxy.hold_replies_after(b"MARK")
        other, held = connect(proxy.address), connect(proxy.address)
        assert echo_back(held, b"before") == b"before"
        held.sendall(b"xMA")
        assert held.recv(3) == b"xMA"
        held.sendall(b"RKy")  # the marker split over two sends: seen all the same
        wait_for(lambda: proxy.held() == b"RKy", 5, "the reply held")
        assert echo_back(other, b"other connections are not held") == b"other connections are not held"
        held.sendall(b"more")
        wait_for(lambda: proxy.held() == b"RKymore", 5, "later replies held too")
        held.settimeout(0.2)
        with pytest.raises(TimeoutError):
            held.recv(1)
        assert proxy.cut() == 2
        other.close()
        held.close()


# -- real processes -------------------------------------------------------------------------------------------


@pytest.fixture
def system(tmp_path, proxy):
    def advertise(sid, listen):
        if sid == "s1":
            proxy.forward_to(listen)
            return proxy.address
        return None

    with running_system(tmp_path, servers=2, advertise=advertise) as s:
        yield s


def reconnect_lines(system, sid: str) -> list[str]:
    return [line for _, line in system.log("client") if f"server {sid}:" in line and "reconnecting in" in line]


def test_a_dropped_data_connection_reconnects_and_resumes_without_a_restripe(system, proxy):
    client = system.play(*STARTUP)
    request = system.wait_streaming()
    ruid = request["ruid"]
    assert request["revision"] == 1

    cut_at = []
    for n in range(CUTS):
        time.sleep(1.5)  # into the movie (ten seconds long), and 1.5 s after the reconnection
        assert client.poll() is None, "the movie should still be playing"
        spoken = proxy.spoken
        assert proxy.cut() == 1, "the client's connection to s1 should have been live"
        cut_at.append(time.time())
        # The client comes back through the proxy, s1 starts the RUID's stream again.
        wait_for(lambda: proxy.spoken > spoken and proxy.live() == 1, 10, f"the reconnection after cut {n + 1}",
                 interval=0.02, describe=system.describe)
        wait_for(lambda: len(system.stream_starts("s1", ruid)) == n + 2, 10, f"s1's stream {n + 2} of RUID {ruid}",
                 interval=0.05, describe=system.describe)

    summary = system.finished_whole(client, ruid)
    assert summary["stalls"] == 0 and summary["stall_ms"] == 0, summary
    # One reconnection per cut, all of them s1's; s2's connection was never touched.
    assert summary["servers"]["s1"]["reconnects"] == CUTS and summary["servers"]["s2"]["reconnects"] == 0, summary
    assert summary["reconnects"] == CUTS and len(reconnect_lines(system, "s1")) == CUTS
    # The client's connections through the proxy: the first stream's and one per cut (the coordinator's
    # knocks at s1, vod.coordinator.knock, connect through it too, and send nothing).
    assert proxy.refused == 0 and proxy.spoken == 1 + CUTS

    # The coordinator never restriped: revision 1 everywhere, no history, nobody excluded, s1 still a member.
    assert summary["revision"] == 1 and all(s["revision"] == 1 for s in summary["servers"].values())
    done = wait_for(lambda: (r := system.request_of()) and r["state"] == "done" and r, 15, "the request done",
                    interval=0.2, describe=system.describe)
    assert done["ruid"] == ruid and done["revision"] == 1 and sorted(done["servers"]) == system.server_ids
    strategies = wait_for(lambda: system.admin("strategies"), 15, "vod-admin strategies", interval=0.2,
                          describe=system.describe)
    strategy = next(doc for doc in strategies if doc["ruid"] == ruid)
    assert strategy["revision"] == 1 and strategy["history"] == []
    assert system.live_servers() == set(system.server_ids)
    for rid in system.cluster.ids:
        text = system.cluster.log(rid)
        assert "excluding silent members" not in text and "restriping RUID" not in text, rid
    starts = system.stream_starts("s1", ruid)
    assert len(starts) == CUTS + 1 and all(start["revision"] == 1 for start in starts), starts
    assert all(start["revision"] == 1 for start in system.stream_starts("s2", ruid))
    # Each later stream of s1 started after its cut, and from the held mask: only what was still missing.
    assert all(later["time"] >= cut for later, cut in zip(starts[1:], cut_at)), (starts, cut_at)
    to_send = [(int(m["left"]), int(m["total"])) for _, line in system.log("s1")
               if (m := TO_SEND.search(line)) and int(m["ruid"]) == ruid]
    assert to_send[0][0] == to_send[0][1] and all(left < total for left, total in to_send[1:]), to_send
    assert all(later[0] < earlier[0] for earlier, later in zip(to_send, to_send[1:])), to_send
