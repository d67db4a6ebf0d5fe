"""`make(env_id)`: the one environment factory of the collection.

Every environment comes back with the gymnax 1.x interface:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

with auto-reset inside `step` (the returned `obs` is the first observation of the next episode when an
episode ended) and `info["final_observation"]`, the true last observation of the episode that ended,
for bootstrapping at a time limit.

`<id>/horizon<H>` (e.g. `CartPole-v1/horizon200`) is the env `<id>` with every episode cut at H steps
(`envs.HorizonCap`), for finite-horizon comparisons such as scripts/effective_horizon.py.

`make(<MinAtar id>, time_limit=False)` gives MinAtar's original episodes: gymnax cuts every MinAtar episode
at 1000 steps (Freeway 2500), the original MinAtar (github.com/kenjyoung/MinAtar) at none; only Freeway's
game clock ends its episodes, as a termination (`envs.GameTimeLimit`).
"""

from __future__ import annotations

import difflib

import gymnax

from envs.combination_lock import LOCK_PREFIX, lock_ids, make_lock
from envs.errors import ConfigError
from envs.minigrid import MINIGRID_PREFIX, make_minigrid, minigrid_ids
from envs.wrappers import GameTimeLimit, HorizonCap

BRAX_PREFIX = "brax/"
HORIZON_SUFFIX = "/horizon"
# brax's environment names (brax 0.14); listed here so that an unknown id is caught without importing brax.
BRAX_ENV_NAMES = (
    "ant",
    "fast",
    "halfcheetah",
    "hopper",
    "humanoid",
    "humanoidstandup",
    "inverted_double_pendulum",
    "inverted_pendulum",
    "pusher",
    "reacher",
    "swimmer",
    "walker2d",
)

DMC_PREFIX = "dmc/"
# MuJoCo Playground's DeepMind Control Suite tasks (playground 0.2: registry.dm_control_suite.ALL_ENVS); listed
# here so that an unknown id is caught without importing Playground (a test checks the list against it).
DMC_ENV_NAMES = (
    "AcrobotSwingup",
    "AcrobotSwingupSparse",
    "BallInCup",
    "CartpoleBalance",
    "CartpoleBalanceSparse",
    "CartpoleSwingup",
    "CartpoleSwingupSparse",
    "CheetahRun",
    "FingerSpin",
    "FingerTurnEasy",
    "FingerTurnHard",
    "FishSwim",
    "HopperHop",
    "HopperStand",
    "HumanoidRun",
    "HumanoidStand",
    "HumanoidWalk",
    "PendulumSwingup",
    "PointMass",
    "ReacherEasy",
    "ReacherHard",
    "SwimmerSwimmer6",
    "WalkerRun",
    "WalkerStand",
    "WalkerWalk",
)

MINATAR_SUFFIX = "-MinAtar"
# Original MinAtar Freeway: a 2500-frame timer, counted down once per step, ends the game when it drops below
# zero (minatar/environments/freeway.py: `terminate_timer -= 1; if terminate_timer < 0: terminal = True`).
FREEWAY_GAME_STEPS = 2501

# Environments defined in this package (tasks with known answers, for tests and prediction learners).
LOCAL_ENV_IDS = ("RandomWalk-v0",)


def known_env_ids() -> list[str]:
    """Every id `make` accepts: gymnax's registered ids, `brax/<name>`, `dmc/<name>`, this package's own
    (RandomWalk-v0, the combination locks and BRIDGE's MiniGrid MDPs `minigrid/<name>`); any of them may also
    take a `/horizon<H>` suffix."""
    return (list(gymnax.registered_envs) + [BRAX_PREFIX + name for name in BRAX_ENV_NAMES]
            + [DMC_PREFIX + name for name in DMC_ENV_NAMES] + list(LOCAL_ENV_IDS) + lock_ids() + minigrid_ids())


def split_horizon(env_id: str) -> tuple[str, int | None]:
    """`"CartPole-v1/horizon200"` -> `("CartPole-v1", 200)`; an id without the suffix -> `(env_id, None)`."""
    base, sep, horizon = env_id.rpartition(HORIZON_SUFFIX)
    if not sep:
        return env_id, None
    if not horizon.isdigit() or int(horizon) < 1:
        raise ConfigError(
            f"Bad horizon in {env_id!r}: write {base}{HORIZON_SUFFIX}<H> with an integer H >= 1, e.g. "
            f"{base}{HORIZON_SUFFIX}200."
        )
    return base, int(horizon)


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming the closest known ids when `env_id` is not one of them."""
    env_id, _ = split_horizon(env_id)
    known = known_env_ids()
    if env_id in known:
        return
    lowered = {k.lower(): k for k in known}
    close = [lowered[c] for c in difflib.get_close_matches(env_id.lower(), list(lowered), n=5, cutoff=0.4)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"Unknown environment id {env_id!r}.{hint} Known ids: {', '.join(known)}."
    )


def make(env_id: str, *, time_limit: bool = True, **kwargs):
    """Build an environment by id and return `(env, env_params)`.

    gymnax ids (`CartPole-v1`, `Breakout-MinAtar`, `Catch-bsuite`, ...) pass `kwargs` to gymnax.
    brax ids (`brax/hopper`, ...) take `backend` (`generalized` default, `mjx`, `positional`, `spring`),
    `episode_length` (1000 default) and any keyword of the brax environment's constructor.
    dmc ids (`dmc/CheetahRun`, ...: MuJoCo Playground's DeepMind Control Suite, envs/dmc_adapter.py) take
    `episode_length` (1000 default), `impl` (`jax` default, or `warp`) and keys of Playground's env config.
    `RandomWalk-v0` (envs/random_walk.py) takes `num_states` (19 default).
    `CombinationLock-H<n>` takes `num_actions`. `minigrid/<name>` (envs/minigrid.py: BRIDGE's MiniGrid MDPs)
    takes `max_steps_in_episode` (BRIDGE's 100 default). A `/horizon<H>` suffix caps episodes at H steps.
    `time_limit=False` (MinAtar ids only) lifts gymnax's episode cap, as the original MinAtar: episodes end
    only when the game ends (Freeway: its clock runs out after 2501 steps, a termination); the returned
    params' `max_steps_in_episode` is then that game length (2**31 - 1: none).
    """
    check_env_id(env_id)
    env_id, horizon = split_horizon(env_id)
    if horizon is not None:
        env, env_params = make(env_id, time_limit=time_limit, **kwargs)
        return HorizonCap(env, horizon), env_params
    if not time_limit:
        if not env_id.endswith(MINATAR_SUFFIX):
            raise ConfigError(f"time_limit=False is for MinAtar ids (their original has no time limit), not "
                             f"{env_id!r}: keep the time limit, or cap episodes with {env_id}{HORIZON_SUFFIX}<H>.")
        env, env_params = gymnax.make(env_id, **kwargs)
        env = GameTimeLimit(env, FREEWAY_GAME_STEPS if env_id == "Freeway" + MINATAR_SUFFIX else None)
        return env, env_params.replace(max_steps_in_episode=env.limit)
    if env_id.startswith(LOCK_PREFIX):
        return make_lock(env_id, **kwargs)
    if env_id.startswith(MINIGRID_PREFIX):
        return make_minigrid(env_id[len(MINIGRID_PREFIX):], **kwargs)
    if env_id == "RandomWalk-v0":
        from envs.random_walk import RandomWalk

        env = RandomWalk(**kwargs)
        return env, env.default_params
    if env_id.startswith(BRAX_PREFIX):
        from envs.brax_adapter import make_brax  # brax is heavy: import it only when asked for

        return make_brax(env_id[len(BRAX_PREFIX):], **kwargs)
    if env_id.startswith(DMC_PREFIX):
        from envs.dmc_adapter import make_dmc  # Playground (and MJX) likewise

        return make_dmc(env_id[len(DMC_PREFIX):], **kwargs)
    return gymnax.make(env_id, **kwargs)
