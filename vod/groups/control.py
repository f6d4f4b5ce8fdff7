"""One-shot authenticated control connections to a coordinator (admin tools, standby replicas)."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols import amp

from vod.addr import parse_addr
from vod.groups.wire import PROTOCOL_VERSION, Authenticate, Challenge, auth_mac


async def call_once(reactor, addr: str, secret: bytes, member_id: str, command: type[amp.Command],
                    timeout: float = 2.0, **arguments: Any) -> dict:
    """Connect, authenticate as `member_id`, run one command, disconnect. Every step is bounded by `timeout`."""
    host, port = parse_addr(addr, "coordinator address")
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    proto = await connectProtocol(endpoint, amp.AMP()).addTimeout(timeout, reactor)
    try:
        challenge = await proto.callRemote(Challenge, protocol=PROTOCOL_VERSION).addTimeout(timeout, reactor)
        mac = auth_mac(secret, challenge["nonce"], member_id)
        await proto.callRemote(Authenticate, member_id=member_id, mac=mac).addTimeout(timeout, reactor)
        return await proto.callRemote(command, **arguments).addTimeout(timeout, reactor)
    finally:
        proto.transport.loseConnection()
