"""Streaming normalization wrappers: running observation normalization, reward scaling by the running
standard deviation of the discounted return, and a time-remaining feature.

They follow Elsayed, Vasan & Mahmood (2024), "Streaming Deep Reinforcement Learning Finally Works", and
suit any algorithm that sees one environment at a time. Their statistics live in the wrapper's state, so
they are per environment instance and travel with the state through `jit`, `vmap` and checkpoints.
Every wrapper keeps the gymnax 1.x interface, and also transforms `info["final_observation"]`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from envs.errors import ConfigError
from envs.wrappers import Wrapper


@struct.dataclass
class RunningMeanStd:
    """Welford's running mean and variance, per dimension.

    `sum_squares` is the sum of squared deviations from the running mean; the variance is
    sum_squares / (count - 1), and 1 until two samples have been seen.
    """

    mean: jax.Array
    sum_squares: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape=()) -> "RunningMeanStd":
        return cls(jnp.zeros(shape), jnp.zeros(shape), jnp.int32(0))

    @property
    def variance(self) -> jax.Array:
        return jnp.where(self.count >= 2, self.sum_squares / jnp.maximum(self.count - 1, 1).astype(jnp.float32), 1.0)

    def update(self, sample: jax.Array, mask: jax.Array | bool = True) -> "RunningMeanStd":
        """Add one sample (where `mask` holds; otherwise return the statistics unchanged)."""
        sample = jnp.asarray(sample, jnp.float32)
        count = self.count + 1
        mean = self.mean + (sample - self.mean) / count.astype(jnp.float32)
        sum_squares = self.sum_squares + (sample - self.mean) * (sample - mean)
        return RunningMeanStd(
            jnp.where(mask, mean, self.mean),
            jnp.where(mask, sum_squares, self.sum_squares),
            jnp.where(mask, count, self.count),
        )


@struct.dataclass
class NormalizeObservationState:
    env_state: Any
    obs_stats: RunningMeanStd


class NormalizeObservation(Wrapper):
    """(o - μ) / sqrt(σ² + ε) with μ, σ² the running per-dimension mean and variance of every observation
    seen so far, the current one included (it updates the statistics before it is normalized).

    At an episode end the final observation updates the statistics first, then the next episode's first
    observation does: the order in which a reset-after-done loop would see them.
    """

    def __init__(self, env, epsilon: float = 1e-8):
        super().__init__(env)
        self.epsilon = epsilon

    def normalize(self, obs: jax.Array, stats: RunningMeanStd) -> jax.Array:
        return (obs.astype(jnp.float32) - stats.mean) / jnp.sqrt(stats.variance + self.epsilon)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        shape = self._env.observation_space(params).shape
        stats = RunningMeanStd.create(shape).update(obs)
        return self.normalize(obs, stats), NormalizeObservationState(env_state, stats)

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        final_obs = info["final_observation"]  # equals obs where the episode goes on
        stats_at_final = state.obs_stats.update(final_obs)
        stats = stats_at_final.update(obs, mask=done)
        info = {**info, "final_observation": self.normalize(final_obs, stats_at_final)}
        return self.normalize(obs, stats), NormalizeObservationState(env_state, stats), reward, terminated, truncated, info


@struct.dataclass
class ScaleRewardState:
    env_state: Any
    discounted_return: jax.Array  # u, the running discounted sum of rewards of the current episode
    return_stats: RunningMeanStd


class ScaleReward(Wrapper):
    """r / sqrt(Var[u] + ε), with u <- γ (1 - done) u + r and Var[u] its running (Welford) variance.

    No mean is subtracted, so the sign of every reward is kept. As in the authors' code, `done` is the
    current step's: the trace restarts at the reward of an episode's last step. Put `EpisodeStatistics`
    inside this wrapper to log unscaled returns.
    """

    def __init__(self, env, gamma: float, epsilon: float = 1e-8):
        super().__init__(env)
        self.gamma, self.epsilon = gamma, epsilon

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, ScaleRewardState(env_state, jnp.float32(0.0), RunningMeanStd.create())

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        discounted_return = self.gamma * (1.0 - done) * state.discounted_return + reward
        stats = state.return_stats.update(discounted_return)
        scaled = reward / jnp.sqrt(stats.variance + self.epsilon)
        return obs, ScaleRewardState(env_state, discounted_return, stats), scaled, terminated, truncated, info


@struct.dataclass
class TimeFeatureState:
    env_state: Any
    time: jax.Array  # steps taken in the current episode


class AddTimeFeature(Wrapper):
    """Append t / T - 0.5 to flat observations: -0.5 at an episode's first step, rising by 1/T a step,
    where T is the time limit. With it, a time limit is part of the state the agent sees.

    (The authors' wrapper shows -0.5 on both the first and the second observation of an episode; here
    the feature is exactly the elapsed time.)
    """

    def __init__(self, env, time_limit: int):
        super().__init__(env)
        if time_limit < 1:
            raise ConfigError(f"time_limit must be at least 1, got {time_limit}.")
        self.time_limit = int(time_limit)

    def observation_space(self, params):
        space = self._env.observation_space(params)
        if len(space.shape) != 1:
            raise ConfigError(f"AddTimeFeature needs flat observations, got shape {space.shape}: "
                             f"wrap the env in FlattenObservation first.")
        low = np.append(np.broadcast_to(space.low, space.shape), -0.5)
        high = np.append(np.broadcast_to(space.high, space.shape), 0.5)
        return spaces.Box(low, high, (space.shape[0] + 1,), jnp.float32)

    def feature(self, obs: jax.Array, time: jax.Array) -> jax.Array:
        return jnp.append(obs, time / self.time_limit - 0.5)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return self.feature(obs, 0), TimeFeatureState(env_state, jnp.int32(0))

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, state.env_state, action, params)
        done = jnp.logical_or(terminated, truncated)
        time = state.time + 1
        info = {**info, "final_observation": self.feature(info["final_observation"], time)}
        time = jnp.where(done, 0, time)
        return self.feature(obs, time), TimeFeatureState(env_state, time), reward, terminated, truncated, info
