"""Wrappers over the gymnax 1.x interface. Each keeps `reset(key, params)` and
`step(key, state, action, params) -> obs, state, reward, terminated, truncated, info`, so they stack in
any order, on gymnax and brax environments alike. Unknown attributes fall through to the wrapped env.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.custom_batching import custom_vmap
from gymnax.environments import spaces

from envs.errors import ConfigError


class Wrapper:
    """Base class: holds the wrapped env and forwards attribute lookups to it."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reset(self, key, params=None):
        return self._env.reset(key, params)

    def step(self, key, state, action, params=None):
        return self._env.step(key, state, action, params)


def reset_where(done, reset, key, params, current):
    """`reset(key, params)` where `done`, else `current`: per env, `jnp.where(done, reset(key, params), current)`
    on every leaf of the (obs, state) pair.

    Under `jax.vmap`, at any depth (envs, then seeds), the reset is computed only on steps where some env of
    the batch is done: a plain `where` (or `lax.cond`, which vmap turns into a select) would compute it on
    every step. That matters when a reset is costly: dm_control's cheetah settles for 200 physics steps in
    each reset, and resetting on every step made it 100x slower. The batching rule (`custom_vmap`) keeps the
    per-env meaning: it resets the whole batch when any env is done and selects, as the plain form does.
    """

    def select(fresh, kept, done):
        return jax.tree.map(
            lambda a, b: jnp.where(jnp.reshape(done, done.shape + (1,) * (a.ndim - done.ndim)), a, b), fresh, kept
        )

    def make(reset_fn):
        @custom_vmap
        def where_done(done, key, params, current):
            return jax.lax.cond(done, lambda: reset_fn(key, params), lambda: current)

        @where_done.def_vmap
        def batched(axis_size, in_batched, done, key, params, current):
            def full(x, is_batched):
                return x if is_batched else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))

            done, key, params, current = jax.tree.map(full, (done, key, params, current), tuple(in_batched))
            # One level up: reset the whole batch when any env is done (itself batched again under an outer vmap).
            fresh_or_current = make(lambda key, params: jax.vmap(reset_fn)(key, params))(
                jnp.any(done), key, params, current)
            out = select(fresh_or_current, current, done)
            return out, jax.tree.map(lambda _: True, out)

        return where_done

    return make(reset)(jnp.asarray(done, bool), key, params, current)


class FlattenObservation(Wrapper):
    """Reshape observations (and `info["final_observation"]`) to one dimension."""

    def observation_space(self, params):
        space = self._env.observation_space(params)
        return spaces.Box(space.low, space.high, (int(np.prod(space.shape)),), space.dtype)

    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return obs.reshape(-1), state

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        info = {**info, "final_observation": info["final_observation"].reshape(-1)}
        return obs.reshape(-1), state, reward, terminated, truncated, info


@struct.dataclass
class EpisodeStatisticsState:
    env_state: Any
    episode_return: jax.Array  # running sum of rewards of the current episode
    episode_length: jax.Array


class EpisodeStatistics(Wrapper):
    """Track each env's episode return and length.

    `info["episode_done"]` marks the steps at which an episode ended; `info["episode_return"]` and
    `info["episode_length"]` hold that episode's totals there (and 0 elsewhere). Average them only where
    `episode_done` holds (see `mean_over_finished`): an episode still running has no return yet.
    """

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, EpisodeStatisticsState(env_state, jnp.float32(0.0), jnp.int32(0))

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward.astype(jnp.float32)
        episode_length = state.episode_length + 1
        info = {
            **info,
            "episode_done": done,
            "episode_return": jnp.where(done, episode_return, 0.0),
            "episode_length": jnp.where(done, episode_length, 0),
        }
        state = EpisodeStatisticsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return obs, state, reward, terminated, truncated, info


def mean_over_finished(values: jax.Array, finished: jax.Array) -> jax.Array:
    """Mean of `values` over the entries where `finished` holds; NaN when no episode finished."""
    count = finished.sum()
    total = jnp.where(finished, values, 0.0).sum()
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


class ClipAction(Wrapper):
    """Clip continuous actions to the bounds of the action space before stepping."""

    def step(self, key, state, action, params=None):
        space = self._env.action_space(params)
        return self._env.step(key, state, jnp.clip(action, space.low, space.high), params)


@struct.dataclass
class StickyActionsState:
    env_state: Any
    last_action: jax.Array


class StickyActions(Wrapper):
    """With probability `repeat_probability`, execute the previous action instead of the chosen one.

    As in MinAtar and Machado et al. (2018): the last action starts at 0 on every (auto-)reset.
    """

    def __init__(self, env, repeat_probability: float):
        super().__init__(env)
        if not 0.0 <= repeat_probability <= 1.0:
            raise ConfigError(f"repeat_probability must be in [0, 1], got {repeat_probability}.")
        self.repeat_probability = float(repeat_probability)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, StickyActionsState(env_state, jnp.int32(0))

    def step(self, key, state, action, params=None):
        key_repeat, key_step = jax.random.split(key)
        repeat = jax.random.uniform(key_repeat) < self.repeat_probability
        executed = jnp.where(repeat, state.last_action, action).astype(jnp.int32)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key_step, state.env_state, executed, params
        )
        done = jnp.logical_or(terminated, truncated)
        last_action = jnp.where(done, 0, executed)
        return obs, StickyActionsState(env_state, last_action), reward, terminated, truncated, info


class DiscountedReward(Wrapper):
    """Rewards multiplied by γ^t (t counted from the reset), so that an evaluator's plain sum of rewards is
    the discounted return V(s0). IWOCS's worst-case search minimizes it. Adds no auto-reset of its own:
    evaluators score each env's first episode."""

    def __init__(self, env, gamma: float):
        super().__init__(env)
        self.gamma = gamma

    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return obs, (state, jnp.float32(1.0))

    def step(self, key, state, action, params=None):
        env_state, discount = state
        obs, env_state, reward, terminated, truncated, info = self._env.step(key, env_state, action, params)
        return obs, (env_state, discount * self.gamma), reward * discount, terminated, truncated, info


@struct.dataclass
class HorizonCapState:
    env_state: Any
    step_count: jax.Array  # steps taken in the current episode


class HorizonCap(Wrapper):
    """End every episode after at most `horizon` steps (a time limit: `truncated`, never `terminated`).

    Works on any env of the common interface (gymnax, brax, the combination locks): where the cap ends an
    episode that the env itself did not end, the wrapper resets the env, returns the new episode's first
    observation and puts the observation reached in `info["final_observation"]`, as gymnax does at its
    own time limit. `envs.make("<id>/horizon<H>")` returns an env with this wrapper outermost.
    """

    def __init__(self, env, horizon: int):
        super().__init__(env)
        if int(horizon) < 1:
            raise ConfigError(f"horizon must be at least 1, got {horizon}.")
        self.horizon = int(horizon)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, HorizonCapState(env_state, jnp.int32(0))

    def step(self, key, state, action, params=None):
        key_step, key_reset = jax.random.split(key)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key_step, state.env_state, action, params
        )
        step_count = state.step_count + 1
        ended = jnp.logical_or(terminated, truncated)
        cap = jnp.logical_and(step_count >= self.horizon, ~ended)
        info = {**info, "final_observation": jnp.where(cap, obs, info["final_observation"])}
        obs, env_state = reset_where(cap, self._env.reset, key_reset, params, (obs, env_state))
        truncated = jnp.logical_or(truncated, cap)
        step_count = jnp.where(jnp.logical_or(ended, cap), 0, step_count)
        return obs, HorizonCapState(env_state, step_count), reward, terminated, truncated, info


NO_TIME_LIMIT = 2**31 - 1  # the largest int32: a gymnax time counter never reaches it


class GameTimeLimit(Wrapper):
    """Replace a gymnax env's time limit by the game's own: `limit` steps ending as a *termination*
    (the game is over, as original MinAtar Freeway's clock), or `None` for no limit at all; `truncated`
    is never set.

    gymnax truncates at `state.time >= params.max_steps_in_episode`; this wrapper steps and resets the env
    with that field set to `limit` (NO_TIME_LIMIT for None), whatever the caller's params say, and reports
    reaching it as `terminated`. `envs.make(<MinAtar id>, time_limit=False)` returns an env with it.
    """

    def __init__(self, env, limit: int | None):
        super().__init__(env)
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"limit must be at least 1 or None, got {limit}.")
        self.limit = NO_TIME_LIMIT if limit is None else int(limit)

    def game_params(self, params):
        params = self._env.default_params if params is None else params
        return params.replace(max_steps_in_episode=self.limit)

    def reset(self, key, params=None):
        return self._env.reset(key, self.game_params(params))

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, self.game_params(params))
        terminated, truncated = jnp.logical_or(terminated, truncated), jnp.zeros_like(truncated)
        info = {**info, **{name: flag for name, flag in (("terminated", terminated), ("truncated", truncated))
                           if name in info}}  # gymnax repeats the flags in info
        return obs, state, reward, terminated, truncated, info
