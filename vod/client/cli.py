"""`vod-client`: request and play a movie."""

from vod.cliutil import pending_command

main = pending_command(
    "vod-client",
    "Request a movie from a domain, receive its frames from several servers at once, play and cache them.",
    issue=5,
)
