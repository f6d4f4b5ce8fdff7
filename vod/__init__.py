"""vod: fault-tolerant video on demand (see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"
