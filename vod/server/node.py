"""A video server: a member of one domain that streams its stripes of movies to clients.

`VideoServer` listens for client data connections, joins the domain as a
"server" member (its data address, capacity and movie ids in the Join), and
registers its catalogue. From then on the coordinator's events drive it:

- `StrategyAssigned` for a RUID: remember this server's stripe (the newest
  revision only) and hand it to the open connections of that RUID; a client
  that says HELLO later gets it at once.
- `GroupDissolved("video:RUID")` (SDONE), or a view of that group without
  this server: that RUID's connections stop now.
- The member rejoining as a new incarnation (it was excluded while out of
  touch): every stripe it held is void (fencing), so every stream stops with an
  ERROR; the coordinator has restriped them elsewhere.

Movies are opened by the caller (`open_catalogue`), so store errors surface
before anything listens.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

from twisted.internet import defer, error

from vod.addr import parse_addr
from vod.errors import StoreError, UsageError
from vod.groups import wire
from vod.groups.events import Event, GroupDissolved, StrategyAssigned, ViewChanged
from vod.groups.member import GroupMember
from vod.groups.state import video_group
from vod.media.store import Movie, MovieStore
from vod.server.pacing import TokenBucket
from vod.server.session import DEFAULT_WAIT, Stripe
from vod.server.stream import StreamConnection, StreamFactory
from vod.strategy.placement import Strategy, StrategyError
from vod.stream.tokens import StreamTokens

log = logging.getLogger(__name__)

# RUIDs whose group dissolved, kept so a late HELLO gets "over" at once rather than after the wait.
REMEMBERED_ENDINGS = 4096
VIDEO_PREFIX = video_group(0)[:-1]  # "video:"


def open_catalogue(root: str) -> dict[str, Movie]:
    """Every movie of the store at `root`, opened; StoreError if there is no store or nothing in it."""
    if not os.path.isdir(root):
        raise StoreError(f"no movie store at {root} (make one with: vod media ingest --store {root} ...)")
    store = MovieStore(root)
    ids = store.movie_ids()
    if not ids:
        raise StoreError(f"movie store {root} holds no movies (add one with: vod media ingest --store {root} ...)")
    movies: dict[str, Movie] = {}
    try:
        for movie_id in ids:
            movies[movie_id] = store.open(movie_id)
    except StoreError:
        for movie in movies.values():
            movie.close()
        raise
    return movies


def catalogue_entries(movies: Mapping[str, Movie]) -> list[dict[str, Any]]:
    """The RegisterMovies payload: what the coordinator checks requests against."""
    return [{"id": movie_id, "frame_count": m.info.frame_count, "fps": m.info.fps, "width": m.info.width,
             "height": m.info.height} for movie_id, m in sorted(movies.items())]


def _listen_address(text: str) -> tuple[str, int]:
    """--listen's HOST:PORT; port 0 (any free port) is fine here, unlike in an address others dial."""
    host, sep, port = text.rpartition(":")
    if sep and host and port == "0":
        return host, 0
    return parse_addr(text, "--listen")


def ruid_of(group: str) -> int | None:
    """The RUID of a "video:RUID" group name; None for any other group."""
    if group.startswith(VIDEO_PREFIX) and group[len(VIDEO_PREFIX):].isdigit():
        return int(group[len(VIDEO_PREFIX):])
    return None


class VideoServer:
    """One video server. `start()` listens, joins and registers; `stop()` ends streams and leaves.

    `member_factory` builds the group member (keywords as `GroupMember`'s);
    tests pass a fake. `rate_limit` (bytes/s, None for none) caps this
    server's output over all its streams, with bursts of `burst` bytes.
    `listen` may use port 0 (tests): the member then advertises the port
    actually bound. `advertise` is the data address clients are told, when
    it differs from `listen` (listening on 0.0.0.0, NAT).
    """

    def __init__(self, reactor, clock, movies: Mapping[str, Movie], *, server_id: str, domain: str,
                 listen: str, coordinators: Iterable[str] = (), secret: bytes = b"", advertise: str | None = None,
                 capacity: int = 1, rate_limit: float | None = None, burst: float | None = None,
                 strategy_wait: float = DEFAULT_WAIT, heartbeat_interval: float = 0.2,
                 member_factory: Callable[..., Any] = GroupMember):
        if not movies:
            raise UsageError("a video server needs at least one movie")
        if type(capacity) is not int or capacity < 1:
            raise UsageError(f"capacity must be a positive integer, not {capacity!r}")
        self._listen = _listen_address(listen)
        if advertise is not None:
            parse_addr(advertise, "--advertise")
        self._reactor = reactor
        self._clock = clock
        self._movies = dict(movies)
        self.server_id = server_id
        self.tokens = StreamTokens(secret)  # a HELLO must carry the coordinator's token for its RUID and client
        self._member_args = dict(coordinators=list(coordinators), secret=secret, member_id=server_id, kind="server",
                                 domain=domain, capacity=capacity, movies=sorted(self._movies),
                                 heartbeat_interval=heartbeat_interval)
        self._member_factory = member_factory
        self._advertise = advertise
        bucket = None
        if rate_limit is not None:
            # A tenth of a second of sending by default: smooth, yet a frame or two of slack.
            bucket = TokenBucket(rate_limit, burst or max(rate_limit / 10, 64 * 1024), clock)
        self._factory = StreamFactory(self, reactor, clock, bucket, strategy_wait)
        self.member = None
        self.address: str | None = None  # the data address the domain knows us by, once listening
        self._port = None
        self.stripes: dict[int, Stripe] = {}
        self._connections: set[StreamConnection] = set()
        self._by_ruid: dict[int, set[StreamConnection]] = {}
        self._ended: OrderedDict[int, None] = OrderedDict()
        self._was_joined = False

    # -- life ------------------------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Fires once listening, joined and registered; fails with the reason otherwise."""
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        host, port = self._listen
        try:
            self._port = self._reactor.listenTCP(port, self._factory, interface=host)
        except error.CannotListenError as err:
            raise UsageError(f"--listen {host}:{port}: cannot listen ({err.socketError})") from None
        bound = self._port.getHost().port or port
        self.address = self._advertise or f"{host}:{bound}"
        if self._advertise is None and host in ("0.0.0.0", "::", ""):
            log.warning("listening on %s: clients are told to connect there; give --advertise HOST:PORT", host)
        self.member = self._member_factory(self._reactor, address=self.address, on_event=self.on_event,
                                           on_state=self.on_state, **self._member_args)
        await self.member.start()
        await self.member.call(wire.RegisterMovies, movies=catalogue_entries(self._movies))
        log.info("server %s: serving %d movies (%s) at %s", self.server_id, len(self._movies),
                 ", ".join(sorted(self._movies)), self.address)

    def stop(self) -> defer.Deferred:
        """Stop listening, end every stream with an ERROR, leave the domain."""
        for connection in list(self._connections):
            connection.refuse(f"server {self.server_id} is shutting down")
        waits = []
        if self._port is not None:
            port, self._port = self._port, None
            waits.append(defer.maybeDeferred(port.stopListening))
        if self.member is not None:
            waits.append(self.member.stop())
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- what the coordinator says ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, StrategyAssigned):
            self._assigned(event)
        elif isinstance(event, GroupDissolved):
            ruid = ruid_of(event.group)
            if ruid is not None:
                self._ended_ruid(ruid, "dissolved")
        elif isinstance(event, ViewChanged):
            ruid = ruid_of(event.group)
            if ruid is not None and self.server_id not in event.members:
                self._ended_ruid(ruid, "left its video group")

    def on_state(self, state: str) -> None:
        # The only way back to "joining" after a join is a refused Resume: the coordinator excluded us
        # while we were out of touch, and what we were told to send is someone else's job now.
        if state == "joined":
            self._was_joined = True
        elif state == "joining" and self._was_joined:
            log.warning("server %s rejoined as a new incarnation: dropping %d strategies and %d streams",
                        self.server_id, len(self.stripes), sum(map(len, self._by_ruid.values())))
            self.stripes.clear()
            for connections in list(self._by_ruid.values()):
                for connection in list(connections):
                    connection.refuse(f"server {self.server_id} was excluded from the domain and rejoined; "
                                      "its strategies are void")

    def _assigned(self, event: StrategyAssigned) -> None:
        known = self.stripes.get(event.ruid)
        if known is not None and event.revision <= known.revision:
            log.debug("RUID %d: revision %d ignored, %d is newer", event.ruid, event.revision, known.revision)
            return
        try:
            strategy = Strategy.from_dict(event.strategy)
        except StrategyError as err:
            log.error("RUID %d revision %d: unusable strategy (%s)", event.ruid, event.revision, err)
            return
        stripe = Stripe.of(strategy, event.revision, self.server_id)
        self.stripes[event.ruid] = stripe
        self._ended.pop(event.ruid, None)
        if strategy.movie_id not in self._movies:
            log.error("RUID %d: assigned movie %s, which this server does not hold", event.ruid, strategy.movie_id)
        log.info("RUID %d revision %d (%s): %d frames of %s for client %s", event.ruid, event.revision,
                 event.reason, stripe.mask.count(), stripe.movie_id, stripe.client)
        for connection in list(self._by_ruid.get(event.ruid, ())):
            connection.strategy(stripe)

    def _ended_ruid(self, ruid: int, how: str) -> None:
        self.stripes.pop(ruid, None)
        self._ended[ruid] = None
        while len(self._ended) > REMEMBERED_ENDINGS:
            self._ended.popitem(last=False)
        connections = list(self._by_ruid.get(ruid, ()))
        log.info("RUID %d: %s; stopping %d streams", ruid, how, len(connections))
        for connection in connections:
            connection.dissolved()

    # -- StreamHost: what the connections ask ---------------------------------------------------------

    def movie(self, movie_id: str) -> Movie | None:
        return self._movies.get(movie_id)

    def opened(self, connection: StreamConnection) -> None:
        self._connections.add(connection)

    def greeted(self, connection: StreamConnection) -> None:
        session = connection.session
        ruid = session.ruid
        for other in list(self._by_ruid.get(ruid, ())):
            # One connection per (client, server, RUID): a newer one means the older is dead or dying.
            if other.session.client == session.client:
                other.replaced()
        self._by_ruid.setdefault(ruid, set()).add(connection)
        if ruid in self.stripes:
            connection.strategy(self.stripes[ruid])
        elif ruid in self._ended:
            connection.dissolved()

    def closed(self, connection: StreamConnection) -> None:
        self._connections.discard(connection)
        ruid = connection.session.ruid
        streams = self._by_ruid.get(ruid)
        if streams is not None:
            streams.discard(connection)
            if not streams:
                del self._by_ruid[ruid]

    def streams(self, ruid: int) -> list[StreamConnection]:
        """The open connections of `ruid` (for tests and status)."""
        return list(self._by_ruid.get(ruid, ()))
