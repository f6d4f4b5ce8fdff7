"""`vod-coordinator`: one replica of the Raft-replicated coordinator."""

from vod.cliutil import pending_command

main = pending_command(
    "vod-coordinator",
    "Run one coordinator replica (primary, backup or witness; Raft-replicated). "
    "Three replicas make a coordinator group that serves any number of domains.",
    issue=3,
)
