"""The environment layer: ids, space errors and the wrappers (gymnax side; brax has its own file)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs


def rollout(env, params, actions, key=jax.random.PRNGKey(0)):
    """Step one env through `actions`; return per-step (reward, terminated, truncated, info) as numpy."""
    obs, state = env.reset(key, params)
    step = jax.jit(env.step)
    out = []
    for t, action in enumerate(actions):
        obs, state, reward, terminated, truncated, info = step(jax.random.fold_in(key, t), state, action, params)
        out.append(jax.tree.map(np.asarray, (reward, terminated, truncated, info)))
    return out


def test_unknown_id_lists_closest_ids():
    with pytest.raises(ValueError, match="CartPole-v1"):
        envs.make("CartPole-v0")
    with pytest.raises(ValueError, match="brax/hopper"):
        envs.make("brax/hoper")


def test_every_gymnax_id_is_known():
    assert "Breakout-MinAtar" in envs.known_env_ids() and "brax/halfcheetah" in envs.known_env_ids()


def test_space_errors_name_the_space_and_the_alternative():
    env, params = envs.make("Pendulum-v1")
    with pytest.raises(envs.ConfigError, match=r"Box\(shape=\(1,\)\).*SAC"):
        envs.require_discrete_actions(env, params, "Pendulum-v1", "PQN", "SAC")
    env, params = envs.make("CartPole-v1")
    assert envs.require_discrete_actions(env, params, "CartPole-v1", "PQN", "SAC") == 2
    with pytest.raises(envs.ConfigError, match=r"Discrete\(2\).*PQN"):
        envs.require_continuous_actions(env, params, "CartPole-v1", "SAC", "PQN")


def test_episode_statistics_report_only_finished_episodes():
    env, params = envs.make("CartPole-v1")
    env = envs.EpisodeStatistics(env)
    actions = np.random.default_rng(0).integers(0, 2, size=300)
    steps = rollout(env, params, actions)
    # Plain Python bookkeeping of the same stream.
    expected, running, length = [], 0.0, 0
    for reward, terminated, truncated, info in steps:
        running += float(reward)
        length += 1
        if terminated or truncated:
            expected.append((running, length))
            running, length = 0.0, 0
        else:
            assert info["episode_return"] == 0 and not info["episode_done"]
    reported = [(float(i["episode_return"]), int(i["episode_length"])) for *_, i in steps if i["episode_done"]]
    assert len(expected) > 5 and reported == expected
    done = jnp.array([bool(i["episode_done"]) for *_, i in steps])
    returns = jnp.array([float(i["episode_return"]) for *_, i in steps])
    assert np.isclose(envs.mean_over_finished(returns, done), np.mean([r for r, _ in expected]))
    assert np.isnan(envs.mean_over_finished(returns[:1], done[:1] & False))


def test_truncation_keeps_final_observation():
    env, params = envs.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=5)
    obs, state = env.reset(jax.random.PRNGKey(1), params)
    for t in range(5):
        prev_state = state
        obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(t), state, 0, params)
    assert bool(truncated) and not bool(terminated)
    # The final observation is the state reached by the last action, not the reset obs returned.
    expected, *_ = env.step_env(jax.random.PRNGKey(9), prev_state, 0, params)
    np.testing.assert_allclose(info["final_observation"], expected)
    assert not np.allclose(info["final_observation"], obs)


def test_flatten_observation_minatar():
    env, params = envs.make("Breakout-MinAtar")
    flat = envs.FlattenObservation(env)
    assert flat.observation_space(params).shape == (400,)
    obs, state = flat.reset(jax.random.PRNGKey(0), params)
    obs, state, *_, info = flat.step(jax.random.PRNGKey(1), state, 0, params)
    assert obs.shape == (400,) and info["final_observation"].shape == (400,)


def test_clip_action_matches_clipped_input():
    env, params = envs.make("Pendulum-v1")
    clipped = envs.ClipAction(env)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    key = jax.random.PRNGKey(1)
    out_big = clipped.step(key, state, jnp.array([50.0]), params)
    out_max = env.step(key, state, jnp.array([2.0]), params)
    np.testing.assert_allclose(out_big[0], out_max[0])
    np.testing.assert_allclose(out_big[2], out_max[2])


def test_sticky_actions():
    env, params = envs.make("Breakout-MinAtar")
    always = envs.StickyActions(env, 1.0)
    never = envs.StickyActions(env, 0.0)
    key = jax.random.PRNGKey(0)
    _, state_always = always.reset(key, params)
    _, state_never = never.reset(key, params)
    for t in range(5):
        k = jax.random.fold_in(key, t)
        _, state_always, *_ = always.step(k, state_always, 2, params)
        _, state_never, *_ = never.step(k, state_never, 2, params)
    assert int(state_always.last_action) == 0  # p = 1 repeats the initial no-op forever
    assert int(state_never.last_action) == 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        envs.StickyActions(env, 1.5)
    # p = 0.5: roughly half of the steps execute the previous action.
    half = envs.StickyActions(env, 0.5)
    _, state = half.reset(key, params)
    repeats = 0
    step = jax.jit(half.step)
    for t in range(400):
        action = t % 3
        _, new_state, *_ = step(jax.random.fold_in(key, t), state, action, params)
        repeats += int(new_state.last_action) != action
        state = new_state
    assert 100 < repeats < 260  # repeats that happen to equal the chosen action are not counted


# MNISTBandit downloads MNIST when it is built; no test here depends on the network.
NEEDS_DOWNLOAD = {"MNISTBandit-bsuite"}


@pytest.mark.slow
def test_every_gymnax_id_builds_and_steps_with_the_common_interface():
    import gymnax

    for env_id in sorted(set(gymnax.registered_envs) - NEEDS_DOWNLOAD):
        env, params = envs.make(env_id)
        obs, state = env.reset(jax.random.PRNGKey(0), params)
        action = env.action_space(params).sample(jax.random.PRNGKey(1))
        obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(2), state, action, params)
        assert info["final_observation"].shape == obs.shape, env_id
        assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_, env_id


def test_discounted_reward_sums_to_the_discounted_return():
    """DiscountedReward's rewards add up to sum_t γ^t r_t of the same trajectory (a plain loop)."""
    env, params = envs.make("Pendulum-v1")
    discounted = envs.DiscountedReward(env, 0.9)
    key = jax.random.PRNGKey(0)
    _, plain_state = env.reset(key, params)
    _, state = discounted.reset(key, params)
    expected = total = 0.0
    for t in range(20):
        action = jnp.array([np.sin(t)])
        step_key = jax.random.fold_in(key, t)
        _, plain_state, reward, *_ = env.step(step_key, plain_state, action, params)
        _, state, discounted_reward, *_ = discounted.step(step_key, state, action, params)
        expected += 0.9**t * float(reward)
        total += float(discounted_reward)
    assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_minatar_without_time_limit_keeps_the_games_own_episode_ends():
    """time_limit=False: gymnax's cap is gone (the caller's params cannot bring it back), Freeway ends by
    termination when the original game's 2500-frame clock runs out (step 2501); the default is unchanged."""
    capped, capped_params = envs.make("Breakout-MinAtar")
    uncapped, uncapped_params = envs.make("Breakout-MinAtar", time_limit=False)
    assert capped_params.max_steps_in_episode == 1000  # every other caller keeps gymnax's limit
    assert uncapped_params.max_steps_in_episode == envs.wrappers.NO_TIME_LIMIT
    # Five no-op steps (the ball is still falling): a 5-step limit truncates the capped env only.
    short = capped_params.replace(max_steps_in_episode=5)
    *_, (_, terminated, truncated, info) = rollout(capped, short, [0] * 5)
    assert truncated and not terminated and info["truncated"]
    steps = rollout(uncapped, short, [0] * 5)
    assert not any(t or tr or i["truncated"] for _, t, tr, i in steps)

    freeway, freeway_params = envs.make("Freeway-MinAtar", time_limit=False)
    assert freeway_params.max_steps_in_episode == 2501 and envs.make("Freeway-MinAtar")[1].max_steps_in_episode == 2500
    _, state = freeway.reset(jax.random.PRNGKey(0), freeway_params)

    def step(state, key):
        _, state, _, terminated, truncated, _ = freeway.step(key, state, 1, freeway_params)
        return state, (terminated, truncated)

    _, (terminated, truncated) = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(1), 2502))
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(terminated)), [2500])  # the 2501st step
    assert not np.asarray(truncated).any()
    with pytest.raises(ValueError, match="MinAtar ids"):
        envs.make("CartPole-v1", time_limit=False)
