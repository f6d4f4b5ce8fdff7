"""One-shot authenticated control connections to a coordinator (admin tools, standby replicas)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.protocols import amp

from vod.addr import parse_addr
from vod.credentials import UserCredential
from vod.localsocket import unix_path
from vod.groups.wire import PROTOCOL_VERSION, Authenticate, Challenge, authenticate_arguments


async def call_once(reactor, addr: str, secret: bytes | UserCredential, member_id: str, command: type[amp.Command],
                    timeout: float = 2.0, **arguments: Any) -> dict:
    """Connect, authenticate as `member_id` (with the domain secret or a user credential), run one command,
    disconnect. Every step is bounded by `timeout`. `addr` is HOST:PORT, or unix:PATH for a local socket."""
    return await with_connection(reactor, addr, secret, member_id, lambda call: call(command, **arguments),
                                 timeout=timeout)


async def with_connection(reactor, addr: str, secret: bytes | UserCredential, member_id: str,
                          use: Callable[[Callable[..., Awaitable[dict]]], Awaitable[Any]], timeout: float = 2.0) -> Any:
    """Like `call_once`, for several commands on one connection (pages of a listing): `use(call)` runs them,
    `await call(Command, **arguments)` each, every one bounded by `timeout`; its result is returned."""
    endpoint = coordinator_endpoint(reactor, addr, timeout)
    proto = await connectProtocol(endpoint, amp.AMP()).addTimeout(timeout, reactor)
    try:
        challenge = await proto.callRemote(Challenge, protocol=PROTOCOL_VERSION).addTimeout(timeout, reactor)
        await proto.callRemote(Authenticate, **authenticate_arguments(secret, challenge["nonce"], member_id)) \
            .addTimeout(timeout, reactor)

        async def call(command: type[amp.Command], **arguments: Any) -> dict:
            return await proto.callRemote(command, **arguments).addTimeout(timeout, reactor)

        return await use(call)
    finally:
        proto.transport.loseConnection()


def coordinator_endpoint(reactor, addr: str, timeout: float):
    """The client endpoint for a coordinator address: HOST:PORT (TCP) or unix:PATH (its local admin socket)."""
    path = unix_path(addr)
    if path is not None:
        return UNIXClientEndpoint(reactor, path, timeout=timeout)
    host, port = parse_addr(addr, "coordinator address")
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
