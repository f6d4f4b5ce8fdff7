"""The data plane: frames from servers straight to clients (the coordinator is not on this path)."""
