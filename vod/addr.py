"""host:port parsing with errors that name the flag."""

from vod.errors import UsageError


def parse_addr(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag}: {text!r} is not HOST:PORT")
    return host, int(port)


def parse_addr_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"{flag}: give at least one HOST:PORT")
    for item in items:
        parse_addr(item, flag)
    return items
