"""Group service: virtual synchrony (views, ordered casts) on Raft, behind our own interface (issue 3)."""
