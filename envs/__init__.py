"""The environment layer: one API for gymnax and brax, and the wrappers every algorithm uses.

    import envs
    env, env_params = envs.make("CartPole-v1")          # or "Breakout-MinAtar", "brax/hopper", "dmc/CheetahRun"
    env = envs.EpisodeStatistics(envs.FlattenObservation(env))

Robust RL (envs/robust.py, envs/adversary.py, envs/robust_output.py): physical parameters in the env params, uncertainty sets,
domain randomization, grid evaluation, and a two-player adversarial-force wrapper:

    uset = envs.uncertainty_set("hopper-2d")
    env, env_params = envs.make(uset.env_id)
    params = envs.with_dynamics(env, env_params, {"friction": 0.5, "torso_mass": 2.0})
    two_player = envs.AdversarialForces(env)   # step(key, state, (action, adversary_action), params)

This package is the only place that knows how an environment library works.
"""

from envs.adversary import DEFAULT_ADVERSARY, AdversarialForces
from envs.errors import ConfigError
from envs.combination_lock import CombinationLock
from envs.minigrid import MiniGrid, minigrid_ids
from envs.normalization import AddTimeFeature, NormalizeObservation, RunningMeanStd, ScaleReward
from envs.registry import check_env_id, known_env_ids, make
from envs.robust import (
    UNCERTAINTY_SETS,
    DomainRandomization,
    GridEvaluation,
    UncertaintySet,
    evaluate_grid,
    make_grid_evaluator,
    make_model_evaluator,
    nominal_dynamics,
    uncertainty_set,
    with_dynamics,
)
from envs.robust_output import write_grid, write_method_grids
from envs.spaces import require_continuous_actions, require_discrete_actions
from envs.wrappers import (
    ClipAction,
    DiscountedReward,
    EpisodeStatistics,
    FlattenObservation,
    GameTimeLimit,
    HorizonCap,
    StickyActions,
    Wrapper,
    mean_over_finished,
    reset_where,
)

__all__ = [
    "AddTimeFeature",
    "AdversarialForces",
    "ClipAction",
    "CombinationLock",
    "DEFAULT_ADVERSARY",
    "DiscountedReward",
    "ConfigError",
    "DomainRandomization",
    "EpisodeStatistics",
    "FlattenObservation",
    "GameTimeLimit",
    "GridEvaluation",
    "HorizonCap",
    "MiniGrid",
    "NormalizeObservation",
    "RunningMeanStd",
    "ScaleReward",
    "StickyActions",
    "UNCERTAINTY_SETS",
    "UncertaintySet",
    "Wrapper",
    "check_env_id",
    "evaluate_grid",
    "known_env_ids",
    "make",
    "make_grid_evaluator",
    "make_model_evaluator",
    "minigrid_ids",
    "mean_over_finished",
    "nominal_dynamics",
    "require_continuous_actions",
    "require_discrete_actions",
    "reset_where",
    "uncertainty_set",
    "with_dynamics",
    "write_grid",
    "write_method_grids",
]
