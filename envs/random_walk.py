"""A prediction task with known true values: the random-walk Markov reward process.

Sutton & Barto (2018, Example 7.1): `num_states` states in a row, the walk starts in the middle and
moves left or right with probability 1/2 each step. Stepping off the left end ends the episode with
reward -1, off the right end with +1; every other reward is 0. There is one action (it is ignored), so
every learner is evaluating the same fixed policy, and `true_values(gamma)` gives the exact answer.
Observations are one-hot state vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from envs.errors import ConfigError


@struct.dataclass
class RandomWalkState(environment.EnvState):
    position: jax.Array  # 0 .. num_states - 1
    time: jax.Array


@struct.dataclass
class RandomWalkParams(environment.EnvParams):
    max_steps_in_episode: int = 10_000


class RandomWalk(environment.Environment[RandomWalkState, RandomWalkParams]):
    def __init__(self, num_states: int = 19):
        super().__init__()
        if num_states < 1 or num_states % 2 == 0:
            raise ConfigError(f"num_states must be odd and positive (the walk starts in the middle), got {num_states}.")
        self.num_states = num_states

    @property
    def default_params(self) -> RandomWalkParams:
        return RandomWalkParams()

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(state.position, self.num_states)

    def reset_env(self, key, params):
        state = RandomWalkState(time=jnp.int32(0), position=jnp.int32(self.num_states // 2))
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        move = jnp.where(jax.random.bernoulli(key), 1, -1)
        position = state.position + move
        reward = jnp.where(position >= self.num_states, 1.0, jnp.where(position < 0, -1.0, 0.0))
        terminated = (position < 0) | (position >= self.num_states)
        state = RandomWalkState(time=state.time + 1, position=jnp.clip(position, 0, self.num_states - 1))
        return self.get_obs(state), state, reward, terminated, {}

    def is_terminated(self, state, params):
        return jnp.bool_(False)  # termination is decided in step_env, where the move is known

    @property
    def num_actions(self) -> int:
        return 1

    def action_space(self, params=None):
        return spaces.Discrete(1)

    def observation_space(self, params=None):
        return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)

    def all_observations(self) -> np.ndarray:
        """The observation of every state, in order: [num_states, num_states]."""
        return np.eye(self.num_states, dtype=np.float32)

    def true_values(self, gamma: float) -> np.ndarray:
        """v(s) = E[r + γ v(s')], solved exactly: (I - γ P) v = r̄ over the non-terminal states."""
        n = self.num_states
        transitions = np.zeros((n, n))
        expected_reward = np.zeros(n)
        for s in range(n):
            for step in (-1, 1):
                if 0 <= s + step < n:
                    transitions[s, s + step] += 0.5
                else:
                    expected_reward[s] += 0.5 * step
        return np.linalg.solve(np.eye(n) - gamma * transitions, expected_reward)
