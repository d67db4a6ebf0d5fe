"""Robust-RL dynamics: physical parameters in the env params, uncertainty sets, domain randomization and
evaluation of a policy over a whole grid of models in one jitted call.

    uset = envs.uncertainty_set("hopper-2d")                  # friction x torso mass (IWOCS ranges)
    env, env_params = envs.make(uset.env_id)                   # the unmodified env is the nominal model
    params = envs.with_dynamics(env, env_params, {"friction": 0.5, "torso_mass": 2.0})
    params = uset.apply(env, env_params, uset.from_normalized(z))   # z in [0, 1]^d, traceable (vmap it)
    env = envs.DomainRandomization(env, uset)                 # a new model from the set at every reset
    result = envs.evaluate_grid(env, env_params, uset, policy, policy_params, jax.random.PRNGKey(0))

Parameters live in the env params, so every env of a vmapped batch can have its own model:
- gymnax Pendulum-v1: `mass`, `length` (gymnax's `m`, `l`).
- gymnax CartPole-v1: `pole_mass`, `pole_length` (gymnax's `length`: half the pole, as in gym),
  `cart_mass`; the derived `total_mass` and `polemass_length` follow.
- brax envs: `<link>_mass` for every named link (absolute, kg; ant's unnamed lower legs are
  `<leg>_ankle_mass`) and `friction`. Friction is the floor's
  sliding friction; every other geom's friction is scaled by the same factor. MuJoCo (and brax, which
  uses MuJoCo's collision code) takes the max over a contact pair, so changing the floor alone would do
  nothing below the feet's own value (hopper foot 2.0); scaling keeps each contact's ratio to the floor
  and makes the nominal value reproduce the unmodified model exactly. Setting a mass changes only the
  mass (not the rotational inertia), as the reference papers do with MuJoCo's `body_mass`.
- dmc envs (MuJoCo Playground): `<body>_mass` for every named body (absolute, kg) and `friction`, with QARL's
  authors' meaning: every geom's sliding friction is set to the value. Its nominal value is the floor's,
  which is each contact's max in the unmodified models (cheetah's body geoms have 0.4 against the
  ground's 1.0), so the nominal value simulates the unmodified contacts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments.classic_control.cartpole import CartPole
from gymnax.environments.classic_control.pendulum import Pendulum

from envs.errors import ConfigError
from envs.wrappers import Wrapper, reset_where

# ---------------------------------------------------------------------------------------------------
# Physical parameters of one env


def base_env(env):
    """The environment under any stack of wrappers."""
    while isinstance(env, Wrapper):
        env = env._env
    return env


def _is_brax(env) -> bool:
    return hasattr(env, "brax_env")


# brax link names that are not self-explanatory, or empty (ant's lower legs), get these names instead.
_BRAX_LINK_ALIASES = {
    # brax fuses gym's jointless front_left_leg/front_right_leg capsules into the torso; the first
    # jointed segment of each leg (gym's aux_1/aux_2, the same 0.039 kg) carries the name here.
    "brax/ant": {"aux_1": "front_left_leg", "aux_2": "front_right_leg", "aux_3": "back_leg",
                 "aux_4": "right_back_leg"},
}
# Unnamed brax links, by index: ant's lower leg segments (gym's bodies under aux_1..aux_4, whose geoms gym
# names left_ankle, right_ankle, third_ankle, fourth_ankle; 0.068 kg each).
_BRAX_UNNAMED_LINKS = {
    "brax/ant": {2: "front_left_ankle", 4: "front_right_ankle", 6: "back_ankle", 8: "right_back_ankle"},
}


def _brax_mass_links(env) -> dict[str, int]:
    """Parameter name -> link index, for the brax env's named links."""
    aliases = _BRAX_LINK_ALIASES.get(env.name, {})
    unnamed = _BRAX_UNNAMED_LINKS.get(env.name, {})
    names = {}
    for index, link in enumerate(env.brax_env.sys.link_names):
        if link:
            names[f"{aliases.get(link, link)}_mass"] = index
        elif index in unnamed:
            names[f"{unnamed[index]}_mass"] = index
    return names


def _is_dmc(env) -> bool:
    return hasattr(env, "pg_env")


def _dmc_mass_bodies(env) -> dict[str, int]:
    """Parameter name -> MuJoCo body index, for the dmc env's named bodies (not the world)."""
    return {f"{name}_mass": index for index, name in enumerate(env.body_names) if index > 0 and name}


def _dmc_floor_friction(env) -> float:
    model = env.pg_env.mj_model
    world_geoms = np.flatnonzero(np.asarray(model.geom_bodyid) == 0)
    return float(model.geom_friction[world_geoms[0], 0])


def _brax_floor_friction(env) -> float:
    sys = env.brax_env.sys
    world_geoms = np.flatnonzero(np.asarray(sys.geom_bodyid) == 0)
    return float(np.asarray(sys.geom_friction)[world_geoms[0], 0])


def nominal_dynamics(env) -> dict[str, float]:
    """Every physical parameter `with_dynamics` accepts for `env`, with its unmodified value."""
    env = base_env(env)
    if isinstance(env, Pendulum):
        params = env.default_params
        return {"mass": float(params.m), "length": float(params.l)}
    if isinstance(env, CartPole):
        params = env.default_params
        return {"pole_mass": float(params.masspole), "pole_length": float(params.length),
                "cart_mass": float(params.masscart)}
    if _is_brax(env):
        masses = np.asarray(env.brax_env.sys.link.inertia.mass)
        values = {name: float(masses[index]) for name, index in _brax_mass_links(env).items()}
        values["friction"] = _brax_floor_friction(env)
        return values
    if _is_dmc(env):
        masses = np.asarray(env.pg_env.mj_model.body_mass)
        values = {name: float(masses[index]) for name, index in _dmc_mass_bodies(env).items()}
        values["friction"] = _dmc_floor_friction(env)
        return values
    raise ConfigError(
        f"{getattr(env, 'name', type(env).__name__)!r} has no physical parameters here. Environments with "
        f"parameters: Pendulum-v1, CartPole-v1, the brax ids (brax/hopper, ...) and the dmc ids (dmc/CheetahRun, ...)."
    )


def _unknown_name_error(name: str, known, where: str) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown dynamics parameter {name!r} for {where}.{hint} Known: {', '.join(known)}.")


def _is_concrete(value) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def with_dynamics(env, params, values: Mapping[str, Any]):
    """`params` with the physical parameters in `values` (name -> value) set; the others keep their
    current value. Values may be traced (inside jit/vmap); concrete ones are checked to be positive and
    finite, and unknown names raise at once with the closest known names."""
    env = base_env(env)
    known = nominal_dynamics(env)
    for name, value in values.items():
        if name not in known:
            raise _unknown_name_error(name, known, repr(env.name))
        if _is_concrete(value):
            value = np.asarray(value)
            if not (np.all(np.isfinite(value)) and np.all(value > 0)):
                raise ConfigError(f"{name} must be positive and finite, got {value} (for {env.name!r}).")
    if isinstance(env, Pendulum):
        fields = {"mass": "m", "length": "l"}
        return params.replace(**{fields[name]: value for name, value in values.items()})
    if isinstance(env, CartPole):
        pole_mass = values.get("pole_mass", params.masspole)
        pole_length = values.get("pole_length", params.length)
        cart_mass = values.get("cart_mass", params.masscart)
        return params.replace(
            masspole=pole_mass, length=pole_length, masscart=cart_mass,
            total_mass=cart_mass + pole_mass, polemass_length=pole_mass * pole_length,
        )
    if _is_dmc(env):  # full per-body mass and per-geom friction arrays (see DmcParams)
        body_mass = params.body_mass
        mass_bodies = _dmc_mass_bodies(env)
        for name, value in values.items():
            if name in mass_bodies:
                if body_mass is None:
                    body_mass = env.pg_env.mj_model.body_mass
                body_mass = jnp.asarray(body_mass, jnp.float32).at[mass_bodies[name]].set(value)
        geom_friction = params.geom_friction
        if "friction" in values:  # QARL's meaning: every geom's sliding friction is set to the value
            geom_friction = jnp.full(env.pg_env.mj_model.ngeom, values["friction"], jnp.float32)
        return params.replace(body_mass=body_mass, geom_friction=geom_friction)
    # brax: full per-link mass and per-geom friction arrays (see BraxParams).
    sys = env.brax_env.sys
    link_mass, geom_friction = params.link_mass, params.geom_friction
    mass_links = _brax_mass_links(env)
    for name, value in values.items():
        if name in mass_links:
            if link_mass is None:
                link_mass = sys.link.inertia.mass
            link_mass = jnp.asarray(link_mass, jnp.float32).at[mass_links[name]].set(value)
    if "friction" in values:
        nominal = jnp.asarray(sys.geom_friction, jnp.float32)[:, 0]
        geom_friction = nominal * (values["friction"] / _brax_floor_friction(env))
    return params.replace(link_mass=link_mass, geom_friction=geom_friction)


# ---------------------------------------------------------------------------------------------------
# Uncertainty sets


@dataclass(frozen=True)
class UncertaintySet:
    """A box of physical parameters of one env: `names[i]` ranges over [low[i], high[i]].

    `nominal` is the unmodified env's value (what plain `env_params` simulate). It may lie outside the
    box, as in the IWOCS/M2TD3 sets (hopper torso 3.67 kg, set [0.1, 3]). Values are physical units;
    `to_normalized` / `from_normalized` map the box to and from [0, 1]^d (for CMA-ES or a grid).
    """

    name: str
    env_id: str
    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    nominal: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_normalized(self, values) -> jax.Array:
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return (jnp.asarray(values) - low) / (high - low)

    def from_normalized(self, z) -> jax.Array:
        """Physical values of the points z in [0, 1]^d (affine, no clipping: clip z when a search can
        leave the box)."""
        low, high = jnp.asarray(self.low), jnp.asarray(self.high)
        return low + jnp.asarray(z) * (high - low)

    def sample(self, key) -> jax.Array:
        """Uniform values in the box, shape (d,)."""
        return self.from_normalized(jax.random.uniform(key, (self.dim,)))

    def axis_values(self, num_per_axis: int) -> np.ndarray:
        """`num_per_axis` evenly spaced values of each parameter over its range (ends included), shape
        (d, num_per_axis)."""
        if int(num_per_axis) < 2:
            raise ConfigError(f"num_per_axis must be at least 2 (both ends of each range), got {num_per_axis}.")
        return np.stack([np.linspace(lo, hi, int(num_per_axis), dtype=np.float32) for lo, hi in zip(self.low, self.high)])

    def grid(self, num_per_axis: int) -> jax.Array:
        """Values of the uniform grid with `num_per_axis` points per axis (ends included), shape
        (num_per_axis,) * d + (d,); axis i of the grid is parameter i."""
        return jnp.stack(jnp.meshgrid(*self.axis_values(num_per_axis), indexing="ij"), axis=-1)

    def axis_lines(self, num_per_axis: int) -> np.ndarray:
        """Each parameter alone over its range, the others at their nominal values: shape (d, num_per_axis, d),
        line i varying parameter i (the one-axis robustness curves of QARL's paper)."""
        lines = np.tile(np.asarray(self.nominal, np.float32), (self.dim, int(num_per_axis), 1))
        for axis, values in enumerate(self.axis_values(num_per_axis)):
            lines[axis, :, axis] = values
        return lines

    def check(self, values) -> None:
        """Raise a ValueError naming each parameter outside the box (concrete values only)."""
        values = np.asarray(values, np.float64)
        if values.shape[-1:] != (self.dim,):
            raise ConfigError(
                f"{self.name} has {self.dim} parameters {self.names}; got values of shape {values.shape}."
            )
        flat = values.reshape(-1, self.dim)
        for i, (name, lo, hi) in enumerate(zip(self.names, self.low, self.high)):
            slack = 1e-6 * max(abs(lo), abs(hi))  # float32 round-off at the ends
            nominal = np.isclose(flat[:, i], self.nominal[i], rtol=1e-6, atol=0.0)
            bad = flat[((flat[:, i] < lo - slack) | (flat[:, i] > hi + slack)) & ~nominal, i]
            if bad.size:
                raise ConfigError(
                    f"{name}={bad[0]:g} is outside {self.name}'s range [{lo:g}, {hi:g}] (nominal "
                    f"{self.nominal[i]:g}). Pick a value inside "
                    f"(clip normalized points to [0, 1]), or use with_dynamics directly for other values."
                )

    def apply(self, env, params, values):
        """`params` simulating the model `values` (shape (d,), in the order of `names`). Concrete values
        are checked against the box; traced ones (inside jit/vmap) are used as they are."""
        base = base_env(env)
        if getattr(base, "name", None) != self.env_id:
            raise ConfigError(
                f"Uncertainty set {self.name!r} is for {self.env_id!r}, not {getattr(base, 'name', base)!r}: "
                f"build the env with envs.make({self.env_id!r})."
            )
        if _is_concrete(values):
            self.check(values)
        values = jnp.asarray(values, jnp.float32)
        return with_dynamics(base, params, {name: values[i] for i, name in enumerate(self.names)})


# (name, low, high) per axis. IWOCS/M2TD3 ranges (their papers and M2TD3's code) for the brax sets; their nominal
# values are brax's own models, which differ a little from gym's MuJoCo files (hopper torso 3.67 vs 3.53,
# ant torso 0.48 vs 0.33: brax fuses the jointless hip capsules into it). 1-D sets are the first axis
# of the 2-D set, as in M2TD3. The `-qarl` sets are QARL's evaluation grids (torso mass x friction).
# Classic-control ranges are this collection's choice, around gym's values, heavier/longer is harder.
_AXES = {
    "Pendulum-v1": {"mass": (0.5, 2.0), "length": (0.5, 1.5)},
    "CartPole-v1": {"pole_mass": (0.05, 1.0), "pole_length": (0.25, 1.0), "cart_mass": (0.5, 2.0)},
    "brax/hopper": {"friction": (0.1, 3.0), "torso_mass": (0.1, 3.0), "thigh_mass": (0.1, 4.0)},
    "brax/halfcheetah": {"friction": (0.1, 4.0), "torso_mass": (0.1, 7.0), "bthigh_mass": (0.1, 3.0)},
    "brax/walker2d": {"friction": (0.1, 4.0), "torso_mass": (0.1, 5.0), "thigh_mass": (0.1, 6.0)},
    # M2TD3's Ant sets (utils/make_env.py): torsomass = gym body_mass[1], frontleftlegmass = body_mass[2] (the
    # jointless capsule brax fuses into the torso: its jointed successor aux_1, the same 0.039 kg, stands in),
    # frontrightlegmass = body_mass[4], which in gym's ant.xml is the front-LEFT leg's lower segment (0.068 kg,
    # brax link 2): the third axis is that body, named here for what it is.
    "brax/ant": {"torso_mass": (0.1, 3.0), "front_left_leg_mass": (0.01, 3.0),
                 "front_left_ankle_mass": (0.01, 3.0)},
    "brax/inverted_pendulum": {"pole_mass": (1.0, 31.0), "cart_mass": (1.0, 11.0)},
}
_PREFIXES = {"pendulum": "Pendulum-v1", "cartpole": "CartPole-v1", "hopper": "brax/hopper",
             "halfcheetah": "brax/halfcheetah", "walker": "brax/walker2d", "ant": "brax/ant",
             "inverted_pendulum": "brax/inverted_pendulum"}
_QARL_SETS = {
    "hopper-qarl": ("brax/hopper", {"torso_mass": (1.0, 9.0), "friction": (0.1, 1.9)}),
    "halfcheetah-qarl": ("brax/halfcheetah", {"torso_mass": (3.0, 9.0), "friction": (0.1, 1.9)}),
    "walker-qarl": ("brax/walker2d", {"torso_mass": (5.0, 15.0), "friction": (0.1, 1.3)}),
    # The authors' grids on their dm_control tasks (abstract_experiment.py, *_two_players.py): absolute values.
    # Their pendulum is their own model (a 0.1 kg pole body and a 1 kg tip body, grid 0.05-0.15 x 0.5-1.5);
    # dm_control's (Playground's) has one 1 kg body, the pole with its tip: their tip axis is the set here.
    "dmc-cartpole-balance-qarl": ("dmc/CartpoleBalance", {"pole_1_mass": (1.0, 20.0), "cart_mass": (0.5, 1.5)}),
    "dmc-cartpole-swingup-qarl": ("dmc/CartpoleSwingup", {"pole_1_mass": (0.05, 0.15), "cart_mass": (0.5, 1.5)}),
    "dmc-pendulum-qarl": ("dmc/PendulumSwingup", {"pole_mass": (0.5, 1.5)}),
    "dmc-cheetah-qarl": ("dmc/CheetahRun", {"torso_mass": (3.0, 9.0), "friction": (0.1, 1.9)}),
    "dmc-hopper-qarl": ("dmc/HopperHop", {"torso_mass": (1.0, 9.0), "friction": (0.1, 1.9)}),
    "dmc-walker-qarl": ("dmc/WalkerWalk", {"torso_mass": (5.0, 15.0), "friction": (0.1, 1.3)}),
}
# The unmodified models' values (checked against the envs by the tests).
NOMINAL = {
    "Pendulum-v1": {"mass": 1.0, "length": 1.0},
    "CartPole-v1": {"pole_mass": 0.1, "pole_length": 0.5, "cart_mass": 1.0},
    "brax/hopper": {"friction": 1.0, "torso_mass": 3.665191, "thigh_mass": 4.057890},
    "brax/halfcheetah": {"friction": 0.4, "torso_mass": 6.250209, "bthigh_mass": 1.543515},
    "brax/walker2d": {"friction": 0.7, "torso_mass": 3.665191, "thigh_mass": 4.057890},
    "brax/ant": {"torso_mass": 0.483880, "front_left_leg_mass": 0.039158, "front_left_ankle_mass": 0.067592},
    "brax/inverted_pendulum": {"pole_mass": 5.018591, "cart_mass": 10.471975},
    "dmc/CartpoleBalance": {"pole_1_mass": 0.1, "cart_mass": 1.0},
    "dmc/CartpoleSwingup": {"pole_1_mass": 0.1, "cart_mass": 1.0},
    "dmc/PendulumSwingup": {"pole_mass": 1.0},
    "dmc/CheetahRun": {"torso_mass": 6.250209, "friction": 1.0},
    "dmc/HopperHop": {"torso_mass": 4.828384, "friction": 1.0},
    "dmc/WalkerWalk": {"torso_mass": 10.673037, "friction": 0.7},
}


def _build_sets() -> dict[str, UncertaintySet]:
    sets = {}

    def add(name, env_id, axes):
        names = tuple(axes)
        sets[name] = UncertaintySet(
            name, env_id, names, tuple(float(axes[n][0]) for n in names), tuple(float(axes[n][1]) for n in names),
            tuple(NOMINAL[env_id][n] for n in names),
        )

    for prefix, env_id in _PREFIXES.items():
        axes = list(_AXES[env_id].items())
        for dim in range(1, len(axes) + 1):
            add(f"{prefix}-{dim}d", env_id, dict(axes[:dim]))
    for name, (env_id, axes) in _QARL_SETS.items():
        add(name, env_id, axes)
    return sets


UNCERTAINTY_SETS = _build_sets()


def uncertainty_set(name: str) -> UncertaintySet:
    """The named set, e.g. `hopper-2d` (friction x torso mass), `pendulum-2d` (mass x length),
    `walker-qarl`; see `UNCERTAINTY_SETS`."""
    if name in UNCERTAINTY_SETS:
        return UNCERTAINTY_SETS[name]
    close = difflib.get_close_matches(name, list(UNCERTAINTY_SETS), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    with_sets = sorted({s.env_id for s in UNCERTAINTY_SETS.values()})
    raise ConfigError(
        f"No uncertainty set named {name!r}.{hint} Sets exist for {', '.join(with_sets)}: "
        f"{', '.join(UNCERTAINTY_SETS)}. For another env or range, build UncertaintySet(...) yourself "
        f"from the names of envs.nominal_dynamics(env)."
    )


# ---------------------------------------------------------------------------------------------------
# Domain randomization


@struct.dataclass
class DomainRandomizationState:
    env_state: Any
    dynamics: jax.Array  # (d,) the current episode's parameter values


class DomainRandomization(Wrapper):
    """Draw the model uniformly from `uncertainty_set` at every reset and auto-reset; the episode keeps it.

    `info["dynamics"]` holds the values of the episode each step belongs to (before any reset). On an
    auto-reset the episode is restarted with the new model: a second reset, so that the physics state's
    derived terms (mass matrix, ...) belong to the new model (hopper: +38% flops, 5-10% time per step).
    """

    def __init__(self, env, uncertainty_set: UncertaintySet):
        super().__init__(env)
        base = base_env(env)
        if getattr(base, "name", None) != uncertainty_set.env_id:
            raise ConfigError(
                f"Uncertainty set {uncertainty_set.name!r} is for {uncertainty_set.env_id!r}, not "
                f"{getattr(base, 'name', base)!r}."
            )
        self.uncertainty_set = uncertainty_set

    def _params(self, params, dynamics):
        params = self._env.default_params if params is None else params
        return self.uncertainty_set.apply(self._env, params, dynamics)

    def reset(self, key, params=None):
        key_model, key_reset = jax.random.split(key)
        dynamics = self.uncertainty_set.sample(key_model)
        obs, env_state = self._env.reset(key_reset, self._params(params, dynamics))
        return obs, DomainRandomizationState(env_state, dynamics)

    def step(self, key, state, action, params=None):
        key_step, key_reset = jax.random.split(key)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key_step, state.env_state, action, self._params(params, state.dynamics)
        )
        done = jnp.logical_or(terminated, truncated)
        obs, next_state = reset_where(
            done, self.reset, key_reset, params, (obs, DomainRandomizationState(env_state, state.dynamics))
        )
        return obs, next_state, reward, terminated, truncated, {**info, "dynamics": state.dynamics}


# ---------------------------------------------------------------------------------------------------
# Evaluation over many models


class GridEvaluation(NamedTuple):
    values: jax.Array  # (N,) * d + (d,) the parameters of every grid point
    returns: jax.Array  # (N,) * d mean return at each point
    worst: jax.Array  # the smallest return over the grid
    average: jax.Array  # the mean return over the grid
    worst_values: jax.Array  # (d,) the parameters where the worst return occurs


def make_model_evaluator(env, env_params, uncertainty_set: UncertaintySet, policy: Callable,
                         num_steps: int = 1000, num_episodes: int = 1, policy_init: Callable | None = None,
                         common_random_numbers: bool = True):
    """A jitted `evaluate(policy_params, values, key) -> returns` for a batch of models `values`
    (shape (P, d), physical units) in one vmapped call; returns has shape (P,).

    `policy(policy_params, obs) -> action` acts deterministically (for a two-player env it returns the
    (protagonist, adversary) pair). A policy with memory (e.g. IWOCS's, which checks its models against
    the last transition) passes `policy_init(policy_params, first_obs) -> carry` and is called as
    `policy(policy_params, obs, carry) -> (action, carry)`. Each return is the undiscounted sum of rewards of an episode of at
    most `num_steps` steps (the time limit is set to `num_steps`; an episode that terminates earlier
    stops counting), averaged over `num_episodes` initial states. With `common_random_numbers` every model
    sees the same initial states and env noise, so differences between models are not reset noise;
    without, each model draws its own episodes (a key folded with its index), as one independent episode
    per cell of a grid is drawn in QARL's authors' evaluation.
    """
    if int(num_steps) < 1 or int(num_episodes) < 1:
        raise ConfigError(f"num_steps and num_episodes must be at least 1, got {num_steps}, {num_episodes}.")
    num_steps, num_episodes = int(num_steps), int(num_episodes)
    env_params = env_params.replace(max_steps_in_episode=num_steps)

    def episode_return(policy_params, values, key):
        params = uncertainty_set.apply(env, env_params, values)
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)
        memory = None if policy_init is None else policy_init(policy_params, obs)

        def body(carry, step_key):
            obs, state, memory, total, running = carry
            if policy_init is None:
                action = policy(policy_params, obs)
            else:
                action, memory = policy(policy_params, obs, memory)
            obs, state, reward, terminated, truncated, _ = env.step(step_key, state, action, params)
            total = total + jnp.where(running, reward, 0.0)
            running = jnp.logical_and(running, jnp.logical_not(jnp.logical_or(terminated, truncated)))
            return (obs, state, memory, total, running), None

        carry = (obs, state, memory, jnp.float32(0.0), jnp.bool_(True))
        (*_, total, _), _ = jax.lax.scan(body, carry, jax.random.split(key_steps, num_steps))
        return total

    def model_return(policy_params, values, key):
        keys = jax.random.split(key, num_episodes)
        return jax.vmap(episode_return, in_axes=(None, None, 0))(policy_params, values, keys).mean()

    @jax.jit
    def evaluate(policy_params, values, key):
        if common_random_numbers:
            return jax.vmap(model_return, in_axes=(None, 0, None))(policy_params, values, key)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(values.shape[0]))
        return jax.vmap(model_return, in_axes=(None, 0, 0))(policy_params, values, keys)

    def checked(policy_params, values, key):
        if _is_concrete(values):
            uncertainty_set.check(values)
        return evaluate(policy_params, values, key)

    return checked


def make_grid_evaluator(env, env_params, uncertainty_set: UncertaintySet, policy: Callable,
                        num_per_axis: int = 10, num_steps: int = 1000, num_episodes: int = 1,
                        policy_init: Callable | None = None):
    """A jitted `evaluate(policy_params, key) -> GridEvaluation` over the set's grid of `num_per_axis`
    points per axis (N^d models, all in one vmapped call); see `make_model_evaluator`."""
    grid = uncertainty_set.grid(num_per_axis)
    evaluate_models = make_model_evaluator(
        env, env_params, uncertainty_set, policy, num_steps, num_episodes, policy_init
    )

    @jax.jit
    def evaluate(policy_params, key):
        flat = grid.reshape(-1, uncertainty_set.dim)
        returns = evaluate_models(policy_params, flat, key)
        return GridEvaluation(
            values=grid, returns=returns.reshape(grid.shape[:-1]), worst=returns.min(),
            average=returns.mean(), worst_values=flat[jnp.argmin(returns)],
        )

    return evaluate


def evaluate_grid(env, env_params, uncertainty_set: UncertaintySet, policy: Callable, policy_params, key,
                  num_per_axis: int = 10, num_steps: int = 1000, num_episodes: int = 1,
                  policy_init: Callable | None = None) -> GridEvaluation:
    """A policy's returns on every point of the set's grid, with the worst and the average (one call).
    To evaluate many policies, build `make_grid_evaluator` once: it compiles once."""
    evaluate = make_grid_evaluator(
        env, env_params, uncertainty_set, policy, num_per_axis, num_steps, num_episodes, policy_init
    )
    return evaluate(policy_params, key)
