"""Pure placement logic: frame masks and striping strategies."""

from vod.strategy.mask import FrameMask
from vod.strategy.placement import (
    POLICIES, SERVER_CHOICES, STRATEGY_VERSION, Assignment, NoServers, ServerInfo, Strategy, StrategyError,
    deal, make_strategy, rank_servers,
)
from vod.strategy.restripe import restripe, without_held

__all__ = [
    "FrameMask", "POLICIES", "SERVER_CHOICES", "STRATEGY_VERSION", "Assignment", "NoServers", "ServerInfo",
    "Strategy", "StrategyError", "deal", "make_strategy", "rank_servers", "restripe", "without_held",
]
