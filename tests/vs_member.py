"""A scripted group member for the virtual-synchrony test: casts at seeded random times, logs every delivery.

    python tests/vs_member.py --coordinators A,B,C --secret-file F --member-id m1 --domain d \
        --log m1.jsonl --seed 7 --casts 40

Each line of the log is one JSON object: {"t": epoch, "event": <event dict>} for
every event handed to the application (views and casts, in delivery order), or
{"t": ..., "cast_ok": [view_id, seq], "n": k} when a cast was acknowledged. The
process runs until it has cast `--casts` messages and then `--linger` seconds
more, or until it is killed.
"""

import argparse
import json
import os
import random
import sys
import time

if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # die with the test process (PR_SET_PDEATHSIG, SIGKILL)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from vod.groups.events import event_to_dict  # noqa: E402
from vod.groups.member import GroupMember  # noqa: E402
from vod.groups.state import domain_group  # noqa: E402
from vod.secrets import read_secret  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinators", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--member-id", required=True)
    ap.add_argument("--domain", default="vs")
    ap.add_argument("--log", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--casts", type=int, default=30)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--linger", type=float, default=3.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = open(args.log, "a", buffering=1)

    def write(record):
        out.write(json.dumps(dict(record, t=time.time())) + "\n")

    member = GroupMember(reactor, args.coordinators.split(","), read_secret(args.secret_file), args.member_id,
                         "client", args.domain, f"127.0.0.1:{os.getpid() % 50000 + 10000}",
                         heartbeat_interval=0.1, on_event=lambda e: write({"event": event_to_dict(e)}))

    async def run():
        await member.start()
        group = domain_group(args.domain)
        for n in range(args.casts):
            await deferLater(rng.uniform(0.5, 1.5) * args.interval)
            try:
                view_id, seq = await member.cast(group, {"from": args.member_id, "n": n})
                write({"cast_ok": [view_id, seq], "n": n})
            except Exception as err:  # a refused/stale cast is part of the game; the log says so
                write({"cast_failed": str(err), "n": n})
        await deferLater(args.linger)
        await member.stop()

    def deferLater(seconds):
        d = defer.Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    def finished(result):
        if isinstance(result, Failure):
            write({"error": result.getErrorMessage()})
        reactor.stop()

    defer.ensureDeferred(run()).addBoth(finished)
    reactor.run()


if __name__ == "__main__":
    main()
