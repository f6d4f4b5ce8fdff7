"""`vod demo`: a whole local system in one command.

Makes (or reuses) a sample movie, starts three coordinator replicas and four
servers holding it, plays it with a client (an output AVI plus a URL to watch
it live), prints the client's summary and the strategy, checks the output
frame by frame against the store, and stops everything on exit or Ctrl-C:
every child dies with this process (see `vod.procs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time

from vod.errors import VodError
from vod.media.ingest import ingest
from vod.media.store import MovieStore
from vod.media.synthetic import make_movie, parse_size
from vod.media.video import read_jpeg_frames
from vod.procs import ProcessGroup, admin, admin_status, console_script, free_port, start_coordinator_group
from vod.procs import wait_until as procs_wait_until
from vod.secrets import write_secret

HOST = "127.0.0.1"
DOMAIN = "demo"
MOVIE_ID = "sample"
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "media", "sample-240.avi")


class DemoFailed(VodError):
    pass


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run a whole local system: 3 coordinators, 4 servers, 1 client",
                       description="Start three coordinator replicas and four servers on 127.0.0.1, play the "
                                   "sample movie with a client (output AVI + a live URL), print the summary and "
                                   "the strategy, then stop everything.")
    p.add_argument("--workdir", default=None, help="where logs, the store and the output go (default: a temp dir)")
    p.add_argument("--servers", type=int, default=4, help="how many servers")
    p.add_argument("--frames", type=int, default=240, help="frames of the sample movie when one must be made")
    p.add_argument("--size", default="640x360", metavar="WxH", help="size of a made sample movie")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate of a made sample movie")
    p.add_argument("--fast", action="store_true", help="download as fast as possible instead of real time")
    p.add_argument("--http-port", type=int, default=0, help="port of the live MJPEG URL (default: any free one)")
    p.add_argument("--chaos", action="store_true",
                   help="during playback, SIGKILL a server (at 30%% of the movie) and then the primary "
                        "coordinator (at 60%%), and show that the movie still arrives whole")
    p.set_defaults(func=cmd_demo)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    return procs_wait_until(predicate, timeout, what, interval, error=DemoFailed)


def prepare_store(workdir: str, args) -> MovieStore:
    store = MovieStore(os.path.join(workdir, "store"))
    if store.exists(MOVIE_ID):
        return store
    source = SAMPLE
    if not os.path.exists(source):
        source = os.path.join(workdir, "sample.avi")
        make_movie(source, args.frames, parse_size(args.size), args.fps)
    ingest(store, source, MOVIE_ID)
    return store


def cmd_demo(args) -> int:
    workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="vod-demo-"))
    os.makedirs(workdir, exist_ok=True)
    t0 = time.monotonic()
    store = prepare_store(workdir, args)
    with store.open(MOVIE_ID) as movie:
        info = movie.info
    print(f"movie {MOVIE_ID}: {info.frame_count} frames {info.width}x{info.height} @ {info.fps:g} fps "
          f"(store {store.root})")
    secret_file = os.path.join(workdir, f"secret-{os.getpid()}")
    write_secret(secret_file)
    env = dict(os.environ, VOD_SECRET_FILE=secret_file)
    with ProcessGroup() as group:
        coordinators = start_coordinator_group(group, workdir, env, HOST)
        wait_until(lambda: admin_status(coordinators, secret_file).get("primary"), 20, "a primary coordinator")
        print(f"coordinators: {coordinators} (logs in {workdir})")
        for i in range(args.servers):
            group.start(f"s{i + 1}", console_script("vod-server") + [
                "--id", f"s{i + 1}", "--domain", DOMAIN, "--coordinators", coordinators, "--media", store.root,
                "--listen", f"{HOST}:{free_port()}", "--capacity", "1"], os.path.join(workdir, f"s{i + 1}.log"), env)
        wait_until(lambda: sum(m["kind"] == "server" for m in admin_status(coordinators, secret_file)
                               .get("members", [])) >= args.servers, 30, f"{args.servers} servers to join")
        print(f"servers: {', '.join(f's{i + 1}' for i in range(args.servers))} joined domain {DOMAIN}")
        output = os.path.join(workdir, "played.avi")
        http_port = args.http_port or free_port()
        cache = os.path.join(workdir, f"cache-{int(time.time())}")
        argv = console_script("vod-client") + [
            "play", MOVIE_ID, "--domain", DOMAIN, "--coordinators", coordinators, "--id", "viewer",
            "--output", output, "--cache", cache, "--json"]
        if args.fast:
            argv.append("--fast")
        else:
            argv += ["--http", f"{HOST}:{http_port}", "--no-wait-viewer"]
            print(f"watch it live: http://{HOST}:{http_port}/  (or: ffplay -f mpjpeg http://{HOST}:{http_port}/stream.mjpg)")
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        try:
            if args.chaos:
                chaos(group, client, info.frame_count / info.fps, coordinators, secret_file)
            stdout, _ = client.communicate(timeout=600)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        if client.returncode != 0:
            raise DemoFailed(f"the client failed (exit {client.returncode}); logs in {workdir}")
        summary = json.loads(stdout.strip().splitlines()[-1])
        print_summary(summary)
        strategy = admin(coordinators, secret_file, "strategy", str(summary["ruid"]))
        print(strategy.stdout.rstrip())
        exact = check_output(store, output)
        print(f"output {output}: {exact}")
    print(f"demo finished in {time.monotonic() - t0:.1f} s; everything stopped. Play the file with: ffplay {output}")
    return 0


def chaos(group: ProcessGroup, client: subprocess.Popen, duration: float, coordinators: str,
          secret_file: str) -> None:
    """Kill a server at 30% of the movie and the primary coordinator at 60%, while the client plays."""
    started = time.monotonic()

    def at(fraction: float) -> bool:
        while time.monotonic() - started < fraction * duration:
            if client.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    if at(0.3):
        group.kill("s2")
        print(f"chaos: t={time.monotonic() - started:.1f}s SIGKILL server s2")
    if at(0.6):
        primary = admin_status(coordinators, secret_file).get("primary")
        if primary:
            group.kill(primary)
            print(f"chaos: t={time.monotonic() - started:.1f}s SIGKILL primary coordinator {primary}")


def print_summary(summary: dict) -> None:
    per_server = ", ".join(f"{s}: {n}" for s, n in sorted(summary.get("per_server", {}).items()))
    print(f"played RUID {summary['ruid']}: {summary['frames_received']}/{summary['frames_total']} frames received, "
          f"startup {summary['startup_ms']:.0f} ms, {summary['stalls']} stalls ({summary['stall_ms']:.0f} ms), "
          f"rebuffering {summary['rebuffer_ratio']:.1%}, {summary['duplicates']} duplicates; per server: {per_server}")


def check_output(store: MovieStore, output: str) -> str:
    with store.open(MOVIE_ID) as movie:
        frames = list(read_jpeg_frames(output).frames)
        bad = [i for i, data in enumerate(frames) if hashlib.sha256(data).digest() != movie.frame_sha256(i)]
        if len(frames) != len(movie) or bad:
            raise DemoFailed(f"{output} differs from the store: {len(frames)} frames, first bad "
                             f"{bad[0] if bad else len(frames)}")
        return f"all {len(frames)} frames identical to the store (SHA-256)"
