"""`vod-server`: a video server of one domain."""

from vod.cliutil import pending_command

main = pending_command(
    "vod-server",
    "Join a domain with the movies of a store and stream striped frames to clients.",
    issue=5,
)
