"""Knock at a server's stream address: is a process still listening there?

A server's control connection closing is ambiguous: a crash, or a link that
dropped and will be back within the reconnect grace. Its stream listener
tells them apart at once: a crashed process's listening socket is gone, so a
connection to it is refused; a live one accepts. The replica asks this only
of addresses it saw accept at join time, so an address it cannot reach by
design (another network, a firewall that rejects) never passes for a crash.
"""

from __future__ import annotations

from enum import Enum

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from vod.addr import parse_addr

KNOCK_TIMEOUT = 0.25  # loopback and LAN answer in well under a millisecond; no answer is no verdict


class Knock(Enum):
    LISTENING = "listening"  # something accepted the connection
    REFUSED = "refused"  # nothing listens there: the process that did is gone
    NO_ANSWER = "no answer"  # timed out or failed otherwise: nothing can be concluded


class _Hangup(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # a server logs a peer that leaves before HELLO at debug level only


class _KnockFactory(ClientFactory):
    protocol = _Hangup
    noisy = False  # Twisted would log "Starting factory" / "Stopping factory" for every knock

    def __init__(self, answered: Deferred):
        self.answered = answered

    def _answer(self, knock: Knock) -> None:
        if not self.answered.called:
            self.answered.callback(knock)

    def buildProtocol(self, addr):
        self._answer(Knock.LISTENING)
        return super().buildProtocol(addr)

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        self._answer(Knock.REFUSED if reason.check(ConnectionRefusedError) else Knock.NO_ANSWER)


def knock(reactor, address: str, timeout: float = KNOCK_TIMEOUT) -> Deferred:
    """Connect to `address` (HOST:PORT) and hang up; fires with a `Knock`, never fails."""
    answered: Deferred = Deferred()
    try:
        host, port = parse_addr(address, "member address")
    except Exception:
        answered.callback(Knock.NO_ANSWER)
        return answered
    reactor.connectTCP(host, port, _KnockFactory(answered), timeout=timeout)
    return answered
