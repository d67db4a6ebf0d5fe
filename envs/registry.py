"""`make(env_id)`: the one environment factory of the collection.

Every environment comes back with the gymnax 1.x interface:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

with auto-reset inside `step` (the returned `obs` is the first observation of the next episode when an
episode ended) and `info["final_observation"]`, the true last observation of the episode that ended,
for bootstrapping at a time limit.
"""

from __future__ import annotations

import difflib

import gymnax

BRAX_PREFIX = "brax/"
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

# Environments defined in this package (tasks with known answers, for tests and prediction learners).
LOCAL_ENV_IDS = ("RandomWalk-v0",)


def known_env_ids() -> list[str]:
    """Every id `make` accepts: gymnax's registered ids, `brax/<name>` and this package's own."""
    return list(gymnax.registered_envs) + [BRAX_PREFIX + name for name in BRAX_ENV_NAMES] + list(LOCAL_ENV_IDS)


def check_env_id(env_id: str) -> None:
    """Raise a ValueError naming the closest known ids when `env_id` is not one of them."""
    known = known_env_ids()
    if env_id in known:
        return
    lowered = {k.lower(): k for k in known}
    close = [lowered[c] for c in difflib.get_close_matches(env_id.lower(), list(lowered), n=5, cutoff=0.4)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown environment id {env_id!r}.{hint} Known ids: {', '.join(known)}."
    )


def make(env_id: str, **kwargs):
    """Build an environment by id and return `(env, env_params)`.

    gymnax ids (`CartPole-v1`, `Breakout-MinAtar`, `Catch-bsuite`, ...) pass `kwargs` to gymnax.
    brax ids (`brax/hopper`, ...) take `backend` (`generalized` default, `mjx`, `positional`, `spring`),
    `episode_length` (1000 default) and any keyword of the brax environment's constructor.
    `RandomWalk-v0` (envs/random_walk.py) takes `num_states` (19 default).
    """
    check_env_id(env_id)
    if env_id == "RandomWalk-v0":
        from envs.random_walk import RandomWalk

        env = RandomWalk(**kwargs)
        return env, env.default_params
    if env_id.startswith(BRAX_PREFIX):
        from envs.brax_adapter import make_brax  # brax is heavy: import it only when asked for

        return make_brax(env_id[len(BRAX_PREFIX):], **kwargs)
    return gymnax.make(env_id, **kwargs)
