"""`knock`: one connection attempt to a server's stream address, read as listening / refused / no answer."""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from vod.coordinator.knock import KNOCK_TIMEOUT, Knock, knock


def attempt(address="127.0.0.1:7001"):
    reactor = MemoryReactor()
    answers = []
    knock(reactor, address).addCallback(answers.append)
    return reactor, answers


def test_a_connection_made_is_listening_and_is_hung_up_at_once():
    reactor, answers = attempt()
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 7001, KNOCK_TIMEOUT)
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert answers == [Knock.LISTENING]
    assert transport.disconnecting and transport.value() == b""  # nothing sent: a server logs it at debug


def test_refused_is_refused_and_anything_else_is_no_answer():
    for reason, expected in ((ConnectionRefusedError(), Knock.REFUSED), (TimeoutError(), Knock.NO_ANSWER)):
        reactor, answers = attempt()
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(reason))
        assert answers == [expected]


def test_one_answer_only():
    reactor, answers = attempt()
    factory = reactor.tcpClients[0][2]
    factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7001))
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert answers == [Knock.LISTENING]


def test_a_malformed_address_is_no_answer_without_connecting():
    reactor, answers = attempt("no-port-here")
    assert answers == [Knock.NO_ANSWER] and reactor.tcpClients == []
