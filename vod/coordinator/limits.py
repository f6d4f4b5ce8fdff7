"""Rate limits at the coordinator's door: commands per connection, connection attempts per peer host.

Pure, on an injected clock (`TokenBucket`). The defaults sit far above what
members do (a member heartbeats 5 times a second and sends a few requests;
the benches' and tests' load generators send up to 400 commands/s on one
connection) and far below what one misbehaving peer in a loop can send, so a
runaway member cannot take the primary's reactor or the Raft log for itself.

- `CommandLimit`, one per member connection: over the limit a command is
  refused (`REFUSED`, nothing done, the description says why); a connection
  that keeps going after `STRIKES_BEFORE_CLOSE` refusals in a row is closed.
- `ConnectionLimit`, one per listening replica: attempts per peer host (all
  local-socket peers count as one host, "local"); over the limit the new
  connection is closed at once, before it can ask anything.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory

from vod.server.pacing import TokenBucket

COMMAND_RATE = 1000.0  # commands per second per connection; the burst is twice this
CONNECTION_RATE = 200.0  # connection attempts per second per peer host; the burst is twice this
STRIKES_BEFORE_CLOSE = 100
MAX_HOSTS = 4096  # buckets kept before idle ones are forgotten

ALLOW, REFUSE, CLOSE = "allow", "refuse", "close"
FIRST_REFUSAL = "first refusal"  # of a run of refused connections: the one worth a log line


class CommandLimit:
    def __init__(self, rate: float, clock, burst: float | None = None, close_after: int = STRIKES_BEFORE_CLOSE):
        self.rate = rate
        self.burst = burst or 2 * rate
        self.close_after = close_after
        self.strikes = 0  # refusals since the last command let through
        self._bucket = TokenBucket(rate, self.burst, clock)

    def check(self) -> str:
        """ALLOW (the command is counted), REFUSE, or CLOSE once refusals have gone on too long."""
        if self._bucket.take(1) == 0.0:
            self.strikes = 0
            return ALLOW
        self.strikes += 1
        return CLOSE if self.strikes >= self.close_after else REFUSE

    def refusal(self) -> str:
        return (f"rate limit: more than {self.rate:g} commands per second on this connection (bursts up to "
                f"{self.burst:g}); slow down (the connection is closed after {self.close_after} refusals in a row)")


class ConnectionLimit:
    def __init__(self, rate: float, clock, burst: float | None = None, max_hosts: int = MAX_HOSTS):
        self.rate = rate
        self.burst = burst or 2 * rate
        self._clock = clock
        self._max_hosts = max_hosts
        self._buckets: dict[str, TokenBucket] = {}
        self._refusing: set[str] = set()

    def check(self, host: str) -> str:
        """ALLOW, or REFUSE (FIRST_REFUSAL for the first of a run, so one line is logged per run)."""
        bucket = self._buckets.get(host)
        if bucket is None:
            self._forget_idle()
            bucket = self._buckets[host] = TokenBucket(self.rate, self.burst, self._clock)
        if bucket.take(1) == 0.0:
            self._refusing.discard(host)
            return ALLOW
        if host in self._refusing:
            return REFUSE
        self._refusing.add(host)
        return FIRST_REFUSAL

    def _forget_idle(self) -> None:
        if len(self._buckets) < self._max_hosts:
            return
        # A full bucket remembers nothing a new one would not; many hosts at once (spoofed or not)
        # then cost the oldest entries, never unbounded memory.
        for host in [h for h, b in self._buckets.items() if b.tokens >= self.burst]:
            del self._buckets[host]
        for host in list(self._buckets)[:max(0, len(self._buckets) - self._max_hosts // 2)]:
            del self._buckets[host]
        self._refusing &= set(self._buckets)

    @property
    def hosts(self) -> int:
        return len(self._buckets)


def peer_host(address) -> str:
    """The host a connection comes from; local-socket peers have none and share "local"."""
    return getattr(address, "host", None) or "local"


class LimitedFactory(Factory):
    """Builds one protocol per connection unless its host opens connections faster than `limit` allows."""

    def __init__(self, build, limit: ConnectionLimit | None, on_refused=lambda host: None):
        self._build = build
        self._limit = limit
        self._on_refused = on_refused

    def buildProtocol(self, addr):
        if self._limit is not None:
            verdict = self._limit.check(peer_host(addr))
            if verdict != ALLOW:
                if verdict == FIRST_REFUSAL:
                    self._on_refused(peer_host(addr))
                return None  # Twisted closes the accepted socket
        protocol = self._build()
        protocol.factory = self
        return protocol
