"""Frames to a TCP socket straight from the movie's memory map: one `sendmsg` of many buffers, no copy in Python.

Through Twisted's transport a frame is copied twice before the kernel copies
it once more: out of the memory map into a bytes object (only bytes may be
given to `transport.write`), then into one joined send buffer. A download's
servers spent more of their CPU on those copies than on anything else. So
when the transport has nothing buffered (nothing of ours could be overtaken)
the buffers go to the socket directly, scatter/gather; whatever the socket
does not take at once (its send buffer is full) goes to the transport, which
keeps it in order and sends it when the socket drains (a download's
connection then pauses until the transport has sent everything, so that its
next turn goes directly again). Order is kept because a direct send only
happens when the transport's buffer is empty.

The transport's buffer is read from Twisted's `FileDescriptor` attributes
(`dataBuffer`, `offset`, `_tempDataLen`); a transport without them (a test's
StringTransport, TLS) always gets everything through `writeSequence`.
"""

from __future__ import annotations

import socket
from typing import Sequence

IOV_MAX = 1024  # Linux's limit on buffers per sendmsg


class GatherWriter:
    def __init__(self, transport):
        self._transport = transport
        self._socket: socket.socket | None = None
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket) and all(
                hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
            self._socket = handle
        self.direct_bytes = 0  # sent without Twisted's buffer (for tests and logs)

    @property
    def direct(self) -> bool:
        """Whether this transport's socket can be written directly at all."""
        return self._socket is not None

    def _transport_idle(self) -> bool:
        t = self._transport
        return t._tempDataLen == 0 and len(t.dataBuffer) - t.offset <= 0

    def write(self, buffers: Sequence[bytes | memoryview]) -> bool:
        """Send `buffers` in order (bytes or memoryviews, e.g. slices of a memory map); True when some of
        them wait in the transport's buffer."""
        if not buffers:
            return False
        sent = 0
        if self._socket is not None and self._transport_idle() and getattr(self._transport, "connected", False):
            sent = self._send_direct(buffers)
        rest = _after(buffers, sent) if sent else buffers
        if rest:
            # One bytes object, the one copy: Twisted joins a buffer of one piece without copying it again.
            self._transport.write(b"".join(rest))
        return bool(rest)

    def _send_direct(self, buffers: Sequence[bytes | memoryview]) -> int:
        total = 0
        for start in range(0, len(buffers), IOV_MAX):
            part = buffers[start:start + IOV_MAX]
            want = sum(len(b) for b in part)
            try:
                done = self._socket.sendmsg(part)
            except (BlockingIOError, InterruptedError):
                done = 0
            except OSError:
                # A broken connection: let the transport find out through its own write and close as it does.
                return total
            total += done
            self.direct_bytes += done
            if done < want:
                break
        return total


def _after(buffers: Sequence[bytes | memoryview], skip: int) -> list[bytes | memoryview]:
    """`buffers` without their first `skip` bytes (a partly sent buffer becomes a memoryview of its rest)."""
    for i, b in enumerate(buffers):
        n = len(b)
        if skip < n:
            return [memoryview(b)[skip:], *buffers[i + 1:]] if skip else list(buffers[i:])
        skip -= n
    return []
