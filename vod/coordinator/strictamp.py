"""AMP for the answering side of a connection, strict about what the peer sends (issue 8, found by fuzzing).

Left alone, Twisted's AMP lets a peer's garbage escape: a box that is neither a command nor an answer,
an answer to a question never asked, or a command name that is not ASCII raises out of `dataReceived`
(the reactor logs a traceback and drops the connection);
a command whose arguments do not parse is logged as a traceback too; a key over 255 bytes closes the
connection without a word; and every argument is parsed before the command's handler can look at who
is asking, so a peer that has not authenticated can make us inflate a 16 KB Json value into hundreds of
megabytes of Python objects.

`StrictAMP` refuses each of these with exactly one log line (the subclass's `_refuse_connection`, which
logs and closes) and, where the peer asked a question, an error answer (`REFUSED`, or what
`before_parsing` raised) before the close. It is for a side that asks its peer nothing that wants an
answer (a coordinator only pushes `Deliver`, which wants none): any answer it receives is garbage.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.protocols import amp

from vod.groups.wire import COMMON_ERRORS, Refused


class StrictAMP(amp.AMP):
    def _refuse_connection(self, why: str) -> None:
        """Log one line saying `why`, and close this connection."""
        raise NotImplementedError

    def before_parsing(self, command: bytes) -> None:
        """Raise one of `COMMON_ERRORS` (after `_refuse_connection`) to refuse `command` unparsed."""

    def ampBoxReceived(self, box):
        if amp.COMMAND not in box or amp.ASK not in box:
            self._refuse_connection("an AMP box that is not a command asking for an answer")
            return
        super().ampBoxReceived(box)

    def locateResponder(self, name):
        try:
            self.before_parsing(name)
        except tuple(COMMON_ERRORS) as err:
            code, description = COMMON_ERRORS[type(err)], str(err)
            return lambda box: _fatal(code, description)
        # A name that is not ASCII would raise out of AMP's own lookup (`nativeString`).
        responder = super().locateResponder(name) if name.isascii() else None
        if responder is None:
            return None  # AMP answers UNHANDLED; the connection stays

        def parse_first(box):
            try:
                return responder(box)  # raises at once only when parsing the arguments fails
            except Exception as err:
                self._refuse_connection(f"malformed {name[:40]!r} command: {type(err).__name__} {str(err)[:100]}")
                return _fatal(COMMON_ERRORS[Refused], "malformed arguments")

        return parse_first

    def lengthLimitExceeded(self, length):
        self._refuse_connection(f"an AMP key of {length} bytes (at most 255)")
        super().lengthLimitExceeded(length)


def _fatal(code: bytes, description: str) -> defer.Deferred:
    """An error that AMP answers with (if the box asked) and then closes the connection on: no traceback."""
    return defer.fail(amp.RemoteAmpError(code, description, fatal=True))
