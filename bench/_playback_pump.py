"""Helper of bench/playback.py: a plain TCP pump of a stored movie's bytes over loopback (the ceiling).

    python bench/_playback_pump.py receive --senders N --bytes B [--output FILE]
                                                                    prints its port, then one JSON line
    python bench/_playback_pump.py send --port P --store S --movie M --stripe I --of N

Senders are separate processes (as servers are), each a blocking socket that writes its stripe's JPEG
frames (frames I, I+N, I+2N, ...) one `sendall` per frame, straight from the store's memory map: no
protocol, no header, no checksum, no pacing. The receiver is a bare Twisted protocol that counts bytes
and, with --output, writes each read to FILE as it comes (`os.write` on the reactor: the simplest download
to disk, the ceiling for a vod download that writes an AVI or its cache).
The clock starts when every sender is connected (the receiver then sends each a "go" byte), and stops
when the receiver has counted B bytes, so process start-up is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def receive(senders: int, total: int, output: str | None = None) -> int:
    from twisted.internet import protocol, reactor

    state = {"conns": [], "got": 0, "t0": None, "t1": None}
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if output else None

    class Counter(protocol.Protocol):
        def connectionMade(self):
            state["conns"].append(self)
            if len(state["conns"]) == senders:
                state["t0"] = time.perf_counter()
                for c in state["conns"]:
                    c.transport.write(b"g")

        def dataReceived(self, data):
            if fd is not None:
                os.write(fd, data)
            state["got"] += len(data)
            if state["got"] >= total and state["t1"] is None:
                state["t1"] = time.perf_counter()
                reactor.stop()

    factory = protocol.Factory.forProtocol(Counter)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.callLater(120, reactor.stop)  # a bound: a stuck sender must not hang the bench
    t_cpu = time.process_time()
    reactor.run()
    cpu = time.process_time() - t_cpu
    if fd is not None:
        os.close(fd)
    print(json.dumps({"bytes": state["got"], "seconds": (state["t1"] or time.perf_counter()) - (state["t0"] or 0),
                      "complete": state["got"] >= total, "receiver_cpu_s": cpu}), flush=True)
    return 0


def send(port: int, store_root: str, movie_id: str, stripe: int, of: int) -> int:
    from vod.media.store import MovieStore

    with MovieStore(store_root).open(movie_id) as movie:
        frames = [movie.frame(i) for i in range(stripe, len(movie), of)]  # slices of the mmap, read now
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock.recv(1) != b"g":
            return 1
        for frame in frames:
            sock.sendall(frame)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            sock.recv(1)  # until the receiver closes: our bytes are all read by then
        except OSError:
            pass
        sock.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--senders", type=int, required=True)
    r.add_argument("--bytes", type=int, required=True)
    r.add_argument("--output", help="write what is received to this file")
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--movie", required=True)
    s.add_argument("--stripe", type=int, required=True)
    s.add_argument("--of", type=int, required=True)
    args = ap.parse_args()
    if args.cmd == "receive":
        return receive(args.senders, args.bytes, args.output)
    return send(args.port, args.store, args.movie, args.stripe, args.of)


if __name__ == "__main__":
    raise SystemExit(main())
