"""Combination locks whose effective horizon is known by construction (ids `CombinationLock-H<n>`).

Laidlaw et al. (2023) call an MDP k-QVI-solvable when acting greedily on Q^k is optimal, where
Q^1 = Q^{π_rand} (the uniformly random policy's Q-function) and Q^{j+1}(s, a) = r(s, a) + γ E max_a' Q^j(s', a')
(one step of value iteration). The smallest such k is the core of the MDP's effective horizon; SQIRL
(algorithms/sqirl.py) learns Q^1 .. Q^k from random rollouts and acts greedily on Q^k.

`CombinationLock-H<n>` has n positions 0 .. n-1 (observed one-hot) and A actions (3 by default). At each
position exactly one action is the right digit, `digit(p) = (p + 1) mod A`:

    position p < n-1, right digit: reward -step_cost, move to p + 1  (opening the lock costs a little)
    position p < n-1, other digit: reward 0, terminate               (walk away)
    position n-1,     right digit: reward +goal_reward, terminate    (the lock opens)
    position n-1,     other digit: reward -wrong_penalty, terminate  (the alarm goes off)

Why greedy(Q^k) opens the lock iff k >= n (write d = n - p, the digits still to enter):
- The random policy's value is negative everywhere: V(1) = (goal - (A-1) penalty) / A < 0 because
  penalty > goal / (A-1), and V(d) = (-step_cost + γ V(d-1)) / A < 0. So Q^1(d, right) = -step_cost +
  γ V(d-1) < 0 = Q^1(d, other) for every d >= 2: one step of lookahead from random play walks away.
- Backups: Q^j(d, right) = -step_cost + γ max(Q^{j-1}(d-1, right), Q^{j-1}(d-1, other)), where the other
  digits are worth 0 for d-1 >= 2. By induction on j, Q^j(d, right) = G(d) > 0 (the optimal value,
  G(d) = γ^(d-1) goal - step_cost (1 + γ + ... + γ^(d-2))) when d <= j, and Q^j(d, right) = -step_cost < 0
  when d > j. Greedy on Q^k enters the right digit exactly at the last k positions.
So greedy(Q^k) is optimal from the start iff k >= n: the lock's effective horizon (in the k-QVI sense) is n,
its optimal undiscounted return is goal - (n-1) step_cost, and acting greedily on Q^k with k < n walks away
at the first position (return 0). The defaults keep G(d) > 0 for n <= 10 with γ in [0.99, 1].
tests/test_envs_horizon.py checks this by exact value iteration over the env's own step function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from envs.errors import ConfigError

LOCK_PREFIX = "CombinationLock-H"
LOCK_LENGTHS = tuple(range(1, 11))


@struct.dataclass
class LockState(environment.EnvState):
    position: jax.Array
    time: jax.Array


@struct.dataclass
class LockParams(environment.EnvParams):
    step_cost: float = 0.1
    goal_reward: float = 1.0
    wrong_penalty: float = 2.0
    max_steps_in_episode: int = 10  # an upper bound on episode length; the lock itself ends every episode


class CombinationLock(environment.Environment[LockState, LockParams]):
    """A lock of `length` digits over `num_actions` actions; its effective horizon is `length`."""

    def __init__(self, length: int = 4, num_actions: int = 3):
        super().__init__()
        if length < 1 or num_actions < 2:
            raise ConfigError(f"CombinationLock needs length >= 1 and num_actions >= 2, got {length}, {num_actions}.")
        self.length = int(length)
        self.actions = int(num_actions)

    @property
    def default_params(self) -> LockParams:
        return LockParams(max_steps_in_episode=self.length)

    def digit(self, position: jax.Array) -> jax.Array:
        """The right action at `position`; it changes along the lock so no constant policy opens it."""
        return (position + 1) % self.actions

    def step_env(self, key, state: LockState, action, params: LockParams):
        right = action == self.digit(state.position)
        last = state.position == self.length - 1
        reward = jnp.where(
            right,
            jnp.where(last, params.goal_reward, -params.step_cost),
            jnp.where(last, -params.wrong_penalty, 0.0),
        ).astype(jnp.float32)
        terminated = jnp.logical_or(~right, last)
        state = LockState(position=jnp.where(terminated, state.position, state.position + 1), time=state.time + 1)
        return self.get_obs(state), state, reward, terminated, {}

    def reset_env(self, key, params: LockParams):
        state = LockState(position=jnp.int32(0), time=jnp.int32(0))
        return self.get_obs(state), state

    def get_obs(self, state: LockState, params=None, key=None) -> jax.Array:
        return jax.nn.one_hot(state.position, self.length, dtype=jnp.float32)

    def is_terminated(self, state: LockState, params: LockParams) -> jax.Array:
        return jnp.bool_(False)  # termination is decided by the action in step_env

    def is_truncated(self, state: LockState, params: LockParams) -> jax.Array:
        return jnp.bool_(False)  # every episode terminates within `length` steps: no time limit needed

    def optimal_return(self, params: LockParams | None = None, gamma: float = 1.0) -> float:
        """Return of entering every digit right: γ^(n-1) goal - step_cost (1 + γ + ... + γ^(n-2))."""
        params = params or self.default_params
        n = self.length
        return gamma ** (n - 1) * params.goal_reward - params.step_cost * sum(gamma**t for t in range(n - 1))

    @property
    def name(self) -> str:
        return f"{LOCK_PREFIX}{self.length}"

    @property
    def num_actions(self) -> int:
        return self.actions

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(self.actions)

    def observation_space(self, params: Any) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.length,), jnp.float32)


def lock_ids() -> list[str]:
    return [f"{LOCK_PREFIX}{n}" for n in LOCK_LENGTHS]


def make_lock(env_id: str, **kwargs):
    """`CombinationLock-H<n>` -> (env, params); kwargs go to the constructor (e.g. num_actions=4)."""
    env = CombinationLock(int(env_id[len(LOCK_PREFIX):]), **kwargs)
    return env, env.default_params
