"""Pure placement logic: frame masks and striping strategies."""

import importlib

# The names below load on first use (PEP 562): `vod.strategy.mask` is all a client needs to hold frame masks,
# and importing the package must not drag in placement and with it numpy (~60 ms of a client's start-up).
_SOURCES = {
    "FrameMask": "vod.strategy.mask",
    **dict.fromkeys(["POLICIES", "SERVER_CHOICES", "STRATEGY_VERSION", "Assignment", "NoServers", "ServerInfo",
                     "Strategy", "StrategyError", "deal", "make_strategy", "rank_servers"], "vod.strategy.placement"),
    **dict.fromkeys(["restripe", "without_held"], "vod.strategy.restripe"),
}

__all__ = [
    "FrameMask", "POLICIES", "SERVER_CHOICES", "STRATEGY_VERSION", "Assignment", "NoServers", "ServerInfo",
    "Strategy", "StrategyError", "deal", "make_strategy", "rank_servers", "restripe", "without_held",
]


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # once: later look-ups are plain module attributes
    return value
