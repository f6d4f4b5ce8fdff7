"""A loopback TCP forwarder whose live connections a test can cut, for the real-process crash tests.

`CutProxy` listens on 127.0.0.1 (a free port) and forwards every connection it
accepts to one upstream address, byte for byte, both ways. `cut()` breaks every
live connection pair abruptly on both sides at once (SO_LINGER 0, so each end
gets a reset, as when a link or a middlebox dies) and goes on accepting: the
next connection is forwarded as the first was. That is "the TCP connection
drops" of the issue's crash table without anything crashing.

`hold_replies_after(marker)`: once a connection's client sends bytes that
contain `marker`, what its upstream sends back is kept (`held()`) instead of
forwarded, while the client's bytes still go through. A test uses it to let a
coordinator commit a request whose answer the client never gets.

One thread runs a selector over the listener and every pair; a socket is read
only when its peer's outgoing buffer is empty, so a slow reader slows the
writer down (TCP's own flow control, end to end) and memory stays bounded.
`cut()` and `stop()` hand their work to that thread and wait for it, each
with a deadline; `stop()` closes everything and joins the thread, and the
tests' fixtures always call it.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CHUNK = 65536
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops what is unsent


@dataclass(eq=False)
class _Pair:
    holding: bool = False  # the upstream's bytes go to CutProxy._held, not to the client
    spoke: bool = False  # the client sent a byte (a coordinator's knock connects and hangs up, silent)
    tail: bytes = b""  # the client's last bytes, so a marker split between two reads is still seen


@dataclass(eq=False)
class _End:
    sock: socket.socket
    pair: _Pair
    upstream: bool
    out: bytearray = field(default_factory=bytearray)  # bytes read from the peer, still to write here
    eof: bool = False  # this end sent FIN: nothing more to read from it
    peer: "_End | None" = None


class CutProxy:
    def __init__(self, upstream: str | None = None, connect_timeout: float = 1.0):
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.address = f"{HOST}:{self._listener.getsockname()[1]}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._ends: set[_End] = set()
        self._tasks: list[tuple[str, threading.Event, list]] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._marker: bytes | None = None
        self._held = bytearray()
        # Counters, read by tests (written only by the loop thread).
        self.accepted = 0
        self.refused = 0  # accepted but the upstream could not be reached: closed at once
        self.spoken = 0  # accepted connections whose client sent something
        self.cut_pairs = 0
        self._thread = threading.Thread(target=self._run, name=f"CutProxy {self.address}", daemon=True)
        self._thread.start()

    # -- what tests call -----------------------------------------------------------------------------

    def forward_to(self, upstream: str) -> None:
        """Set (or change) where new connections go."""
        self.upstream = upstream

    def hold_replies_after(self, marker: bytes) -> None:
        """From now on, a connection whose client sends `marker` gets nothing more back (see `held()`)."""
        self._ask("marker", arg=marker)

    def held(self) -> bytes:
        """Every byte held back so far (all connections, in arrival order)."""
        return self._ask("held")

    def live(self) -> int:
        """Connection pairs open now."""
        return self._ask("count")

    def cut(self, timeout: float = 5.0) -> int:
        """Reset every live pair, both sides; returns how many were cut. New connections are still accepted."""
        return self._ask("cut", timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every pair, and join the thread; safe to call twice."""
        if self._thread.is_alive():
            try:
                self._ask("stop", timeout)
            except TimeoutError:
                pass
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the proxy thread at {self.address} did not stop within {timeout:g} s")
        self._wake_w.close()

    def __enter__(self) -> "CutProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ask(self, what: str, timeout: float = 5.0, arg=None):
        done, answer = threading.Event(), [arg]
        with self._lock:
            if self._stopped:
                return 0
            self._tasks.append((what, done, answer))
        self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"the proxy at {self.address} did not {what} within {timeout:g} s")
        return answer[-1]

    # -- the loop thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped:
                for key, mask in self._selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._do_tasks()
                    elif key.data.sock.fileno() != -1:  # not closed by an earlier event of this round
                        self._service(key.data, mask)
        finally:
            for end in list(self._ends):
                self._close(end, abort=True)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _do_tasks(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            tasks, self._tasks = self._tasks, []
            if any(what == "stop" for what, _, _ in tasks):
                self._stopped = True
        for what, done, answer in tasks:
            if what == "count":
                answer.append(len(self._ends) // 2)
            elif what == "marker":
                self._marker = answer[0]
                answer.append(None)
            elif what == "held":
                answer.append(bytes(self._held))
            elif what == "cut":
                pairs = {min(id(end), id(end.peer)): end for end in self._ends}
                for end in pairs.values():
                    self._close_pair(end, abort=True)
                self.cut_pairs += len(pairs)
                answer.append(len(pairs))
            else:  # stop: the finally of _run closes everything
                answer.append(None)
            done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self.accepted += 1
            try:
                host, port = (self.upstream or "").rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=self.connect_timeout)
            except (OSError, ValueError):
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
                client.close()
                continue
            pair = _Pair()
            a, b = _End(client, pair, upstream=False), _End(upstream, pair, upstream=True)
            a.peer, b.peer = b, a
            for end in (a, b):
                end.sock.setblocking(False)
                end.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._ends.add(end)
                self._selector.register(end.sock, selectors.EVENT_READ, end)

    def _service(self, end: _End, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE and end.out:
                sent = end.sock.send(end.out)
                del end.out[:sent]
            if mask & selectors.EVENT_READ and not end.eof:
                data = end.sock.recv(CHUNK)
                pair = end.pair
                if data and not end.upstream and not pair.spoke:
                    pair.spoke = True
                    self.spoken += 1
                if data and not end.upstream and self._marker and not pair.holding:
                    seen = pair.tail + data
                    pair.holding = self._marker in seen
                    pair.tail = seen[-len(self._marker):]
                if data and end.upstream and pair.holding:
                    self._held += data
                elif data:
                    end.peer.out += data
                else:
                    end.eof = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close_pair(end, abort=True)
            return
        for e in (end, end.peer):
            if e.peer.eof and not e.out:
                try:
                    e.sock.shutdown(socket.SHUT_WR)  # pass the FIN on once what came before it is written
                except OSError:
                    pass
        if end.eof and end.peer.eof and not end.out and not end.peer.out:
            self._close_pair(end, abort=False)
            return
        for e in (end, end.peer):
            self._interest(e)

    def _interest(self, end: _End) -> None:
        events = 0
        if not end.eof and not end.peer.out:
            events |= selectors.EVENT_READ
        if end.out:
            events |= selectors.EVENT_WRITE
        key = self._selector.get_map().get(end.sock)
        if events and key is None:
            self._selector.register(end.sock, events, end)
        elif events and key.events != events:
            self._selector.modify(end.sock, events, end)
        elif not events and key is not None:
            self._selector.unregister(end.sock)

    def _close_pair(self, end: _End, abort: bool) -> None:
        for e in (end, end.peer):
            self._close(e, abort)

    def _close(self, end: _End, abort: bool) -> None:
        if end not in self._ends:
            return
        self._ends.discard(end)
        if end.sock in self._selector.get_map():
            self._selector.unregister(end.sock)
        try:
            if abort:
                end.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        except OSError:
            pass
        end.sock.close()
