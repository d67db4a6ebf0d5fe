"""The streaming wrappers against numpy over the same stream: observation normalization, reward scaling,
the time feature; and the random-walk task's true values."""

import jax
import numpy as np

import envs


def run_stream(env, env_params, num_steps, seed=0):
    """Step one env with random actions; return the per-step outputs as numpy arrays."""
    key_reset, key_steps = jax.random.split(jax.random.PRNGKey(seed))
    obs, state = env.reset(key_reset, env_params)
    space = env.action_space(env_params)

    def step(carry, key):
        state = carry
        key_action, key_step = jax.random.split(key)
        obs, state, reward, terminated, truncated, info = env.step(key_step, state, space.sample(key_action),
                                                                   env_params)
        return state, (obs, reward, terminated | truncated, info["final_observation"])

    _, outputs = jax.jit(lambda k: jax.lax.scan(step, state, jax.random.split(k, num_steps)))(key_steps)
    return np.asarray(obs), jax.tree.map(np.asarray, outputs)


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    samples = rng.normal(3.0, 2.0, size=(50, 3)).astype(np.float32)
    stats = envs.RunningMeanStd.create((3,))
    assert np.allclose(stats.variance, 1.0)
    for i, x in enumerate(samples):
        stats = stats.update(x)
        if i == 0:
            assert np.allclose(stats.variance, 1.0)  # variance is 1 until two samples
        else:
            np.testing.assert_allclose(stats.mean, samples[: i + 1].mean(0), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(stats.variance, samples[: i + 1].var(0, ddof=1), rtol=1e-4, atol=1e-5)
    masked = stats.update(np.full(3, 1e6, np.float32), mask=False)
    np.testing.assert_array_equal(masked.mean, stats.mean)


def test_normalize_observation_matches_numpy_over_the_stream():
    raw_env, env_params = envs.make("CartPole-v1")
    num_steps = 300
    first_raw, (raw_obs, _, done, raw_final) = run_stream(raw_env, env_params, num_steps)
    first, (obs, _, done_n, final) = run_stream(envs.NormalizeObservation(raw_env), env_params, num_steps)
    np.testing.assert_array_equal(done, done_n)
    # The stream the statistics see: the first obs, then per step the final obs, then the reset obs if done.
    seen = [first_raw]
    for t in range(num_steps):
        seen.append(raw_final[t])
        final_stats = np.array(seen)
        expected_final = (raw_final[t] - final_stats.mean(0)) / np.sqrt(final_stats.var(0, ddof=1) + 1e-8)
        np.testing.assert_allclose(final[t], expected_final, rtol=1e-3, atol=1e-3)
        if done[t]:
            seen.append(raw_obs[t])
        stream = np.array(seen)
        expected = (raw_obs[t] - stream.mean(0)) / np.sqrt(stream.var(0, ddof=1) + 1e-8)
        np.testing.assert_allclose(obs[t], expected, rtol=1e-3, atol=1e-3)
    assert done.sum() >= 5  # the stream crossed several episode ends
    np.testing.assert_allclose(first, 0.0)  # one sample: (o - o) / sqrt(1 + eps)


def test_scale_reward_matches_numpy_over_the_stream():
    raw_env, env_params = envs.make("Pendulum-v1")
    gamma, num_steps = 0.9, 500
    _, (_, raw_reward, done, _) = run_stream(raw_env, env_params, num_steps)
    _, (_, scaled, _, _) = run_stream(envs.ScaleReward(raw_env, gamma), env_params, num_steps)
    u, traces = 0.0, []
    for t in range(num_steps):
        u = gamma * (1.0 - done[t]) * u + raw_reward[t]
        traces.append(u)
        variance = np.var(traces, ddof=1) if len(traces) >= 2 else 1.0
        np.testing.assert_allclose(scaled[t], raw_reward[t] / np.sqrt(variance + 1e-8), rtol=1e-3)
    assert done.sum() >= 2  # Pendulum-v1 truncates every 200 steps
    assert np.all(np.sign(scaled) == np.sign(raw_reward))  # no mean shift


def test_time_feature_counts_elapsed_fraction_of_the_limit():
    raw_env, env_params = envs.make("Pendulum-v1")
    env = envs.AddTimeFeature(raw_env, int(env_params.max_steps_in_episode))
    first, (obs, _, done, final) = run_stream(env, env_params, 450)
    assert env.observation_space(env_params).shape == (4,)
    assert first[-1] == -0.5
    limit = env_params.max_steps_in_episode
    elapsed = 0
    for t in range(450):
        elapsed += 1
        np.testing.assert_allclose(final[t, -1], elapsed / limit - 0.5, atol=1e-6)
        if done[t]:
            assert elapsed == limit and abs(final[t, -1] - 0.5) < 1e-6
            elapsed = 0
        np.testing.assert_allclose(obs[t, -1], elapsed / limit - 0.5, atol=1e-6)


def test_random_walk_true_values():
    env, env_params = envs.make("RandomWalk-v0")
    # γ = 1: the classic answer, v(s) = (s + 1) / 10 - 1 for the 19-state walk.
    np.testing.assert_allclose(env.true_values(1.0), np.arange(1, 20) / 10 - 1, atol=1e-10)
    # γ < 1: the linear solve agrees with iterative policy evaluation, a plain loop.
    gamma, values = 0.99, np.zeros(19)
    for _ in range(20_000):
        new = np.zeros(19)
        for s in range(19):
            left = -1.0 if s == 0 else gamma * values[s - 1]
            right = 1.0 if s == 18 else gamma * values[s + 1]
            new[s] = 0.5 * left + 0.5 * right
        values = new
    np.testing.assert_allclose(env.true_values(gamma), values, atol=1e-8)
    obs, state = env.reset(jax.random.PRNGKey(0), env_params)
    assert obs.argmax() == 9 and obs.sum() == 1
