"""Two-player zero-sum envs: an adversary pushes named bodies with bounded forces (RARL, QARL).

    env, env_params = envs.make("brax/hopper")
    env = envs.AdversarialForces(env)                     # QARL's defaults: the foot, 1.0 per component
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(
        key, state, (protagonist_action, adversary_action), env_params)
    # reward is the protagonist's; info["adversary_reward"] = -reward

The adversary's action has `env.adversary_action_dim` = 2 entries per body: the world x and z components
of a force at the body's center of mass, clipped to [-max_force, max_force] (QARL applies forces in the
plane of motion). brax: generalized backend (joint torques J^T F through the body's ancestor joints) or
mjx (`xfrc_applied`); dmc ids: MuJoCo's `xfrc_applied`, as the authors' code sets it. gymnax Pendulum-v1 and CartPole-v1: the same force on the pole's center of mass
(CartPole also on the cart), entering their equations of motion as generalized forces. A zero
adversary action gives exactly the plain env.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole
from gymnax.environments.classic_control.cartpole import EnvState as CartPoleState
from gymnax.environments.classic_control.pendulum import EnvState as PendulumState
from gymnax.environments.classic_control.pendulum import Pendulum

from envs.errors import ConfigError
from envs.robust import _BRAX_LINK_ALIASES, base_env
from envs.wrappers import Wrapper

# QARL (the authors' code): bodies pushed, max force per component.
DEFAULT_ADVERSARY = {
    "Pendulum-v1": (("pole",), 1.0),
    "CartPole-v1": (("pole",), 2.0),
    "brax/hopper": (("foot",), 1.0),
    "brax/halfcheetah": (("torso", "bfoot", "ffoot"), 1.0),
    "brax/walker2d": (("foot", "foot_left"), 1.0),
    # dm_control tasks, as in the authors' dm_control_extensions/suite/*_two_players.py
    **{f"dmc/Cartpole{task}": (("pole_1",), 2.0) for task in ("Balance", "BalanceSparse", "Swingup", "SwingupSparse")},
    "dmc/PendulumSwingup": (("pole",), 1.0),
    "dmc/CheetahRun": (("torso", "bfoot", "ffoot"), 1.0),
    **{f"dmc/Hopper{task}": (("foot",), 1.0) for task in ("Hop", "Stand")},
    **{f"dmc/Walker{task}": (("right_foot", "left_foot"), 1.0) for task in ("Walk", "Run", "Stand")},
}


class ForcedPendulum(Pendulum):
    """gymnax's Pendulum-v1 whose action is `(torque, force)`: `force` (1, 2) is a world (x, z) force at
    the pole's center of mass, half-way along it. θ = 0 is upright, the center of mass sits at
    (l/2 sin θ, l/2 cos θ), so the force's torque about the pivot is l/2 (F_x cos θ - F_z sin θ)."""

    def step_env(self, key, state, action, params):
        torque, force = action
        u = jnp.clip(torque, -params.max_torque, params.max_torque)
        # The reward (gymnax's, of the protagonist's torque only).
        angle = ((state.theta + jnp.pi) % (2 * jnp.pi)) - jnp.pi
        reward = -(angle**2 + 0.1 * state.theta_dot**2 + 0.001 * (u**2)).squeeze()
        force = jnp.reshape(force, (2,))
        force_torque = 0.5 * params.l * (force[0] * jnp.cos(state.theta) - force[1] * jnp.sin(state.theta))
        # Rod about its end: inertia m l^2 / 3, gravity torque m g l/2 sin θ.
        theta_acc = 3 * params.g / (2 * params.l) * jnp.sin(state.theta) + 3.0 / (params.m * params.l**2) * (
            u + force_torque
        )
        theta_dot = jnp.clip(state.theta_dot + theta_acc * params.dt, -params.max_speed, params.max_speed)
        theta = state.theta + theta_dot * params.dt
        state = PendulumState(
            theta=theta.squeeze(), theta_dot=theta_dot.squeeze(), last_u=u.reshape(), time=state.time + 1
        )
        done = self.is_terminal(state, params)
        obs, state = self._apply_transition_gradient_policy(self.get_obs(state), state)
        return obs, state, reward, done, {"discount": self.discount(state, params)}


class ForcedCartPole(CartPole):
    """gymnax's CartPole-v1 whose action is `(push, force)`: `force` (k, 2) world (x, z) forces on the
    bodies `bodies` (`pole`: at its center of mass, `length` above the pivot; `cart`).

    With generalized coordinates (x, θ), a force (F_x, F_z) at the pole's center of mass
    (x + l sin θ, l cos θ) does generalized work Q_x = F_x, Q_θ = l (F_x cos θ - F_z sin θ); on the cart,
    Q_x = F_x. gym's equations (Florian 2007) with those added: the cart force joins the push, Q_θ
    enters the pole's equation divided by m_p l.
    """

    def __init__(self, bodies=("pole",)):
        super().__init__()
        self.bodies = tuple(bodies)

    def step_env(self, key, state, action, params):
        push, force = action
        force = jnp.reshape(force, (len(self.bodies), 2))
        prev_terminal = self.is_terminal(state, params)
        cos_theta, sin_theta = jnp.cos(state.theta), jnp.sin(state.theta)
        generalized_x = params.force_mag * push - params.force_mag * (1 - push)
        generalized_theta = 0.0
        for i, body in enumerate(self.bodies):
            generalized_x = generalized_x + force[i, 0]
            if body == "pole":
                generalized_theta = generalized_theta + params.length * (
                    force[i, 0] * cos_theta - force[i, 1] * sin_theta
                )
        temp = (generalized_x + params.polemass_length * state.theta_dot**2 * sin_theta) / params.total_mass
        theta_acc = (
            params.gravity * sin_theta - cos_theta * temp + generalized_theta / params.polemass_length
        ) / (params.length * (4.0 / 3.0 - params.masspole * cos_theta**2 / params.total_mass))
        x_acc = temp - params.polemass_length * theta_acc * cos_theta / params.total_mass
        # Euler integration, as gym's default.
        state = CartPoleState(
            x=state.x + params.tau * state.x_dot,
            x_dot=state.x_dot + params.tau * x_acc,
            theta=state.theta + params.tau * state.theta_dot,
            theta_dot=state.theta_dot + params.tau * theta_acc,
            time=state.time + 1,
        )
        reward = 1.0 - prev_terminal  # gym: the reward depends on the previous state's termination
        done = self.is_terminal(state, params)
        return (
            jax.lax.stop_gradient(self.get_obs(state)),
            jax.lax.stop_gradient(state),
            jnp.array(reward),
            done,
            {"discount": self.discount(state, params)},
        )


def _brax_link_index(env, body: str) -> int:
    names = list(env.brax_env.sys.link_names)
    aliases = {alias: link for link, alias in _BRAX_LINK_ALIASES.get(env.name, {}).items()}
    link = aliases.get(body, body)
    if not body or link not in names:
        known = [_BRAX_LINK_ALIASES.get(env.name, {}).get(n, n) for n in names if n]
        raise ConfigError(f"{env.name!r} has no body {body!r}; its bodies: {', '.join(known)}.")
    return names.index(link)


class AdversarialForces(Wrapper):
    """Zero-sum two-player env: `step(key, state, (protagonist_action, adversary_action), params)`.

    `bodies` and `max_force` default to QARL's choice for the env (`DEFAULT_ADVERSARY`); other envs need
    them given. Apply this wrapper to the env `envs.make` returned, then add other wrappers on top.
    """

    def __init__(self, env, bodies: tuple[str, ...] | None = None, max_force: float | None = None):
        if isinstance(env, Wrapper):
            raise ConfigError(
                "AdversarialForces must wrap the env from envs.make directly (it changes the physics step); "
                "add EpisodeStatistics and other wrappers on top of it."
            )
        name = getattr(env, "name", type(env).__name__)
        if bodies is None or max_force is None:
            if name not in DEFAULT_ADVERSARY:
                raise ConfigError(
                    f"No default adversary for {name!r} (defaults exist for {', '.join(DEFAULT_ADVERSARY)}): "
                    f"pass bodies=(...) and max_force=... ."
                )
            default_bodies, default_max = DEFAULT_ADVERSARY[name]
            bodies = default_bodies if bodies is None else bodies
            max_force = default_max if max_force is None else max_force
        bodies = tuple(bodies)
        if not bodies:
            raise ConfigError("bodies must name at least one body.")
        if not float(max_force) > 0:
            raise ConfigError(f"max_force must be positive, got {max_force}.")
        if isinstance(env, Pendulum):
            if bodies != ("pole",):
                raise ConfigError(f"Pendulum-v1 has one body, 'pole'; got bodies={bodies}.")
            env = ForcedPendulum()
        elif isinstance(env, CartPole):
            if not set(bodies) <= {"pole", "cart"}:
                raise ConfigError(f"CartPole-v1's bodies are 'pole' and 'cart'; got bodies={bodies}.")
            env = ForcedCartPole(bodies)
        elif hasattr(env, "brax_env"):
            from envs.brax_adapter import FORCE_BACKENDS

            if env.brax_env.backend not in FORCE_BACKENDS:
                raise ConfigError(
                    f"Adversarial forces need the generalized or mjx backend, not {env.brax_env.backend!r}: "
                    f"envs.make({name!r}, backend='generalized')."
                )
            self._link_index = jnp.array([_brax_link_index(env, body) for body in bodies])
            self._num_links = env.brax_env.sys.num_links()
        elif hasattr(env, "pg_env"):
            unknown = [body for body in bodies if body not in env.body_names[1:]]
            if unknown:
                raise ConfigError(f"{name!r} has no body {unknown[0]!r}; its bodies: {', '.join(env.body_names[1:])}.")
            self._body_index = jnp.array([env.body_names.index(body) for body in bodies])
            self._num_bodies = len(env.body_names)
        else:
            raise ConfigError(
                f"Adversarial forces exist for Pendulum-v1, CartPole-v1, brax and dmc envs, not {name!r}."
            )
        super().__init__(env)
        self.bodies = bodies
        self.max_force = float(max_force)
        self.adversary_action_dim = 2 * len(bodies)

    def adversary_action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-self.max_force, self.max_force, (self.adversary_action_dim,), jnp.float32)

    def forces(self, adversary_action) -> jax.Array:
        """The applied (x, z) force per body, shape (len(bodies), 2): the action clipped to the bounds."""
        action = jnp.reshape(adversary_action, (len(self.bodies), 2))
        return jnp.clip(action, -self.max_force, self.max_force)

    def step(self, key, state, action, params=None):
        protagonist_action, adversary_action = action
        params = self._env.default_params if params is None else params
        forces = self.forces(adversary_action)
        if hasattr(self._env, "brax_env"):
            world = jnp.zeros((self._num_links, 3), jnp.float32)
            world = world.at[self._link_index, 0].add(forces[:, 0]).at[self._link_index, 2].add(forces[:, 1])
            out = self._env.step(key, state, protagonist_action, params.replace(external_force=world))
        elif hasattr(self._env, "pg_env"):
            world = jnp.zeros((self._num_bodies, 3), jnp.float32)
            world = world.at[self._body_index, 0].add(forces[:, 0]).at[self._body_index, 2].add(forces[:, 1])
            out = self._env.step(key, state, protagonist_action, params.replace(external_force=world))
        else:
            out = self._env.step(key, state, (protagonist_action, forces), params)
        obs, state, reward, terminated, truncated, info = out
        info = {**info, "adversary_reward": -reward, "adversary_force": forces}
        return obs, state, reward, terminated, truncated, info


__all__ = ["AdversarialForces", "DEFAULT_ADVERSARY", "ForcedCartPole", "ForcedPendulum", "base_env"]
