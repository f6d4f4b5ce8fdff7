"""`vod-admin`: inspect a coordinator group (status, strategies, groups, requests)."""

from vod.cliutil import pending_command

main = pending_command(
    "vod-admin",
    "Inspect and administer a coordinator group: status, strategies, groups, requests.",
    issue=3,
)
