"""The environment layer: one API for gymnax and brax, and the wrappers every algorithm uses.

    import envs
    env, env_params = envs.make("CartPole-v1")          # or "Breakout-MinAtar", "brax/hopper", ...
    env = envs.EpisodeStatistics(envs.FlattenObservation(env))

This package is the only place that knows how an environment library works.
"""

from envs.combination_lock import CombinationLock
from envs.registry import check_env_id, known_env_ids, make
from envs.spaces import require_continuous_actions, require_discrete_actions
from envs.wrappers import (
    ClipAction,
    EpisodeStatistics,
    FlattenObservation,
    HorizonCap,
    StickyActions,
    Wrapper,
    mean_over_finished,
)

__all__ = [
    "ClipAction",
    "CombinationLock",
    "EpisodeStatistics",
    "FlattenObservation",
    "HorizonCap",
    "StickyActions",
    "Wrapper",
    "check_env_id",
    "known_env_ids",
    "make",
    "mean_over_finished",
    "require_continuous_actions",
    "require_discrete_actions",
]
