"""GatherWriter: frames go to the socket directly only when nothing of ours waits in the transport; what the
socket refuses goes through the transport; the bytes arrive complete and in order."""

import mmap
import os
import socket
import threading

import pytest

from vod.server.gather import GatherWriter, _after


class SocketTransport:
    """A transport as Twisted's TCP one looks to GatherWriter: a socket, and the buffer attributes."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.connected = True
        self.dataBuffer, self.offset, self._tempDataLen = b"", 0, 0
        self.queued: list[bytes] = []

    def getHandle(self):
        return self.sock

    def write(self, data):
        assert isinstance(data, bytes)  # what Twisted's transport insists on
        self.queued.append(data)
        self._tempDataLen += len(data)

    def flush(self) -> None:
        """What Twisted does once the socket drains: send the queue (blocking here, for the test)."""
        self.sock.setblocking(True)
        self.sock.sendall(b"".join(self.queued))
        self.sock.setblocking(False)
        self.queued, self._tempDataLen = [], 0


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    yield a, b
    a.close()
    b.close()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(5)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "closed early"
        out += chunk
    return bytes(out)


def test_idle_transport_sends_directly_from_a_memory_map(pair, tmp_path):
    a, b = pair
    path = tmp_path / "frames.bin"
    path.write_bytes(bytes(range(256)) * 16)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        transport = SocketTransport(a)
        writer = GatherWriter(transport)
        assert writer.direct
        writer.write([b"head", view[10:20], b"end"])
        assert writer.direct_bytes == 17 and transport.queued == []
        assert read_exactly(b, 17) == b"head" + bytes(range(10, 20)) + b"end"
        view.release()


def test_a_full_socket_leaves_the_rest_to_the_transport_in_order(pair):
    a, b = pair
    transport = SocketTransport(a)
    writer = GatherWriter(transport)
    blocks = [os.urandom(7000) for _ in range(200)]  # far more than the socket's buffer
    writer.write([memoryview(x) for x in blocks[:100]])
    assert 0 < writer.direct_bytes < 700_000 and transport.queued  # part went directly, the rest waits
    direct_before = writer.direct_bytes
    writer.write(blocks[100:])  # the transport holds bytes: these must queue behind them, not overtake
    assert writer.direct_bytes == direct_before
    got = bytearray()
    b.settimeout(5)
    got += read_exactly(b, writer.direct_bytes)
    sender = threading.Thread(target=transport.flush)
    sender.start()
    got += read_exactly(b, 1_400_000 - len(got))
    sender.join(10)
    assert bytes(got) == b"".join(blocks)


def test_a_transport_without_a_socket_gets_everything():
    class StringLike:
        def __init__(self):
            self.seq = []

        def write(self, data):
            self.seq.append(data)

    transport = StringLike()
    writer = GatherWriter(transport)
    assert not writer.direct
    writer.write([b"a", memoryview(b"bc")])
    assert transport.seq == [b"abc"]


def test_after_skips_whole_and_partial_buffers():
    assert [bytes(b) for b in _after([b"abc", memoryview(b"def"), b"gh"], 4)] == [b"ef", b"gh"]
    assert _after([b"abc", b"def"], 3) == [b"def"]
    assert _after([b"abc"], 3) == []
