"""Checks that an algorithm can handle an environment's action space, with errors that say what to use."""

from __future__ import annotations

from gymnax.environments import spaces

from envs.errors import ConfigError


def _describe(space) -> str:
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    if isinstance(space, spaces.Box):
        return f"Box(shape={tuple(space.shape)})"
    return type(space).__name__


def require_discrete_actions(env, env_params, env_id: str, algorithm: str, alternative: str) -> int:
    """Return the number of actions, or raise a TypeError naming the space and the alternative."""
    space = env.action_space(env_params)
    if not isinstance(space, spaces.Discrete):
        raise ConfigError(
            f"{algorithm} needs a discrete action space, but {env_id!r} has {_describe(space)}. "
            f"Pick a discrete environment (e.g. CartPole-v1, Breakout-MinAtar) or use {alternative}."
        )
    return int(space.n)


def require_continuous_actions(env, env_params, env_id: str, algorithm: str, alternative: str) -> int:
    """Return the action dimension, or raise a TypeError naming the space and the alternative."""
    space = env.action_space(env_params)
    if not isinstance(space, spaces.Box):
        raise ConfigError(
            f"{algorithm} needs a continuous (Box) action space, but {env_id!r} has {_describe(space)}. "
            f"Pick a continuous environment (e.g. Pendulum-v1, brax/hopper) or use {alternative}."
        )
    return int(space.shape[0]) if space.shape else 1
