"""Benchmark: spurious elections while a movie plays (issue 3: "no spurious election during a 10-minute run
with a movie playing on the same two cores").

Starts three coordinator replicas and four servers on 127.0.0.1, plays a synthetic movie of --minutes in
real time with one client, and meanwhile samples `vod-admin status` every few seconds. Prints the Raft terms
seen, every ROLE change the replicas logged, and the client's summary (stalls). Nothing is killed: any term
change is a spurious election.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vod.media.store import MovieStore  # noqa: E402
from vod.media.synthetic import synthetic_jpegs  # noqa: E402
from vod.procs import (  # noqa: E402
    ProcessGroup, admin_status, console_script, free_port, start_coordinator_group, wait_until,
)
from vod.secrets import write_secret  # noqa: E402

ROLE = re.compile(r"^(\d+\.\d+) WARNING vod\.coordinator: ROLE (\S+) term=(\d+) replica=(\S+)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--size", default="320x180")
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="vod-bench-stability-")
    w, h = (int(x) for x in args.size.split("x"))
    frames = int(args.minutes * 60 * args.fps)
    store = MovieStore(os.path.join(work, "store"))
    movie = f"long-{frames}"
    if not store.exists(movie):
        print(f"making a {frames}-frame movie ({args.minutes:g} min)...", file=sys.stderr)
        store.add(movie, synthetic_jpegs(frames, (w, h), args.fps), fps=args.fps, width=w, height=h,
                  source="synthetic", source_codec="MJPG", keeps_source_jpeg=True, jpeg_quality=85)
    secret = os.path.join(work, f"secret-{os.getpid()}")
    write_secret(secret)
    env = dict(os.environ, VOD_SECRET_FILE=secret)
    samples, terms = 0, set()
    with ProcessGroup() as group:
        coordinators = start_coordinator_group(group, work, env)

        def status():
            return admin_status(coordinators, secret)

        wait_until(lambda: status().get("primary"), 30, "a primary")
        for i in range(4):
            group.start(f"s{i + 1}", console_script("vod-server") + [
                "--id", f"s{i + 1}", "--domain", "d", "--coordinators", coordinators, "--media", store.root,
                "--listen", f"127.0.0.1:{free_port()}"], os.path.join(work, f"s{i + 1}.log"), env)
        wait_until(lambda: sum(m["kind"] == "server" for m in status().get("members", [])) == 4, 60, "servers")
        started = time.monotonic()
        client = subprocess.Popen(console_script("vod-client") + [
            "play", movie, "--domain", "d", "--coordinators", coordinators, "--no-cache", "--json", "--id", "viewer"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            while client.poll() is None:
                doc = status()
                terms.update(r["term"] for r in doc.get("replicas", []) if r.get("term") is not None)
                samples += 1
                time.sleep(5)
            out = client.communicate(timeout=60)[0]
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        elapsed = time.monotonic() - started
    roles = []
    for i in range(3):
        with open(os.path.join(work, f"c{i + 1}.log"), errors="replace") as f:
            roles += [m.groups() for m in map(ROLE.match, f) if m]
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    result = {"minutes_played": round(elapsed / 60, 2), "frames": frames, "status_samples": samples,
              "terms_seen": sorted(terms), "role_changes": len(roles), "elections": len({t for _, _, t, _ in roles}) - 1,
              "client": {k: summary.get(k) for k in ("frames_received", "frames_total", "stalls", "stall_ms")}}
    print(f"stability: {result['minutes_played']} min of a {frames}-frame movie played in real time, 3 coordinators, "
          f"4 servers, one client; {samples} status samples")
    print(f"  Raft terms seen: {result['terms_seen']}; ROLE lines: {len(roles)}; elections after the first: "
          f"{result['elections']} (target 0)")
    for t, role, term, replica in roles:
        print(f"    {float(t):.3f} {replica} {role} term {term}")
    print(f"  client: {result['client']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
