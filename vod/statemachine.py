"""Run-to-completion input handling shared by our state machines (member, playback, feed).

Outputs of a transition often fire inputs themselves (a connection fails while we drop it, a Deferred
fires synchronously). Queueing them keeps every transition whole: `_transition` is never re-entered.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class SerialInputs:
    """Mixin: `_fire(input, attempt, **data)` queues; `_transition(input, attempt, data)` consumes in order.

    `attempt` ties an input to one connection attempt, for machines that have them (None otherwise).
    """

    _inputs: deque
    _firing: bool = False

    def _fire(self, input: str, attempt: int | None = None, **data: Any) -> None:
        if not hasattr(self, "_inputs"):
            self._inputs = deque()
        self._inputs.append((input, attempt, data))
        if self._firing:
            return
        self._firing = True
        try:
            while self._inputs:
                self._transition(*self._inputs.popleft())
        finally:
            self._firing = False

    def _transition(self, input: str, attempt: int | None, data: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError
