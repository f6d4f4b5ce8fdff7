"""A token bucket: the server's outgoing byte rate, shared by all its streams (`--rate-limit`).

Pure: time comes from an injected clock. `take(n)` either lets n bytes go
now (and takes them) or says how long to wait, taking nothing; the sender
asks again after that delay, because by then the next thing to send may be a
different frame.

A frame larger than the burst could never fit; it goes when the bucket is
full and leaves it in debt, so the long-run rate still holds.
"""

from __future__ import annotations

# Bytes of slack for float rounding: a sender that waited exactly the delay
# it was told must find its bytes there.
_SLACK = 1e-6


class TokenBucket:
    def __init__(self, rate_bytes_per_s: float, burst: float, clock):
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate must be > 0 bytes/s, not {rate_bytes_per_s!r}")
        if not burst > 0:
            raise ValueError(f"burst must be > 0 bytes, not {burst!r}")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock.seconds()

    @property
    def tokens(self) -> float:
        """Bytes that may go now (negative: the debt of a frame larger than the burst)."""
        self._refill()
        return self._tokens

    def take(self, n: int) -> float:
        """0.0 if `n` bytes may go now (they are taken); else the seconds until they may, taking nothing."""
        if n < 0:
            raise ValueError(f"cannot take {n} bytes")
        self._refill()
        need = min(n, self.burst)
        if self._tokens + _SLACK >= need:
            self._tokens -= n
            return 0.0
        return (need - self._tokens) / self.rate

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
