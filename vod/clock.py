"""A clock for timeouts: `seconds()` on the monotonic clock, immune to wall-clock jumps."""

import time


class MonotonicClock:
    def seconds(self) -> float:
        return time.monotonic()
