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
import copy
import io
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from envs.errors import ConfigError

BACKENDS = ("generalized", "positional", "spring", "mjx")
FORCE_BACKENDS = ("generalized", "mjx")  # backends that can apply external forces


@struct.dataclass
class BraxParams:
    """Per-call environment parameters: a pytree, so they can be batched or changed inside jit.

    The physical fields are None by default: the model's own values, at no cost. Set them (usually
    through `envs.with_dynamics`) to give every env of a vmapped batch its own dynamics; `step` and
    `reset` then rebuild the brax system from them.
    """

    max_steps_in_episode: int = 1000
    link_mass: Any = None  # (num_links,) mass of each link, in brax's link order (the world has none)
    geom_friction: Any = None  # (num_geoms,) sliding friction of each geom; a contact uses the pair's max
    external_force: Any = None  # (num_links, 3) world-frame force at each link's center of mass


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

    def physics(self, params=None):
        """The brax env that simulates `params`: `self.brax_env` itself when no physical field is set,
        else a shallow copy whose system (and, for an external force, whose pipeline) is rebuilt from the
        (possibly traced) values. Building it costs nothing at run time beyond the changed arrays."""
        if params is None or (
            params.link_mass is None and params.geom_friction is None and params.external_force is None
        ):
            return self.brax_env
        physics = copy.copy(self.brax_env)
        sys = self.brax_env.sys
        changes = {}
        if params.link_mass is not None:
            link_mass = jnp.asarray(params.link_mass, jnp.float32)
            changes["link.inertia.mass"] = link_mass  # read by the generalized/positional/spring pipelines
            changes["body_mass"] = jnp.concatenate([jnp.zeros(1, jnp.float32), link_mass])  # read by mjx
        if params.geom_friction is not None:
            friction = jnp.asarray(sys.geom_friction, jnp.float32)
            changes["geom_friction"] = friction.at[:, 0].set(params.geom_friction)
        if changes:
            physics.sys = sys.tree_replace(changes)
        if params.external_force is not None:
            physics._pipeline = _ForcedPipeline(self.brax_env, params.external_force)
        return physics

    @partial(jax.jit, static_argnums=0)
    def reset(self, key, params=None):
        brax_state = self.physics(params).reset(key)
        return brax_state.obs, BraxEnvState(brax_state, jnp.int32(0))

    @partial(jax.jit, static_argnums=0)
    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        stepped = self.physics(params).step(state.brax_state, action)
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


def _moved_by(sys) -> np.ndarray:
    """(num_links, qd_size) mask: entry [b, d] is 1 where dof d belongs to link b or to one of b's
    ancestors, so that it moves b. Built from the static tree, in numpy (no tracing)."""
    num_links = len(sys.link_parents)
    dofs_per_link = [6 if typ == "f" else int(typ) for typ in sys.link_types]
    dof_link = np.repeat(np.arange(num_links), dofs_per_link)
    mask = np.zeros((num_links, num_links), np.float32)
    for body in range(num_links):
        link = body
        while link >= 0:
            mask[body, link] = 1.0
            link = int(sys.link_parents[link])
    return mask[:, dof_link]


def link_force_to_joint_torques(sys, state, force) -> jax.Array:
    """Generalized forces (qd_size,) equivalent to world-frame forces (num_links, 3) at the links'
    centers of mass, on the generalized backend: tau = sum_b J_b(q)^T F_b, with J_b the Jacobian of link
    b's center of mass, to which only the joints of b and of its ancestors contribute.

    A dof's motion `state.cdof` is expressed at the subtree center of mass `state.root_com`, so the
    velocity it gives a point p is cdof.vel + cdof.ang x (p - root_com).
    """
    from brax import math as brax_math

    com = state.x.pos + jax.vmap(brax_math.rotate)(sys.link.inertia.transform.pos, state.x.rot)
    moves = _moved_by(sys)  # (num_links, qd_size)
    offset = com - state.root_com  # (num_links, 3)
    point_velocity = state.cdof.vel[None] + jnp.cross(state.cdof.ang[None], offset[:, None])
    return jnp.einsum("bd,bdk,bk->d", moves, point_velocity, force)


class _ForcedPipeline:
    """Stands in for a brax pipeline module: the env's own pipeline, plus a world-frame force at each
    link's center of mass, held through every physics sub-step of an env step."""

    def __init__(self, brax_env, force):
        if brax_env.backend not in FORCE_BACKENDS:
            raise ConfigError(
                f"External forces need the generalized or mjx backend, not {brax_env.backend!r}: "
                f"build the env with envs.make(..., backend='generalized') (or 'mjx')."
            )
        self._base = brax_env._pipeline
        self._backend = brax_env.backend
        self._force = jnp.asarray(force, jnp.float32)
        self.init = self._base.init

    def step(self, sys, state, act, debug=False):
        if self._backend == "mjx":
            # MuJoCo's xfrc_applied: (nbody, 6) force and torque at each body's center of mass; body 0
            # is the world, body i + 1 brax's link i.
            applied = jnp.zeros((self._force.shape[0] + 1, 6), jnp.float32).at[1:, :3].set(self._force)
            return self._base.step(sys, state.replace(xfrc_applied=applied), act, debug)
        # brax.generalized.pipeline.step, with the external forces' joint torques added to the actuation.
        from brax import actuator, contact, kinematics
        from brax.generalized import constraint, dynamics, integrator, mass

        tau = actuator.to_tau(sys, act, state.q, state.qd) + link_force_to_joint_torques(sys, state, self._force)
        state = state.replace(qf_smooth=dynamics.forward(sys, state, tau))
        state = state.replace(qf_constraint=constraint.force(sys, state))
        state = integrator.integrate(sys, state)
        x, xd = kinematics.forward(sys, state.q, state.qd)
        state = state.replace(x=x, xd=xd)
        state = dynamics.transform_com(sys, state)
        state = mass.matrix_inv(sys, state, sys.matrix_inv_iterations)
        state = constraint.jacobian(sys, state)
        if debug:
            state = state.replace(contact=contact.get(sys, state.x))
        return state


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
        raise ConfigError(f"Unknown brax backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if int(episode_length) <= 0:
        raise ConfigError(f"episode_length must be a positive number of steps, got {episode_length}.")
    with _quiet_brax():
        import brax.envs

        brax_env = brax.envs.get_environment(name, backend=backend, **kwargs)
    env = BraxEnv(brax_env, f"brax/{name}", int(episode_length))
    return env, env.default_params
