"""Heartbeat bookkeeping for the primary coordinator's failure detector.

Pure: the clock is handed in (anything with `.seconds()`, such as the
reactor or `twisted.internet.task.Clock` in tests), and nothing is scheduled
here. The caller polls `expired()` and turns the answer into an exclude
command; the verdict only counts once Raft has committed it.
"""

from typing import Protocol


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


class FailureDetector:
    """Suspects members silent for longer than `timeout` seconds."""

    def __init__(self, clock: SecondsClock, timeout: float):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self._clock = clock
        self._timeout = timeout
        self._last_heard: dict[str, float] = {}
        self._grace_until = float("-inf")

    def heartbeat(self, member_id: str) -> None:
        """`member_id` is alive now (starts watching it if it was not watched)."""
        self._last_heard[member_id] = self._clock.seconds()

    def suspect(self, member_id: str, within: float) -> None:
        """`member_id`'s connection closed: expire it `within` seconds from now unless it is heard first.

        A crashed process's sockets close at once, so waiting out the whole
        failure timeout only delays the restripe; a live member whose link
        merely dropped reconnects and heartbeats well within `within`, which
        clears the suspicion. It never lengthens a member's deadline.
        """
        heard = self._last_heard.get(member_id)
        if heard is not None:
            self._last_heard[member_id] = min(heard, self._clock.seconds() + within - self._timeout)

    def forget(self, member_id: str) -> None:
        """Stop watching `member_id` (it left or was excluded); unknown ids are fine."""
        self._last_heard.pop(member_id, None)

    def grant_grace(self, period: float) -> None:
        """Expire nobody before `period` seconds from now.

        A new primary has not heard anyone yet; without this it would judge
        members by heartbeats the old primary received, or by none at all.
        """
        if not period >= 0:
            raise ValueError(f"grace period must be >= 0 seconds, not {period!r}")
        self._grace_until = max(self._grace_until, self._clock.seconds() + period)

    def expired(self) -> list[str]:
        """Watched members silent for longer than the timeout (and out of grace), sorted."""
        now = self._clock.seconds()
        return sorted(
            member_id for member_id, heard in self._last_heard.items()
            if now > max(heard + self._timeout, self._grace_until)
        )

    def age(self, member_id: str) -> float | None:
        """Seconds since `member_id` was last heard; None if it is not watched."""
        heard = self._last_heard.get(member_id)
        return None if heard is None else self._clock.seconds() - heard

    def watched(self) -> list[str]:
        """Every member being watched, sorted."""
        return sorted(self._last_heard)
