"""The combination locks (effective horizon known by construction) and the horizon cap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.combination_lock import LockState


def lock_transitions(env, params):
    """{(position, action): (reward, terminated, next_position)} read off the env's own step function."""
    step = jax.jit(env.step_env)
    table = {}
    for position in range(env.length):
        state = LockState(position=jnp.int32(position), time=jnp.int32(0))
        for action in range(env.num_actions):
            _, next_state, reward, terminated, _ = step(jax.random.PRNGKey(0), state, action, params)
            table[position, action] = (float(reward), bool(terminated), int(next_state.position))
    return table


def q_iteration(table, length, num_actions, gamma, k):
    """Q^1 = Q of the uniformly random policy, Q^{j+1} = r + γ max_a' Q^j(s', a'): plain Python loops."""
    value = [0.0] * (length + 1)  # random policy's value; computed from the last position backwards
    q_random = [[0.0] * num_actions for _ in range(length)]
    for position in reversed(range(length)):
        for action in range(num_actions):
            reward, terminated, next_position = table[position, action]
            q_random[position][action] = reward + (0.0 if terminated else gamma * value[next_position])
        value[position] = sum(q_random[position]) / num_actions
    q = q_random
    for _ in range(k - 1):
        q = [[reward + (0.0 if terminated else gamma * max(q[next_position]))
              for reward, terminated, next_position in (table[position, a] for a in range(num_actions))]
             for position in range(length)]
    return q


@pytest.mark.parametrize("length,num_actions,gamma", [(1, 3, 1.0), (4, 3, 1.0), (6, 2, 0.99), (8, 4, 1.0),
                                                      (10, 3, 0.99)])
def test_greedy_on_q_k_is_optimal_iff_k_reaches_the_lock_length(length, num_actions, gamma):
    env, params = envs.make(f"CombinationLock-H{length}", num_actions=num_actions)
    table = lock_transitions(env, params)
    right = [int(env.digit(p)) for p in range(length)]
    # Exactly one right digit per position; it changes along the lock (no constant policy opens it).
    assert all(table[p, right[p]][1] == (p == length - 1) for p in range(length))
    assert all(right[p] != right[p + 1] for p in range(length - 1))
    for k in range(1, length + 3):
        q = q_iteration(table, length, num_actions, gamma, k)
        greedy = [int(np.argmax(q[p])) for p in range(length)]
        for position in range(length):
            remaining = length - position
            assert (greedy[position] == right[position]) == (remaining <= k), (k, position, q[position])
        # Greedy from the start: the optimal return iff k >= length, else walk away with 0.
        expected = env.optimal_return(params, gamma) if k >= length else 0.0
        assert np.isclose(q[0][greedy[0]], expected), (k, q[0])
    assert env.optimal_return(params, gamma) > 0


def test_lock_ids_and_spaces():
    assert "CombinationLock-H4" in envs.known_env_ids()
    env, params = envs.make("CombinationLock-H5")
    assert env.observation_space(params).shape == (5,) and env.action_space(params).n == 3
    assert np.isclose(env.optimal_return(params), 1.0 - 4 * 0.1)
    with pytest.raises(ValueError, match="CombinationLock-H4"):
        envs.make("CombinationLock-H44")


def test_lock_episode_through_the_common_interface():
    env, params = envs.make("CombinationLock-H3")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    rewards = []
    for position in range(3):
        np.testing.assert_array_equal(obs, np.eye(3)[position])
        obs, state, reward, terminated, truncated, info = env.step(
            jax.random.PRNGKey(position), state, env.digit(position), params)
        rewards.append(float(reward))
        assert bool(terminated) == (position == 2) and not bool(truncated)
    np.testing.assert_allclose(rewards, [-0.1, -0.1, 1.0])
    np.testing.assert_array_equal(info["final_observation"], np.eye(3)[2])
    np.testing.assert_array_equal(obs, np.eye(3)[0])  # auto-reset
    # A wrong digit at the last position sets off the alarm; elsewhere it walks away with nothing.
    _, state = env.reset(jax.random.PRNGKey(0), params)
    _, _, reward, terminated, *_ = env.step(jax.random.PRNGKey(1), state, (env.digit(0) + 1) % 3, params)
    assert float(reward) == 0.0 and bool(terminated)
    env1, params1 = envs.make("CombinationLock-H1")
    _, state = env1.reset(jax.random.PRNGKey(0), params1)
    assert float(env1.step(jax.random.PRNGKey(1), state, 0, params1)[2]) == -2.0


# ----------------------------------------------------------------------------------------------------
# Horizon cap


def test_horizon_cap_truncates_and_keeps_the_final_observation():
    base, params = envs.make("CartPole-v1")
    env = envs.EpisodeStatistics(envs.HorizonCap(base, 7))
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step)
    lengths = []
    for t in range(30):
        inner_before = state.env_state.env_state
        action = t % 2  # alternating keeps CartPole up for far longer than 7 steps
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(t), state, action, params)
        if info["episode_done"]:
            lengths.append(int(info["episode_length"]))
            assert bool(truncated) and not bool(terminated)
            reached, *_ = base.step_env(jax.random.PRNGKey(99), inner_before, action, params)
            np.testing.assert_allclose(info["final_observation"], reached, rtol=1e-6)
            assert not np.allclose(obs, info["final_observation"])  # obs is the next episode's first
    assert lengths == [7, 7, 7, 7]


def test_horizon_cap_leaves_shorter_episodes_alone():
    env, params = envs.make("CombinationLock-H3/horizon10")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    obs, state, reward, terminated, truncated, _ = env.step(jax.random.PRNGKey(1), state, 0, params)  # wrong digit
    assert bool(terminated) and not bool(truncated) and int(state.step_count) == 0


def test_horizon_suffix():
    env, params = envs.make("Breakout-MinAtar/horizon5")
    assert isinstance(env, envs.HorizonCap) and env.horizon == 5
    assert env.observation_space(params).shape == (10, 10, 4)
    with pytest.raises(ValueError, match=r"CartPole-v1/horizon<H>"):
        envs.make("CartPole-v1/horizon0")
    with pytest.raises(ValueError, match="CartPole-v1"):
        envs.make("Cartpole-v1/horizon10")
    with pytest.raises(ValueError, match="at least 1"):
        envs.HorizonCap(env, 0)
