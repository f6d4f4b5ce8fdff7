"""The little HTTP server of `vod-client play --http`: a page at /, the MJPEG stream at /stream.mjpg.

Why not twisted.web: importing it (with twisted.spread, urllib, http.cookiejar, email) took ~20 ms of a
play's start-up, which has a 300 ms budget from process spawn to the first frame, for two fixed answers.
Here: GET (and HEAD) of three paths, every response ends the connection (`Connection: close`); the stream
is chunked for HTTP/1.1 clients (ffmpeg reads a body that just runs to the close as cut short) and runs to
the close for HTTP/1.0 ones. Anything else gets its 4xx and the connection is closed.

`parse_request_head` is pure (bytes in, a request or an `HttpError` out); `ViewerProtocol` only moves bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet.protocol import Factory, Protocol

MAX_HEAD = 8192  # bytes of request line and headers: a browser sends a few hundred
BOUNDARY = "vodframe"
# Frames a slow viewer may fall behind (written while its socket pushes back) before it misses frames:
# a viewer that cannot keep up skips frames instead of making us buffer the movie for it.
MAX_BEHIND = 8
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           410: "Gone", 431: "Request Header Fields Too Large"}


class HttpError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


class RequestHead(NamedTuple):
    method: str
    path: str  # without the query string
    version: str  # "1.0", "1.1"


def parse_request_head(head: bytes) -> RequestHead:
    """The request line of `head` (the bytes before the blank line); HttpError for what we cannot serve."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HttpError(400, "not an HTTP/1.x request line")
    method, target = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
    if method not in ("GET", "HEAD"):
        raise HttpError(405, f"{method} is not served here: GET / or /stream.mjpg")
    path = target.split("?", 1)[0]
    if path.startswith("http://") or path.startswith("https://"):  # absolute form: keep the path
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    return RequestHead(method, path, parts[2][5:].decode("ascii", "replace"))


def response_head(status: int, content_type: str, length: int | None = None, extra: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Type: {content_type}",
             "Cache-Control: no-cache, no-store", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class ViewerHost:
    """What a connection needs from the sink (`vod.client.sinks.HttpSink`)."""

    page: bytes
    closed: bool

    def viewer_came(self, viewer: "ViewerProtocol") -> None: ...

    def viewer_gone(self, viewer: "ViewerProtocol") -> None: ...


class ViewerProtocol(Protocol):
    """One HTTP connection. Once it asked for the stream it is a viewer: a push producer, so that its socket
    can say when it is full, and a viewer that falls MAX_BEHIND frames behind skips frames."""

    def __init__(self, host: ViewerHost):
        self.host = host
        self._head = b""
        self._answered = False
        self.viewing = False
        self.paused = False
        self.behind = 0
        self.skipped = 0
        self.sent = 0
        self._chunked = False

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return  # one request per connection; what a client sends after it is ignored
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._fail(HttpError(431, "request head too large"))
            return
        self._answered = True
        try:
            self._serve(parse_request_head(self._head[:end]))
        except HttpError as err:
            self._fail(err)

    def _serve(self, request: RequestHead) -> None:
        body = request.method == "GET"
        if request.path in ("/", "/index.html"):
            page = self.host.page
            self._end(response_head(200, "text/html; charset=utf-8", len(page)) + (page if body else b""))
        elif request.path == "/stream.mjpg":
            if self.host.closed:
                raise HttpError(410, "the movie is over")
            self._chunked = request.version != "1.0"
            self.transport.write(response_head(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                               extra="Transfer-Encoding: chunked" if self._chunked else ""))
            if not body:
                self.transport.loseConnection()
                return
            self.viewing = True
            self.transport.registerProducer(self, True)
            self.host.viewer_came(self)
        else:
            raise HttpError(404, "not found: the page is / and the stream /stream.mjpg")

    def _fail(self, err: HttpError) -> None:
        text = (err.text + "\n").encode("utf-8")
        self._end(response_head(err.status, "text/plain; charset=utf-8", len(text)) + text)

    def _end(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.loseConnection()

    def send(self, part: bytes) -> None:
        """One part of the stream (a frame), unless this viewer is too far behind."""
        if self.paused:
            if self.behind >= MAX_BEHIND:
                self.skipped += 1
                return
            self.behind += 1
        self.transport.write(b"%x\r\n%s\r\n" % (len(part), part) if self._chunked else part)
        self.sent += 1

    def finish(self) -> None:
        """The stream is over: close once what is written has gone."""
        if self.viewing:
            self.viewing = False
            self.transport.unregisterProducer()
            if self._chunked:
                self.transport.write(b"0\r\n\r\n")
        self.transport.loseConnection()

    # the transport's producer calls
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused, self.behind = False, 0

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason=None) -> None:
        if self.viewing:
            self.viewing = False
            self.host.viewer_gone(self)


class ViewerFactory(Factory):
    noisy = False

    def __init__(self, host: ViewerHost):
        self.host = host

    def buildProtocol(self, addr) -> ViewerProtocol:
        protocol = ViewerProtocol(self.host)
        protocol.factory = self
        return protocol

