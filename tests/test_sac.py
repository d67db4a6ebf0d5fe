"""SAC: the equations against plain computations, the replay buffer and normalizer, runs, learning."""

import dataclasses

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs
import runner
import runlog
from algorithms import sac

TINY = ["--total-timesteps", "600", "--learning-starts", "300", "--batch-size", "32", "--hidden-size", "32",
        "--num-evals", "1", "--quiet"]


# ----------------------------------------------------------------------------------------------------
# Equations


def test_squashed_gaussian_log_density_matches_change_of_variables():
    """log π(a) = Σ_i [log N(u_i; μ_i, σ_i) - log(1 - tanh(u_i)²)], computed in float64 from the same u,
    including actions within 1e-6 of ±1."""
    mean = jnp.array([[0.0, 0.5, -1.0], [6.0, -7.0, 3.0], [2.0, 9.0, -9.5]])
    log_std = jnp.array([[0.0, -1.0, 0.5], [-2.0, -3.0, -1.0], [0.3, -4.0, -5.0]])
    key = jax.random.PRNGKey(0)
    action, log_prob = sac.squashed_gaussian(mean, log_std).sample_and_log_prob(seed=key)
    u = np.asarray(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)).sample(seed=key), dtype=np.float64)
    m, s = np.asarray(mean, np.float64), np.exp(np.asarray(log_std, np.float64))
    gaussian = -0.5 * ((u - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    expected = (gaussian - np.log(1.0 - np.tanh(u) ** 2)).sum(-1)
    assert np.abs(np.asarray(action)).max() > 1 - 1e-6  # the check reaches the edge of the box
    np.testing.assert_allclose(np.tanh(u), action, atol=1e-6)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-3)
    assert np.isfinite(np.asarray(log_prob)).all()


@pytest.mark.parametrize("entropy_above_target", [True, False])
def test_temperature_moves_toward_the_entropy_target(entropy_above_target):
    target_entropy = -2.0
    # log π = -entropy; entropy 1.0 is above -2, entropy -5.0 below.
    log_prob = jnp.full(64, -1.0 if entropy_above_target else 5.0)
    log_alpha = jnp.float32(0.0)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(log_alpha)
    grad = jax.grad(sac.temperature_loss)(log_alpha, log_prob, target_entropy)
    updates, _ = optimizer.update(grad, opt_state)
    new_log_alpha = optax.apply_updates(log_alpha, updates)
    if entropy_above_target:
        assert new_log_alpha < log_alpha  # less entropy bonus needed
    else:
        assert new_log_alpha > log_alpha


@pytest.mark.slow
def test_target_entropy_flag_reaches_the_temperature_loss():
    """--target-entropy-per-action-dim -0.5 on Pendulum (|A| = 1) is the same run as --target-entropy -0.5, bit for
    bit (the same float reaches the same loss), and a different run from the paper's default -|A|."""
    def alphas(flags):
        config = runner.parse_config(sac.Config, sac.PRESETS, TINY + flags)
        _, metrics = jax.jit(sac.make_train(config))(jax.random.PRNGKey(0))
        return np.asarray(metrics["alpha"])

    per_dim, absolute, default = (alphas(["--target-entropy-per-action-dim", "-0.5"]),
                                  alphas(["--target-entropy", "-0.5"]), alphas([]))
    np.testing.assert_array_equal(per_dim, absolute)
    learning = np.isfinite(default)
    assert learning.any() and not np.array_equal(per_dim[learning], default[learning])


@pytest.mark.slow
def test_critic_layer_norm_reaches_the_critics():
    """--critic-layer-norm (brax's q_network_layer_norm, in the dmc-cheetah preset) puts a LayerNorm after each
    hidden ReLU of both critics and changes their losses."""
    critic = sac.TwinCritic(8, 2, True)
    params = critic.init(jax.random.PRNGKey(0), jnp.zeros(3), jnp.zeros(1))["params"]
    assert {"LayerNorm_0", "LayerNorm_1"} <= set(params) and params["LayerNorm_0"]["scale"].shape == (2, 8)
    assert sac.PRESETS["dmc-cheetah"].critic_layer_norm and not sac.Config().critic_layer_norm

    def critic_losses(flags):
        config = runner.parse_config(sac.Config, sac.PRESETS, TINY + flags)
        _, metrics = jax.jit(sac.make_train(config))(jax.random.PRNGKey(0))
        return np.asarray(metrics["critic_loss"])

    plain, normed = critic_losses([]), critic_losses(["--critic-layer-norm"])
    learning = np.isfinite(plain)
    assert learning.any() and not np.allclose(plain[learning], normed[learning])


@pytest.mark.parametrize("preset", list(sac.PRESETS))
def test_brax_presets_use_brax_target_entropy(preset):
    """brax's sac/losses.py: H_target = -0.5 |A|; the paper's -|A| elsewhere; --target-entropy overrides both."""
    config = sac.PRESETS[preset]
    expected = -0.5 * 6 if preset.startswith(("brax-", "dmc-")) else -6.0
    assert sac.entropy_target(config, 6) == expected
    assert sac.entropy_target(dataclasses.replace(config, target_entropy=-2.0), 6) == -2.0


def test_critic_targets_truncation_bootstraps_termination_does_not():
    reward = jnp.array([1.0, 1.0, 1.0, 2.0])
    terminated = jnp.array([0.0, 1.0, 0.0, 1.0])  # step 2 was truncated: not terminated, still bootstraps
    next_q_min = jnp.array([10.0, 10.0, -3.0, 4.0])
    next_log_prob = jnp.array([-1.0, -1.0, 0.5, 0.0])
    alpha, gamma = 0.2, 0.99
    ours = sac.critic_targets(reward, terminated, next_q_min, next_log_prob, alpha, gamma)
    expected = []
    for r, term, q, logp in zip(reward.tolist(), terminated.tolist(), next_q_min.tolist(), next_log_prob.tolist()):
        expected.append(r if term else r + gamma * (q - alpha * logp))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


TWIN_CRITIC = sac.TwinCritic


def test_critic_targets_take_the_min_of_the_twin_target_critics(monkeypatch):
    """The target uses min_i Q̄_i (clipped double Q): with twin critics that answer +1 and -1 everywhere, every
    target the update computes is built from -1 (the max would give +1, either critic alone a constant)."""
    import flax.linen as nn

    class OneHighOneLow(nn.Module):
        hidden_size: int
        num_layers: int
        layer_norm: bool = False

        @nn.compact
        def __call__(self, obs, action):
            q = TWIN_CRITIC(self.hidden_size, self.num_layers, self.layer_norm)(obs, action)  # [2, ...]
            return 0.0 * q + jnp.array([1.0, -1.0]).reshape(2, *[1] * (q.ndim - 1))

    seen = []
    real_targets = sac.critic_targets

    def recording_targets(reward, terminated, next_q_min, *args):
        jax.debug.callback(lambda values: seen.append(np.asarray(values)), next_q_min)
        return real_targets(reward, terminated, next_q_min, *args)

    monkeypatch.setattr(sac, "TwinCritic", OneHighOneLow)
    monkeypatch.setattr(sac, "critic_targets", recording_targets)
    config = runner.parse_config(sac.Config, sac.PRESETS, TINY)
    jax.block_until_ready(jax.jit(sac.make_train(config))(jax.random.PRNGKey(0)))
    jax.effects_barrier()
    assert seen and all(np.all(values == -1.0) for values in seen), seen[:1]


# ----------------------------------------------------------------------------------------------------
# Replay buffer and normalizer


def test_ring_buffer_overwrites_oldest_and_samples_only_filled_part():
    capacity = 5
    data = sac.Transition(jnp.zeros((capacity, 1)), jnp.zeros((capacity, 1)), jnp.zeros(capacity),
                          jnp.zeros(capacity, bool), jnp.zeros((capacity, 1)))
    buffer = sac.Buffer(data, jnp.int32(0), jnp.int32(0))

    def batch(values):
        values = jnp.asarray(values, jnp.float32)
        return sac.Transition(values[:, None], values[:, None], values, values > 100, values[:, None])

    buffer = sac.buffer_add(buffer, batch([1, 2, 3]))
    assert int(buffer.size) == 3 and int(buffer.position) == 3
    sample = sac.buffer_sample(buffer, jax.random.PRNGKey(0), 200)
    assert set(np.asarray(sample.reward).tolist()) == {1.0, 2.0, 3.0}
    buffer = sac.buffer_add(buffer, batch([4, 5, 6, 7]))
    assert int(buffer.size) == 5 and int(buffer.position) == 2
    np.testing.assert_array_equal(buffer.data.reward, [6, 7, 3, 4, 5])  # 1 and 2 were the oldest


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    stream = rng.normal(3.0, 2.0, size=(40, 5, 3))
    stats = sac.RunningStats(jnp.float32(1e-4), jnp.zeros(3), jnp.ones(3))
    for batch in stream:
        stats = sac.update_stats(stats, jnp.asarray(batch, jnp.float32))
    flat = stream.reshape(-1, 3)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats.var, flat.var(0), rtol=1e-3)


# ----------------------------------------------------------------------------------------------------
# Runs, errors, determinism, checkpoint


@pytest.mark.slow
def test_run_outputs_and_checkpoint_with_normalizer(tmp_path):
    run_dir = tmp_path / "run"
    summary = sac.main([*TINY, "--num-seeds", "2", "--normalize-observations", "--run-dir", str(run_dir)])
    assert summary["num_seeds"] == 2 and len(summary["final_return"]) == 2
    assert np.isfinite(summary["final_return"]).all()
    raw = runlog.load_checkpoint(run_dir / "checkpoint.msgpack")
    stats = raw["obs_stats"]
    assert np.asarray(stats["mean"]).shape == (2, 3)  # per seed, per observation dimension
    assert np.all(np.asarray(stats["count"]) > 500)  # the normalizer saw the observations
    config = runner.parse_config(sac.Config, sac.PRESETS, [*TINY, "--num-seeds", "2", "--normalize-observations"])
    state_shape, _ = jax.eval_shape(jax.vmap(sac.make_train(config)), runner.seed_keys(0, 2))
    restored = runlog.load_checkpoint(run_dir / "checkpoint.msgpack", state_shape._asdict())
    np.testing.assert_array_equal(restored["obs_stats"].mean, stats["mean"])
    assert restored["critic"]["params"]["Dense_0"]["kernel"].shape == (2, 2, 4, 32)  # seeds x twin critics


@pytest.mark.slow
def test_same_seed_same_result():
    config = runner.parse_config(sac.Config, sac.PRESETS, TINY)
    train = jax.jit(sac.make_train(config))
    state_a, metrics_a = train(jax.random.PRNGKey(1))
    state_b, metrics_b = train(jax.random.PRNGKey(1))
    jax.tree.map(np.testing.assert_array_equal, state_a.actor, state_b.actor)
    np.testing.assert_array_equal(metrics_a["critic_loss"], metrics_b["critic_loss"])
    state_c, metrics_c = train(jax.random.PRNGKey(2))  # another seed is another run
    assert not np.array_equal(metrics_a["critic_loss"], metrics_c["critic_loss"])
    assert not np.array_equal(state_a.actor["params"]["Dense_0"]["kernel"], state_c.actor["params"]["Dense_0"]["kernel"])


# The brax locomotion presets compile for ~40-120 s each on 2 CPU cores: they are traced below (the whole run,
# abstractly: every shape and type, without compiling), to keep CI within its time (all four ran here until
# commit 09341aa; brax-hopper ran here, 129 s in CI, until scripts/evaluate.py's tests needed the time).
# pendulum and brax-inverted-pendulum run whole in the learning tests below.
@pytest.mark.parametrize("preset", ["mountaincar"])
@pytest.mark.slow
def test_preset_runs(preset, tmp_path):
    config = sac.PRESETS[preset]
    steps = str(config.num_envs * 4)
    summary = sac.main(["--preset", preset, "--total-timesteps", steps, "--learning-starts", str(config.num_envs * 2),
                        "--num-evals", "1", "--num-eval-envs", "2", "--quiet", "--run-dir", str(tmp_path / preset)])
    assert summary["preset"] == preset and np.isfinite(summary["final_return"]).all()


@pytest.mark.parametrize("preset", list(sac.PRESETS))
def test_every_preset_builds(preset):
    config = runner.parse_config(sac.Config, sac.PRESETS, ["--preset", preset])
    assert callable(sac.make_train(config))


@pytest.mark.slow
def test_brax_hopper_preset_traces_whole():
    """The brax-hopper run at tiny sizes, traced end to end (jax.eval_shape: no compile): metrics per row."""
    config = runner.parse_config(sac.Config, sac.PRESETS, [
        "--preset", "brax-hopper", "--total-timesteps", "512", "--learning-starts", "256", "--num-evals", "1",
        "--num-eval-envs", "2", "--quiet"])
    state, metrics = jax.eval_shape(sac.make_train(config), jax.random.PRNGKey(0))
    assert metrics["eval_return"].shape == (sac.derive_sizes(config).num_rows,)
    assert state.actor["params"]["Dense_0"]["kernel"].shape[0] == sac.make_env(config)[0].observation_space(
        sac.make_env(config)[1]).shape[0]


def test_target_critics_move_by_tau_toward_the_critics():
    """Polyak averaging, target <- τ critic + (1 - τ) target, at its two ends: τ = 1 makes the targets the trained
    critics exactly, τ = 0 keeps them where they started (the critics trained away from them). Swapped arguments
    (the targets moving by 1 - τ) fail both."""
    config = runner.parse_config(sac.Config, sac.PRESETS, TINY)
    train = jax.jit(lambda key, tau: runner.program_with(sac.make_train, config, {"tau": tau})(key))  # τ traced
    copied, frozen = (train(jax.random.PRNGKey(0), jnp.float32(tau))[0] for tau in (1.0, 0.0))
    jax.tree.map(np.testing.assert_array_equal, copied.target_critic, copied.critic)
    assert not np.array_equal(frozen.target_critic["params"]["Dense_0"]["kernel"],
                              frozen.critic["params"]["Dense_0"]["kernel"])


def test_discrete_env_points_to_pqn():
    with pytest.raises(envs.ConfigError, match=r"continuous.*CartPole-v1.*PQN"):
        sac.main(["--env-id", "CartPole-v1", "--quiet"])


def test_updates_per_step_must_give_whole_updates():
    with pytest.raises(ValueError, match="whole number"):
        sac.main(["--num-envs", "4", "--updates-per-env-step", "0.3", "--quiet"])


# ----------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
@pytest.mark.optimised
def test_pendulum_learns(tmp_path):
    """Pendulum-v1, 3 seeds, 10k env steps each, hidden layers of 64 units (the preset's 256 learn the same here
    at 16x the arithmetic): median final return >= -250 (random policy: about -1200). Measured on the 2-core CPU
    on 2026-12-07: -124, -125, -122 (37 s; seed 1: -175, -178, -177); with 256 units -123, -149, -125 (200 s).
    A seed can still dip to -680 around 6k steps, so the median, not the mean, carries the bar."""
    summary = sac.main(["--num-seeds", "3", "--total-timesteps", "10000", "--hidden-size", "64", "--quiet",
                        "--run-dir", str(tmp_path / "learn")])
    assert np.median(summary["final_return"]) >= -250, summary["final_return"]


@pytest.mark.slow
@pytest.mark.optimised
def test_brax_inverted_pendulum_learns(tmp_path):
    """brax inverted_pendulum within 40k env steps (the preset's 50k less a fifth) with hidden layers of 128 units
    (the preset's 256 cost twice the time), for the suite's time: final return >= 900 (the maximum is 1000).
    Measured on the 2-core CPU on 2026-12-07: 1000 with 128 units (seeds 0 and 1, 86 and 80 s, about 40 of them
    brax's compile) and with 256 (160 s); 64 units reach only 739 at 40k."""
    summary = sac.main(["--preset", "brax-inverted-pendulum", "--total-timesteps", "40000", "--hidden-size", "128",
                        "--quiet", "--run-dir", str(tmp_path / "ip")])
    assert np.mean(summary["final_return"]) >= 900, summary["final_return"]
