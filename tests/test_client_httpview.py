"""The client's little HTTP server, as pure parsing and over a StringTransport: what it answers, and that
anything else gets a clear 4xx and a closed connection."""

import pytest
from twisted.internet.testing import StringTransport

from vod.client.httpview import MAX_BEHIND, MAX_HEAD, HttpError, ViewerProtocol, parse_request_head


class Host:
    page = b"<html>page</html>"

    def __init__(self, closed=False):
        self.closed = closed
        self.viewers, self.gone = [], []

    def viewer_came(self, viewer):
        self.viewers.append(viewer)

    def viewer_gone(self, viewer):
        self.gone.append(viewer)


def connect(host, *chunks):
    protocol, transport = ViewerProtocol(host), StringTransport()
    protocol.makeConnection(transport)
    for chunk in chunks:
        protocol.dataReceived(chunk)
    return protocol, transport


def status(transport) -> int:
    return int(transport.value().split(b" ", 2)[1])


@pytest.mark.parametrize("head, expected", [
    (b"GET / HTTP/1.1\r\nHost: x", ("GET", "/", "1.1")),
    (b"HEAD /index.html?x=1 HTTP/1.0", ("HEAD", "/index.html", "1.0")),
    (b"GET http://127.0.0.1:80/stream.mjpg HTTP/1.1", ("GET", "/stream.mjpg", "1.1")),
])
def test_request_lines(head, expected):
    assert tuple(parse_request_head(head)) == expected


@pytest.mark.parametrize("head, code", [(b"POST / HTTP/1.1", 405), (b"GET /", 400), (b"\x00\xff garbage", 400),
                                        (b"GET / SPDY/3", 400)])
def test_bad_request_lines(head, code):
    with pytest.raises(HttpError) as err:
        parse_request_head(head)
    assert err.value.status == code


def test_the_page_then_close():
    _, transport = connect(Host(), b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n")
    assert status(transport) == 200 and transport.value().endswith(Host.page)
    assert b"Content-Length: 17" in transport.value() and transport.disconnecting


def test_head_of_the_page_has_no_body():
    _, transport = connect(Host(), b"HEAD / HTTP/1.1\r\n\r\n")
    assert status(transport) == 200 and transport.value().endswith(b"\r\n\r\n") and transport.disconnecting


def test_the_stream_makes_a_viewer_that_skips_frames_when_far_behind():
    host = Host()
    viewer, transport = connect(host, b"GET /stream.mjpg HTTP/1.1\r\n\r\n")
    assert host.viewers == [viewer] and transport.producer is viewer and not transport.disconnecting
    assert b"multipart/x-mixed-replace; boundary=vodframe" in transport.value()
    viewer.pauseProducing()  # its socket is full
    for i in range(MAX_BEHIND + 3):
        viewer.send(b"part%d" % i)
    assert viewer.sent == MAX_BEHIND and viewer.skipped == 3
    viewer.resumeProducing()
    viewer.send(b"again")
    assert viewer.sent == MAX_BEHIND + 1 and transport.value().endswith(b"5\r\nagain\r\n")  # chunked (1.1)
    viewer.finish()
    assert transport.producer is None and transport.disconnecting and transport.value().endswith(b"0\r\n\r\n")
    viewer.connectionLost()
    assert host.gone == []  # finished by us: not a viewer any more


def test_an_http_1_0_viewer_gets_the_stream_unchunked_to_the_close():
    viewer, transport = connect(Host(), b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
    assert b"chunked" not in transport.value()
    viewer.send(b"part")
    viewer.finish()
    assert transport.value().endswith(b"\r\n\r\npart") and transport.disconnecting


def test_a_viewer_that_goes_is_reported():
    host = Host()
    viewer, _ = connect(host, b"GET /stream.mjpg HTTP/1.1\r\n\r\n")
    viewer.connectionLost()
    assert host.gone == [viewer]


@pytest.mark.parametrize("data, code", [(b"GET /nothing HTTP/1.1\r\n\r\n", 404),
                                        (b"DELETE / HTTP/1.1\r\n\r\n", 405),
                                        (b"hello\r\n\r\n", 400),
                                        (b"GET /" + b"a" * (MAX_HEAD + 10), 431)])
def test_anything_else_is_a_4xx_and_a_closed_connection(data, code):
    host = Host()
    _, transport = connect(host, data)
    assert status(transport) == code and transport.disconnecting and host.viewers == []


def test_the_stream_after_the_movie_is_gone():
    _, transport = connect(Host(closed=True), b"GET /stream.mjpg HTTP/1.1\r\n\r\n")
    assert status(transport) == 410 and transport.disconnecting


def test_what_follows_the_request_is_ignored():
    host = Host()
    _, transport = connect(host, b"GET / HTTP/1.1\r\n\r\nGET /stream.mjpg HTTP/1.1\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200") == 1 and host.viewers == []
