"""The brax adapter keeps the gymnax 1.x contract: terminated vs truncated, auto-reset to a fresh state
drawn from the step's key, and the true final observation in `info` (see envs/brax_adapter.py).

Mostly brax/inverted_pendulum (it compiles in seconds); one env object per module, so each jitted
function compiles once and the tests reuse it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import spaces

import envs

pytestmark = pytest.mark.slow  # every test builds a brax env (seconds each) or rolls one out

RESET_NOISE = 0.01  # inverted_pendulum resets q and qd uniformly in [-0.01, 0.01]


@pytest.fixture(scope="module")
def pendulum():
    env, params = envs.make("brax/inverted_pendulum", episode_length=5)
    raw_step = jax.jit(env.brax_env.step)  # brax's own step: no time limit, no reset
    return env, params, raw_step


def run_until_done(env, params, key, action, max_steps=100):
    """Step one env with a constant action; return (step count, state before, last step's outputs)."""
    obs, state = env.reset(key, params)
    for count in range(1, max_steps + 1):
        key, step_key = jax.random.split(key)
        before = state
        obs, state, reward, terminated, truncated, info = env.step(step_key, state, action, params)
        if terminated or truncated:
            return count, before, (obs, state, reward, terminated, truncated, info)
    raise AssertionError(f"no episode ended within {max_steps} steps")


def assert_fresh_reset(obs, state):
    """A pendulum reset: step counter 0, not done, obs within the reset noise and matching the state."""
    assert int(state.time) == 0
    assert float(state.brax_state.done) == 0.0
    assert np.all(np.abs(np.asarray(obs)) <= RESET_NOISE)
    np.testing.assert_array_equal(obs, state.brax_state.obs)


def test_spaces_and_attributes(pendulum):
    env, params, _ = pendulum
    assert env.name == "brax/inverted_pendulum" and env.num_actions == 1
    assert params.max_steps_in_episode == 5 and env.default_params == params
    action_space, obs_space = env.action_space(params), env.observation_space(params)
    assert isinstance(action_space, spaces.Box) and action_space.shape == (1,)
    assert float(action_space.low) == -1.0 and float(action_space.high) == 1.0
    assert isinstance(obs_space, spaces.Box) and obs_space.shape == (4,)
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == obs_space.shape and obs.dtype == jnp.float32


def test_truncation_keeps_true_final_observation_and_resets(pendulum):
    env, params, raw_step = pendulum
    action = jnp.zeros(1)  # the pole stays up for ~20 steps: only the 5-step limit ends the episode
    first_obs, _ = env.reset(jax.random.PRNGKey(1), params)
    count, before, (obs, state, reward, terminated, truncated, info) = run_until_done(
        env, params, jax.random.PRNGKey(1), action
    )
    assert count == 5
    assert bool(truncated) and not bool(terminated)
    assert bool(info["truncated"]) and not bool(info["terminated"])
    assert reward.dtype == jnp.float32 and float(reward) == 1.0
    # final_observation is what brax's own step gives from the last state, not the reset obs.
    expected = raw_step(before.brax_state, action).obs
    np.testing.assert_allclose(info["final_observation"], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(info["final_observation"], obs)
    # The returned obs/state are a fresh reset (not the first state again), and the counter restarted.
    assert_fresh_reset(obs, state)
    assert not np.allclose(obs, first_obs)
    obs, state, *_ = env.step(jax.random.PRNGKey(2), state, action, params)
    assert int(state.time) == 1


def test_final_observation_equals_obs_when_not_done(pendulum):
    env, params, _ = pendulum
    _, state = env.reset(jax.random.PRNGKey(3), params)
    obs, state, _, terminated, truncated, info = env.step(jax.random.PRNGKey(4), state, jnp.zeros(1), params)
    assert not bool(terminated) and not bool(truncated) and int(state.time) == 1
    np.testing.assert_array_equal(info["final_observation"], obs)


def test_termination_and_termination_wins_over_truncation(pendulum):
    env, params, raw_step = pendulum
    long_params = params.replace(max_steps_in_episode=1000)  # a pytree leaf: no recompilation
    action = jnp.ones(1)  # full push: the pole falls past 0.2 rad within a few steps
    key = jax.random.PRNGKey(5)
    count, before, (obs, state, _, terminated, truncated, info) = run_until_done(env, long_params, key, action)
    assert bool(terminated) and not bool(truncated)
    final = np.asarray(info["final_observation"])
    np.testing.assert_allclose(final, raw_step(before.brax_state, action).obs, rtol=1e-6, atol=1e-6)
    assert abs(final[1]) > 0.2  # the terminal obs shows the fallen pole
    assert_fresh_reset(obs, state)
    # The same episode with its time limit on the falling step: a termination, not a time-out.
    limit_params = params.replace(max_steps_in_episode=count)
    count_again, _, (_, _, _, terminated, truncated, _) = run_until_done(env, limit_params, key, action)
    assert count_again == count and bool(terminated) and not bool(truncated)


def test_vmapped_jitted_rollout_resets_freshly(pendulum):
    env, params, _ = pendulum
    num_envs, num_steps = 8, 12

    @jax.jit
    def rollout(key):
        reset_keys = jax.random.split(key, num_envs)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, params)

        def body(state, step_key):
            action = jnp.zeros((num_envs, 1))
            out = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(step_key, num_envs), state, action, params
            )
            return out[1], (out[0], out[3], out[4], out[5]["final_observation"])

        _, trajectory = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return obs, trajectory

    first_obs, (obs, terminated, truncated, final_obs) = rollout(jax.random.PRNGKey(6))
    assert obs.shape == (num_steps, num_envs, 4) and truncated.shape == (num_steps, num_envs)
    assert not terminated.any()
    # Every env truncates at steps 5 and 10 (indices 4 and 9), nowhere else.
    expected = np.zeros((num_steps, num_envs), bool)
    expected[[4, 9]] = True
    np.testing.assert_array_equal(truncated, expected)
    # Each reset is fresh: it differs across envs, from the env's first state and from its other reset.
    for resets in (obs[4], obs[9]):
        assert np.all(np.abs(resets) <= RESET_NOISE)
        assert len({tuple(np.asarray(o).round(7)) for o in resets}) == num_envs
        assert not np.isclose(resets, first_obs).all(axis=-1).any()
    assert not np.isclose(obs[4], obs[9]).all(axis=-1).any()
    assert not np.isclose(final_obs[4], obs[4]).all(axis=-1).any()
    np.testing.assert_array_equal(final_obs[~expected], obs[~expected])


def test_hopper_falls_and_terminates():
    env, params = envs.make("brax/hopper", episode_length=1000)
    action = -jnp.ones(env.num_actions)  # every joint bent fully: the hopper topples
    _, _, (obs, state, _, terminated, truncated, info) = run_until_done(
        env, params, jax.random.PRNGKey(7), action
    )
    assert bool(terminated) and not bool(truncated) and int(state.time) == 0
    assert not np.allclose(info["final_observation"], obs)


def test_halfcheetah_does_not_terminate_and_truncates_at_its_limit():
    """brax's halfcheetah never falls (its done is always 0): bent joints for its whole 5-step episode end it by
    truncation only (stream AC's brax-halfcheetah-ac preset is brax-hopper-ac on this id, tests/test_stream_x.py)."""
    env, params = envs.make("brax/halfcheetah", episode_length=5)
    count, _, (obs, state, _, terminated, truncated, info) = run_until_done(
        env, params, jax.random.PRNGKey(7), -jnp.ones(env.num_actions))
    assert count == 5 and bool(truncated) and not bool(terminated) and int(state.time) == 0
    assert obs.shape == info["final_observation"].shape == (env.observation_space(params).shape[0],)


def test_bad_ids_and_arguments_raise():
    with pytest.raises(ValueError, match="brax/"):
        envs.make("brax/hoper")  # close ids are suggested
    with pytest.raises(ValueError, match="Unknown environment id"):
        envs.make("brax/nonexistent")
    with pytest.raises(ValueError, match="generalized, positional, spring, mjx"):
        envs.make("brax/hopper", backend="warp")
    with pytest.raises(ValueError, match="episode_length"):
        envs.make("brax/hopper", episode_length=0)
