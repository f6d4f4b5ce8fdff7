"""Helper of bench/failover.py (VIEW delivery phase): a group member that only joins, heartbeats and logs.

    python bench/_view_member.py --coordinators A,B,C --secret-file F --member-id m1 --domain d \
        --log m1.jsonl --heartbeat-interval 0.1

Each line of --log is one JSON object: {"t": epoch, "event": <event dict>} for every event handed to the
application (`t` is taken as the event is delivered), or {"t": ..., "error": ...} if it could not join. No
casts: the group sees nothing but views. It runs until it is killed (and dies with its parent, on Linux).
"""

import argparse
import json
import os
import sys
import time

if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # die with the bench process (PR_SET_PDEATHSIG, SIGKILL)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from vod.groups.events import event_to_dict  # noqa: E402
from vod.groups.member import GroupMember  # noqa: E402
from vod.logsetup import setup_logging  # noqa: E402
from vod.secrets import read_secret  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinators", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--member-id", required=True)
    ap.add_argument("--domain", default="views")
    ap.add_argument("--log", required=True)
    ap.add_argument("--heartbeat-interval", type=float, default=0.1)
    args = ap.parse_args()
    setup_logging("INFO")
    out = open(args.log, "a", buffering=1)

    def write(record):
        out.write(json.dumps(dict(record, t=time.time())) + "\n")

    member = GroupMember(reactor, args.coordinators.split(","), read_secret(args.secret_file), args.member_id,
                         "client", args.domain, f"127.0.0.1:{os.getpid() % 50000 + 10000}",
                         heartbeat_interval=args.heartbeat_interval,
                         on_event=lambda e: write({"event": event_to_dict(e)}))

    def failed(failure):
        write({"error": failure.getErrorMessage()})
        reactor.stop()

    reactor.callWhenRunning(lambda: member.start().addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
