"""A scripted member speaking the real AMP commands: a fake server or a fake client, for integration tests.

    python tests/scripted_member.py server --id s1 --movies m:100,other:50 --capacity 2 ...common
    python tests/scripted_member.py client --id c1 --movie m --request-id r1 --go-file GO ...common
    common: --coordinators A,B,C --secret-file F --domain d --log FILE

Every event delivered and every step taken is one JSON line in --log:
{"t": ..., "event": {...}} or {"t": ..., "step": "name", ...}. A server runs
until killed. A client opens its request (twice, with the same request id, the
second time after --go-file appears: a retry), then reports Started and CDone
with the full mask, logs `done`, and exits.
"""

import argparse
import base64
import json
import os
import sys
import time

if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # die with the test process (PR_SET_PDEATHSIG, SIGKILL)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from vod.groups import wire  # noqa: E402
from vod.groups.events import event_to_dict  # noqa: E402
from vod.groups.member import GroupMember  # noqa: E402
from vod.logsetup import setup_logging  # noqa: E402
from vod.secrets import read_secret  # noqa: E402
from vod.strategy.mask import FrameMask  # noqa: E402


def sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def wait_file(path, timeout):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        await sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--id", required=True)
    ap.add_argument("--coordinators", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--domain", default="d")
    ap.add_argument("--log", required=True)
    ap.add_argument("--movies", default="")
    ap.add_argument("--capacity", type=int, default=1)
    ap.add_argument("--movie", default="m")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--request-id", default="r1")
    ap.add_argument("--go-file", default=None)
    args = ap.parse_args()
    setup_logging("INFO")
    out = open(args.log, "a", buffering=1)

    def write(record):
        out.write(json.dumps(dict(record, t=time.time())) + "\n")

    catalogue = [{"id": m.split(":")[0], "frame_count": int(m.split(":")[1]), "fps": 24.0, "width": 64,
                  "height": 48} for m in args.movies.split(",") if m]
    member = GroupMember(reactor, args.coordinators.split(","), read_secret(args.secret_file), args.id, args.role,
                         args.domain, f"127.0.0.1:{os.getpid() % 50000 + 10000}", capacity=args.capacity,
                         movies=[m["id"] for m in catalogue], heartbeat_interval=0.1,
                         on_event=lambda e: write({"event": event_to_dict(e)}), command_timeout=15.0)

    async def server():
        await member.start()
        await member.call(wire.RegisterMovies, movies=catalogue)
        write({"step": "registered"})
        await defer.Deferred()  # serve until killed

    async def client():
        await member.start()
        wanted = base64.b64encode(FrameMask.full(args.frames).to_bytes()).decode()
        answer = await member.call(wire.OpenRequest, request_id=args.request_id, movie=args.movie, wanted=wanted)
        write({"step": "opened", **answer})
        if args.go_file:
            await wait_file(args.go_file, 60)
        again = await member.call(wire.OpenRequest, request_id=args.request_id, movie=args.movie, wanted=wanted)
        write({"step": "reopened", **again})
        await member.call(wire.Started, ruid=answer["ruid"])
        await member.call(wire.CDone, ruid=answer["ruid"], held=wanted)
        write({"step": "cdone", "ruid": answer["ruid"]})
        await sleep(0.5)
        await member.stop()
        write({"step": "done"})

    def finished(result):
        if isinstance(result, Failure):
            write({"step": "error", "error": result.getErrorMessage()})
        reactor.stop()

    defer.ensureDeferred(server() if args.role == "server" else client()).addBoth(finished)
    reactor.run()


if __name__ == "__main__":
    main()
