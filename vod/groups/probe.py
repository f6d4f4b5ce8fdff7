"""A small scripted AMP client for tests and benches: `python -m vod.groups.probe`.

    python -m vod.groups.probe --coordinators A,B,C --secret-file F ruids N [--rate R]
    python -m vod.groups.probe --coordinators A,B,C --secret-file F status [--raw]

`ruids N` prints one JSON line per RUID obtained (`{"ruid": .., "replica": ..,
"addr": .., "attempts": .., "latency_ms": .., "t": ..}`), following `NotPrimary`
redirects and retrying across the coordinators until each RUID is committed or
`--give-up-after` seconds have passed (exit 6). `status` prints the status
document `vod-admin status --json` prints (`--raw`: each coordinator's own answer).

The client is deliberately synchronous (plain sockets, no reactor): a test or a
bench can drive it from any thread, pause the coordinator under it, and see
exactly which bytes went where. It speaks the commands of `vod.groups.wire`
through AMP's own argument classes, so the encoding is the protocol's, not a
copy of it:

- `BlockingClient`: one TCP connection, one box at a time; `call(Command, **args)`
  returns the decoded answer or raises the command's declared error
  (`NotPrimary`, `AuthFailed`, `Refused`), `ConnectionClosed`, or `ProbeTimeout`.
  `send_raw` and `wait_closed` are for bad-input tests; `pipeline` keeps several
  requests outstanding for throughput measurements.
- `Probe`: several coordinators, one connection at a time, with redirects,
  rotation and bounded waits; `next_ruid()` returns a `Ruid` record.

Every wait has a bound: sockets carry a timeout, retries stop at a deadline.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from twisted.protocols import amp

from vod.addr import parse_addr, parse_addr_list
from vod.cliutil import ArgumentParser, run
from vod.errors import UsageError, VodError
from vod.localsocket import unix_path
from vod.credentials import UserCredential
from vod.groups.wire import PROTOCOL_VERSION, AuthFailed, Authenticate, Challenge, NextRuid, NotPrimary, Refused, \
    Status, authenticate_arguments
from vod.secrets import add_secret_argument, read_secret

PROBE_ID = "vod-probe"


class ProbeError(VodError):
    """The probe gave up: no coordinator committed within the deadline."""

    exit_code = 6


class ProbeAuthFailed(ProbeError):
    exit_code = 7


class ConnectionClosed(ConnectionError):
    """The coordinator closed the connection (EOF) while we waited for an answer."""


class ProbeTimeout(TimeoutError):
    """No answer within the call timeout (the coordinator may be paused or overloaded)."""


class RemoteError(Exception):
    """An AMP error answer with a code the command does not declare (e.g. UNHANDLED, UNKNOWN)."""

    def __init__(self, code: bytes, description: str):
        super().__init__(f"{code.decode('ascii', 'replace')}: {description}")
        self.code = code
        self.description = description


# -- one connection ------------------------------------------------------------------------------


def encode_box(box: dict[bytes, bytes]) -> bytes:
    """AMP framing: (16-bit length, key, 16-bit length, value)* then an empty key."""
    return amp.AmpBox(box).serialize()


class BlockingClient:
    """One AMP connection over a blocking socket with a timeout on every wait."""

    def __init__(self, addr: str, timeout: float = 2.0):
        self.addr = addr
        self.timeout = timeout
        self.replica: str | None = None  # from the Challenge answer
        self._buf = b""
        self._tag = 0
        self._sock = _connect(addr, timeout)
        self._sock.settimeout(timeout)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- bytes and boxes --

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def send_box(self, box: dict[bytes, bytes]) -> None:
        self._sock.sendall(encode_box(box))

    def read_box(self, timeout: float | None = None) -> dict[bytes, bytes]:
        """The next whole box; ProbeTimeout (nothing lost: a partial box stays buffered) or ConnectionClosed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            box, used = parse_box(self._buf)
            if box is not None:
                self._buf = self._buf[used:]
                return box
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeTimeout(f"{self.addr}: no answer within {self.timeout if timeout is None else timeout:g}s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue  # the deadline check above raises
            if not chunk:
                raise ConnectionClosed(f"{self.addr} closed the connection")
            self._buf += chunk

    def wait_closed(self, timeout: float) -> bool:
        """True if the peer closes the connection within `timeout` (whatever it sends before that)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True

    # -- commands --

    def ask(self, command: type[amp.Command], **kwargs: Any) -> bytes:
        """Send `command` without waiting; returns its tag for `answer`."""
        self._tag += 1
        tag = str(self._tag).encode()
        box = command.makeArguments(kwargs, None)
        box[amp.COMMAND] = command.commandName
        if command.requiresAnswer:
            box[amp.ASK] = tag
        self.send_box(box)
        return tag

    def answer(self, command: type[amp.Command], tag: bytes, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the answer to `tag` (boxes that answer nothing we asked, e.g. pushes, are skipped)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            box = self.read_box(max(0.0, deadline - time.monotonic()))
            if box.get(amp.ANSWER) == tag:
                return command.parseResponse(box, None)
            if box.get(amp.ERROR) == tag:
                raise decode_error(command, box)

    def call(self, command: type[amp.Command], timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.answer(command, self.ask(command, **kwargs), timeout)

    def authenticate(self, secret: "bytes | UserCredential", member_id: str = PROBE_ID) -> str:
        """Challenge + Authenticate (the domain secret, or a user credential); returns the replica id given."""
        challenge = self.call(Challenge, protocol=PROTOCOL_VERSION)
        self.replica = challenge["replica"]
        self.call(Authenticate, **authenticate_arguments(secret, challenge["nonce"], member_id))
        return self.replica

    def pipeline(self, command: type[amp.Command], count: int, window: int, duration: float | None = None,
                 rate: float | None = None, clock: Callable[[], float] = time.perf_counter) -> list["Call"]:
        """Up to `count` calls with at most `window` outstanding; none issued after `duration` seconds.

        With `rate`, call i is due at start + i/rate (open loop: it does not wait for earlier answers
        unless `window` are outstanding); `Call.due` is that time, so latency measured from it includes
        any time the call waited for its turn. All issued calls are answered (or this raises) before it
        returns; the result is in the order sent.
        """
        start = clock()
        stop_at = None if duration is None else start + duration
        outstanding: dict[bytes, tuple[float, float]] = {}
        order: list[bytes] = []
        done: dict[bytes, Call] = {}
        while True:
            now = clock()
            while len(order) < count and len(outstanding) < window and (stop_at is None or now < stop_at):
                due = start + len(order) / rate if rate else now
                if due > now:
                    break
                tag = self.ask(command)
                outstanding[tag] = (due, clock())
                order.append(tag)
                now = clock()
            more = len(order) < count and (stop_at is None or now < stop_at)
            if not outstanding and not more:
                break
            wait = None
            if rate and more and len(outstanding) < window:
                wait = max(0.0, start + len(order) / rate - clock())
            try:
                box = self.read_box(wait)
            except ProbeTimeout:
                if wait is None:
                    raise
                continue  # time to send the next one
            tag = box.get(amp.ANSWER) or box.get(amp.ERROR)
            if tag not in outstanding:
                continue
            due, sent = outstanding.pop(tag)
            if amp.ERROR in box:
                raise decode_error(command, box)
            done[tag] = Call(due, sent, clock(), command.parseResponse(box, None))
        return [done[tag] for tag in order]


def _connect(addr: str, timeout: float) -> socket.socket:
    """A connected socket to HOST:PORT, or to a coordinator's local admin socket (unix:PATH)."""
    path = unix_path(addr)
    if path is None:
        sock = socket.create_connection(parse_addr(addr, "address"), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class Call(NamedTuple):
    due: float  # when it was meant to be sent (== sent without a rate)
    sent: float
    answered: float
    answer: dict


def parse_box(buf: bytes) -> tuple[dict[bytes, bytes] | None, int]:
    """(box, bytes used) if `buf` starts with a whole AMP box, else (None, 0)."""
    box: dict[bytes, bytes] = {}
    pos = 0
    while True:
        if len(buf) < pos + 2:
            return None, 0
        (klen,) = struct.unpack_from("!H", buf, pos)
        pos += 2
        if klen == 0:
            return box, pos
        if len(buf) < pos + klen + 2:
            return None, 0
        key = buf[pos:pos + klen]
        pos += klen
        (vlen,) = struct.unpack_from("!H", buf, pos)
        pos += 2
        if len(buf) < pos + vlen:
            return None, 0
        box[key] = buf[pos:pos + vlen]
        pos += vlen


def decode_error(command: type[amp.Command], box: dict[bytes, bytes]) -> Exception:
    code = box.get(amp.ERROR_CODE, b"")
    description = box.get(amp.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
    kind = command.reverseErrors.get(code)  # declared errors and fatalErrors alike
    if kind:
        return kind(description)
    return RemoteError(code, description)


# -- several coordinators ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ruid:
    ruid: int
    replica: str  # the replica id whose connection acknowledged it
    addr: str
    attempts: int  # NextRuid calls sent for this RUID (1 when the first one answered)
    sent: float  # time.time() of the first attempt
    acked: float  # time.time() of the answer
    latency_ms: float  # of the call that answered, on the monotonic clock

    def as_json(self) -> dict:
        data = asdict(self)
        data["t"] = data.pop("acked")
        data["latency_ms"] = round(self.latency_ms, 3)
        return data


class Probe:
    """Asks a coordinator group for RUIDs and status, following redirects, with bounded retries."""

    def __init__(self, coordinators: Sequence[str], secret: bytes, member_id: str = PROBE_ID,
                 call_timeout: float = 2.0, retry_delay: float = 0.01, give_up_after: float = 15.0,
                 log: Callable[[str], None] | None = None):
        if not coordinators:
            raise UsageError("give at least one coordinator")
        self.coordinators = list(coordinators)
        self.secret = secret
        self.member_id = member_id
        self.call_timeout = call_timeout
        self.retry_delay = retry_delay
        self.give_up_after = give_up_after
        self._log = log or (lambda msg: None)
        self._client: BlockingClient | None = None
        self._next = 0  # index of the coordinator to try when we have no better idea

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def connected_to(self) -> str | None:
        return self._client.addr if self._client else None

    def _connect(self, addr: str) -> BlockingClient:
        if self._client is not None and self._client.addr == addr:
            return self._client
        self.close()
        client = BlockingClient(addr, self.call_timeout)
        try:
            client.authenticate(self.secret, self.member_id)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _rotate(self, failed: str | None) -> str:
        if failed in self.coordinators:
            self._next = (self.coordinators.index(failed) + 1) % len(self.coordinators)
        addr = self.coordinators[self._next]
        self._next = (self._next + 1) % len(self.coordinators)
        return addr

    def next_ruid(self, give_up_after: float | None = None) -> Ruid:
        """One committed RUID. Retries (redirects, other coordinators) until `give_up_after` seconds pass."""
        deadline = time.monotonic() + (self.give_up_after if give_up_after is None else give_up_after)
        addr = self.connected_to or self._rotate(None)
        sent = time.time()
        attempts = 0
        errors: list[str] = []
        while True:
            pause = self.retry_delay
            try:
                client = self._connect(addr)
                attempts += 1
                t0 = time.monotonic()
                answer = client.call(NextRuid)
                t1 = time.monotonic()
                return Ruid(answer["ruid"], client.replica or "?", addr, attempts, sent, time.time(),
                            (t1 - t0) * 1000)
            except NotPrimary as err:
                hint = str(err)
                errors.append(f"{addr}: not primary (primary: {hint or 'unknown'})")
                if hint and hint != addr:
                    self._log(f"redirected from {addr} to {hint}")
                    addr, pause = hint, 0.0
                else:
                    addr = self._rotate(addr)
            except (AuthFailed, ProbeAuthFailed) as err:
                self.close()
                raise ProbeAuthFailed(f"{addr} refused our authentication ({err}); is the secret right?") from None
            except Refused as err:
                self.close()
                raise ProbeError(f"{addr} refused NextRuid: {err}") from None
            except (OSError, ConnectionClosed, ProbeTimeout, RemoteError) as err:
                # OSError covers refused/reset connections; ProbeTimeout a paused or overloaded replica.
                errors.append(f"{addr}: {type(err).__name__}: {err}")
                self.close()
                addr = self._rotate(addr)
            if time.monotonic() + pause > deadline:
                raise ProbeError(f"no RUID within {self.give_up_after:g}s; last errors: " + "; ".join(errors[-4:]))
            if pause:
                time.sleep(pause)

    def ruids(self, count: int, rate: float = 0.0) -> Iterable[Ruid]:
        """`count` RUIDs one after another, paced at `rate` per second when rate > 0."""
        start = time.monotonic()
        for i in range(count):
            if rate > 0:
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield self.next_ruid()

    def status(self, addr: str) -> dict:
        """One coordinator's own status (any replica answers, primary or not), on a fresh connection."""
        with BlockingClient(addr, self.call_timeout) as client:
            client.authenticate(self.secret, self.member_id)
            return client.call(Status)["status"]

    def status_all(self) -> list[tuple[str, dict | None, str | None]]:
        """(addr, status or None, error or None) for every coordinator, as `vod.admin.merge_status` takes them."""
        answers = []
        for addr in self.coordinators:
            try:
                answers.append((addr, self.status(addr), None))
            except (OSError, ConnectionClosed, ProbeTimeout, NotPrimary, AuthFailed, Refused, RemoteError) as err:
                answers.append((addr, None, f"{type(err).__name__}: {err}"))
        return answers

    def merged_status(self) -> dict:
        """The document `vod-admin status --json` prints."""
        from vod.admin import merge_status

        return merge_status(self.status_all())


# -- command line --------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m vod.groups.probe", description=(
        "Scripted coordinator client for tests and benchmarks: obtain RUIDs (following NotPrimary redirects, "
        "retrying across coordinators) or print status."))
    p.add_argument("--coordinators", required=True, metavar="HOST:PORT,...",
                   help="listen addresses of the coordinator replicas")
    add_secret_argument(p)
    p.add_argument("--member-id", default=PROBE_ID, help="id to authenticate as")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each connection or answer")
    p.add_argument("--give-up-after", type=float, default=15.0,
                   help="seconds to keep retrying one RUID before exiting with status 6")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("ruids", help="obtain N RUIDs; one JSON line each")
    r.add_argument("count", type=int, metavar="N")
    r.add_argument("--rate", type=float, default=0.0, help="RUIDs per second (0: as fast as answered)")
    s = sub.add_parser("status", help="print the merged status JSON (as vod-admin status --json)")
    s.add_argument("--raw", action="store_true", help="print each coordinator's own answer instead")
    return p


def entry(argv: Sequence[str], out=None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    coordinators = parse_addr_list(args.coordinators, "--coordinators")
    secret = read_secret(args.secret_file)
    if args.timeout <= 0 or args.give_up_after <= 0:
        raise UsageError("--timeout and --give-up-after must be > 0")
    with Probe(coordinators, secret, member_id=args.member_id, call_timeout=args.timeout,
               give_up_after=args.give_up_after) as probe:
        if args.command == "ruids":
            if args.count < 0 or args.rate < 0:
                raise UsageError("N and --rate must be >= 0")
            for ruid in probe.ruids(args.count, args.rate):
                print(json.dumps(ruid.as_json(), sort_keys=True), file=out, flush=True)
        else:
            if args.raw:
                doc = [{"addr": a, "status": s, "error": e} for a, s, e in probe.status_all()]
            else:
                doc = probe.merged_status()
            print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    return 0


def main() -> int:
    return run(entry, prog="vod-probe")


if __name__ == "__main__":
    raise SystemExit(main())
