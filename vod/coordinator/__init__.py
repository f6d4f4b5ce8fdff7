"""The replicated coordinator: request life cycle, strategies, video groups (issues 3 and 4)."""
