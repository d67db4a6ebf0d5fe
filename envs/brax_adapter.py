"""brax environments behind the collection's gymnax 1.x interface.

    env, env_params = envs.make("brax/hopper", backend="generalized", episode_length=1000)
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)

The raw env of `brax.envs.get_environment` is wrapped here, not brax's training wrappers (Episode-,
AutoReset-, VmapWrapper): `terminated` is brax's own `done` (the hopper fell), `truncated` is the time
limit, and an episode that ended is replaced inside `step` by a fresh reset drawn from the step's key,
where brax's AutoResetWrapper restarts every episode from one cached first state.
`info["final_observation"]` is the true last observation, to bootstrap from at a time limit.
Functions are per env (vmap them) and jitted, as gymnax's are.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

BACKENDS = ("generalized", "positional", "spring", "mjx")


@struct.dataclass
class BraxParams:
    """Per-call environment parameters: a pytree, so they can be batched or changed inside jit."""

    max_steps_in_episode: int = 1000


@struct.dataclass
class BraxEnvState:
    brax_state: Any  # brax.envs.State: physics state, obs, reward, done, metrics
    time: jax.Array  # steps taken in the current episode


class BraxEnv:
    """One brax env with `reset(key, params)` and `step(key, state, action, params)` as in gymnax 1.x."""

    def __init__(self, brax_env, name: str, episode_length: int):
        self.brax_env = brax_env  # the raw brax env, for rendering or checking against
        self.name = name
        self.num_actions = int(brax_env.action_size)
        self._default_params = BraxParams(max_steps_in_episode=episode_length)
        # eval_shape: brax's own `observation_size` runs a whole un-jitted reset.
        self._observation_size = jax.eval_shape(brax_env.reset, jax.random.PRNGKey(0)).obs.shape[-1]

    @property
    def default_params(self) -> BraxParams:
        return self._default_params

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.num_actions,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self._observation_size,), jnp.float32)

    @partial(jax.jit, static_argnums=0)
    def reset(self, key, params=None):
        brax_state = self.brax_env.reset(key)
        return brax_state.obs, BraxEnvState(brax_state, jnp.int32(0))

    @partial(jax.jit, static_argnums=0)
    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        stepped = self.brax_env.step(state.brax_state, action)
        time = state.time + 1
        terminated = jnp.asarray(stepped.done).astype(bool)
        # Termination wins: an episode that falls on its last step is not a time-out.
        truncated = jnp.logical_and(time >= params.max_steps_in_episode, jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        # Reset every step and select, as gymnax does. Under vmap a cond (or refilling a cached next
        # reset) computes the reset every step anyway; it costs ~4-10% of a halfcheetah/hopper step
        # (256 envs, CPU), so no cached, reused first state as in brax's AutoResetWrapper.
        reset_obs, reset_state = self.reset(key, params)
        next_state = jax.tree.map(
            lambda fresh, current: jnp.where(done, fresh, current),
            reset_state,
            BraxEnvState(stepped, time),
        )
        obs = jnp.where(done, reset_obs, stepped.obs)
        reward = jnp.asarray(stepped.reward, jnp.float32)
        info = {"final_observation": stepped.obs, "terminated": terminated, "truncated": truncated}
        return obs, next_state, reward, terminated, truncated, info


# Known noise printed while brax is imported or an env is built; anything else still gets through.
_NOISE_LINES = ("Failed to import warp:", "Failed to import mujoco_warp:")
_NOISE_MUJOCO = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def _quiet_brax():
    """Drop brax's known import prints and maintenance warning; pass every other message on."""
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.filterwarnings("ignore", message="Brax System, piplines", category=UserWarning)
            import mujoco

            # MuJoCo prints its model-compiler warnings from C, past Python's stdout.
            previous = mujoco.get_mju_user_warning()
            mujoco.set_mju_user_warning(
                lambda msg: None if msg.startswith(_NOISE_MUJOCO) else warnings.warn(f"MuJoCo: {msg}")
            )
            try:
                yield
            finally:
                mujoco.set_mju_user_warning(previous)
    finally:  # re-print whatever was not noise, also when building the env failed
        for line in printed.getvalue().splitlines():
            if not line.startswith(_NOISE_LINES):
                print(line)


def make_brax(name: str, backend: str = "generalized", episode_length: int = 1000, **kwargs):
    """Build `brax/<name>` and return `(env, params)`; `kwargs` go to the brax env's constructor."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown brax backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if int(episode_length) <= 0:
        raise ValueError(f"episode_length must be a positive number of steps, got {episode_length}.")
    with _quiet_brax():
        import brax.envs

        brax_env = brax.envs.get_environment(name, backend=backend, **kwargs)
    env = BraxEnv(brax_env, f"brax/{name}", int(episode_length))
    return env, env.default_params
