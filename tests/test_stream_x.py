"""stream-x: ObGD and its traces against hand computations and a plain loop, sparse init counts, the
parameter-free LayerNorm, TD errors at termination/truncation, runs, errors, determinism, learning."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runlog
from algorithms import stream_x

TINY = ["--total-timesteps", "600", "--num-log-rows", "3", "--quiet"]


# ----------------------------------------------------------------------------------------------------
# ObGD


def test_obgd_step_size_is_alpha_over_m_when_m_exceeds_one():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    traces = jax.tree.map(jnp.zeros_like, params)
    grads = {"w": jnp.array([0.3, -0.4]), "b": jnp.array(0.3)}
    lr, kappa, delta = 1.0, 2.0, -3.0
    # By hand: ||z||_1 = 0.3 + 0.4 + 0.3 = 1.0; δ̄ = max(|δ|, 1) = 3; M = α κ δ̄ ||z||_1 = 6 > 1 -> α/6.
    new, new_traces, step_size = stream_x.obgd_update(params, traces, grads, delta, lr, kappa, 0.5, False)
    assert math.isclose(float(step_size), 1.0 / 6.0, rel_tol=1e-6)
    np.testing.assert_allclose(new["w"], [1.0 + (-3.0) * 0.3 / 6.0, -2.0 + (-3.0) * (-0.4) / 6.0], rtol=1e-6)
    np.testing.assert_allclose(new["b"], 0.5 + (-3.0) * 0.3 / 6.0, rtol=1e-6)
    np.testing.assert_allclose(new_traces["w"], grads["w"])


def test_obgd_step_size_is_alpha_when_m_is_at_most_one():
    params = {"w": jnp.array([1.0, 1.0])}
    grads = {"w": jnp.array([0.05, -0.05])}
    # ||z||_1 = 0.1; |δ| = 0.5 -> δ̄ = 1; M = 0.5 * 2 * 1 * 0.1 = 0.1 <= 1: the step is α itself.
    new, _, step_size = stream_x.obgd_update(params, {"w": jnp.zeros(2)}, grads, 0.5, 0.5, 2.0, 0.9, False)
    assert math.isclose(float(step_size), 0.5, rel_tol=1e-6)
    np.testing.assert_allclose(new["w"], [1.0 + 0.5 * 0.5 * 0.05, 1.0 - 0.5 * 0.5 * 0.05], rtol=1e-6)


def test_obgd_traces_decay_by_gamma_lambda_and_reset_after_the_update():
    params, traces = {"w": jnp.zeros(3)}, {"w": jnp.array([1.0, 2.0, -1.0])}
    grads = {"w": jnp.array([0.1, 0.0, 0.2])}
    decay = 0.99 * 0.8
    _, kept, _ = stream_x.obgd_update(params, traces, grads, 0.0, 1.0, 2.0, decay, False)
    np.testing.assert_allclose(kept["w"], decay * traces["w"] + grads["w"], rtol=1e-6)
    # At an episode end the update still uses the decayed trace, then the trace is zeroed.
    new, reset, step_size = stream_x.obgd_update(params, traces, grads, 1.0, 1.0, 2.0, decay, True)
    np.testing.assert_allclose(new["w"], step_size * (decay * traces["w"] + grads["w"]), rtol=1e-6)
    np.testing.assert_array_equal(reset["w"], 0.0)


def test_obgd_matches_a_plain_loop_over_a_stream():
    rng = np.random.default_rng(0)
    steps, size, lr, kappa, decay = 30, 5, 1.0, 2.0, 0.99 * 0.8
    grads = rng.normal(size=(steps, size)).astype(np.float32)
    deltas = rng.normal(scale=2.0, size=steps).astype(np.float32)
    resets = rng.random(steps) < 0.15

    def step(carry, inputs):
        params, traces = carry
        g, d, r = inputs
        params, traces, _ = stream_x.obgd_update(params, traces, g, d, lr, kappa, decay, r)
        return (params, traces), params

    _, ours = jax.lax.scan(step, (jnp.zeros(size), jnp.zeros(size)), (grads, deltas, resets))
    w, z, expected = np.zeros(size), np.zeros(size), []
    for t in range(steps):
        z = decay * z + grads[t]
        m = lr * kappa * max(abs(deltas[t]), 1.0) * np.abs(z).sum()
        alpha = lr / m if m > 1 else lr
        w = w + alpha * deltas[t] * z
        if resets[t]:
            z = np.zeros(size)
        expected.append(w)
    np.testing.assert_allclose(ours, np.array(expected), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Network


@pytest.mark.parametrize("shape", [(10, 32), (37, 5), (3, 3, 4, 16), (1, 8)])
def test_sparse_init_zeroes_exactly_ceil_sparsity_fan_in_inputs_per_unit(shape):
    weights = np.asarray(stream_x.sparse_init(0.9)(jax.random.PRNGKey(1), shape))
    fan_in = math.prod(shape[:-1])
    per_unit = weights.reshape(fan_in, shape[-1])
    zeros = (per_unit == 0).sum(axis=0)
    np.testing.assert_array_equal(zeros, math.ceil(0.9 * fan_in))
    assert np.abs(weights).max() <= 1.0 / math.sqrt(fan_in)
    if shape[-1] > 4 and fan_in > math.ceil(0.9 * fan_in):  # the zeroed inputs differ between units
        assert len({tuple(np.flatnonzero(per_unit[:, j] == 0)) for j in range(shape[-1])}) > 1


def test_network_has_sparse_layers_and_a_parameter_free_layer_norm_over_the_whole_tensor():
    net = stream_x.StreamNetwork(num_outputs=3, hidden_size=16, num_layers=1, conv=True, sparsity=0.9)
    obs = jax.random.bernoulli(jax.random.PRNGKey(0), 0.3, (10, 10, 4)).astype(jnp.float32)
    params = net.init(jax.random.PRNGKey(1), obs)
    # Only the conv and Dense layers hold parameters (no LayerNorm scale or bias); biases start at 0.
    names = sorted(params["params"])
    assert names == ["Conv3x3_0", "Dense_0", "Dense_1"], names
    assert all(np.all(np.asarray(p["bias"]) == 0) for p in params["params"].values())
    conv_out = stream_x.Conv3x3(16, stream_x.sparse_init(0.9)).apply({"params": params["params"]["Conv3x3_0"]}, obs)
    normed = stream_x.layer_norm(conv_out)
    # Normalized over all 8*8*16 features together, not per channel or per position.
    x = np.asarray(conv_out, np.float64)
    np.testing.assert_allclose(normed, (x - x.mean()) / np.sqrt(x.var() + 1e-5), rtol=1e-4, atol=1e-5)
    assert np.asarray(normed).reshape(-1, 16).mean(0).std() > 1e-3
    # Conv3x3 is the VALID 3x3 convolution.
    reference = jax.lax.conv_general_dilated(obs[None], params["params"]["Conv3x3_0"]["kernel"], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    np.testing.assert_allclose(conv_out, reference, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# TD errors


@pytest.mark.parametrize("terminated,truncated", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("bootstrap_truncation", [True, False])
def test_td_error_at_termination_and_truncation(terminated, truncated, bootstrap_truncation):
    t = stream_x.Transition(None, 0, jnp.float32(0.7), jnp.bool_(terminated), jnp.bool_(truncated), None)
    delta = float(stream_x.td_error(t, 2.0, 5.0, 0.9, bootstrap_truncation))
    bootstraps = not terminated and (not truncated or bootstrap_truncation)
    expected = 0.7 + (0.9 * 5.0 if bootstraps else 0.0) - 2.0
    assert math.isclose(delta, expected, rel_tol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Runs, outputs, errors (resume and sweeps: tests/test_resume_sweep.py)


@pytest.mark.parametrize("preset", list(stream_x.PRESETS))
def test_every_preset_runs(preset, tmp_path):
    returned = stream_x.main(["--preset", preset, *TINY, "--run-dir", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["preset"] == preset and summary["env_steps"] == 600 == returned["env_steps"]
    for name in ("config.json", "progress.csv", "metrics_seed0.csv", "curve.png", "checkpoint.msgpack"):
        assert (tmp_path / name).exists(), name
    if preset == "td":
        assert len(summary["final_rms_error"]) == 1 and np.isfinite(summary["final_rms_error"][0])


def test_determinism_and_seed_independence():
    config = stream_x.Config(total_timesteps=2000, num_log_rows=4)
    train = jax.jit(runlog.vmap_seeds(stream_x.make_train(config)))
    _, first = train(runlog.seed_keys(0, 2))
    _, second = train(runlog.seed_keys(0, 2))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert not np.array_equal(first["abs_td_error"][0], first["abs_td_error"][1])


def test_checkpoint_holds_parameters_traces_and_normalizer(tmp_path):
    stream_x.main(["--preset", "pendulum-ac", *TINY, "--run-dir", str(tmp_path)])
    checkpoint = runlog.load_checkpoint(tmp_path / "checkpoint.msgpack")
    assert set(checkpoint) == {"params", "traces", "env_state"}
    assert set(checkpoint["params"]) == {"actor", "critic"}
    flat = jax.tree_util.tree_flatten_with_path(checkpoint["env_state"])[0]
    paths = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
    assert any("obs_stats" in p and "mean" in p for p in paths), paths
    assert any("return_stats" in p for p in paths), paths


@pytest.mark.parametrize("flags,message", [
    (["--env-id", "Pendulum-v1"], "--learner ac"),
    (["--preset", "td", "--env-id", "CartPole-v1"], "RandomWalk-v0"),
    (["--preset", "td", "--scale-rewards"], "--no-scale-rewards"),
    (["--network", "cnn"], "--network mlp"),
    (["--preset", "minatar-q", "--time-feature"], "--no-time-feature"),
    (["--sweep", "gamma=0.9,0.99"], "cannot be swept"),
    (["--sweep", "lr=a,b"], "numbers"),
    (["--td-lambda", "1.5"], "td_lambda"),
    (["--env-id", "CartPoel-v1"], "CartPole-v1"),
])
def test_bad_input_fails_before_compiling_with_the_fix(flags, message):
    config = runlog.parse_config(stream_x.Config, stream_x.PRESETS, flags)
    with pytest.raises((ValueError, TypeError), match=message.replace("-", r"\-")):
        stream_x.make_train(config)


# ----------------------------------------------------------------------------------------------------
# Learning


def run_final(flags):
    config = runlog.parse_config(stream_x.Config, stream_x.PRESETS, [*flags, "--quiet"])
    _, metrics = jax.jit(runlog.vmap_seeds(stream_x.make_train(config)))(
        runlog.seed_keys(config.seed, config.num_seeds))
    return stream_x.final_training_return(jax.tree.map(np.asarray, metrics)), metrics


@pytest.mark.slow
def test_stream_q_learns_cartpole_within_100k_steps():
    # The claim: the mean return of 4 seeds reaches 400 within 1e5 steps. Also asserted, and stronger:
    # the final return (last 10% of the run) averaged over 8 seeds is >= 400 (16 seeds measured: mean 450,
    # 13 of 16 at >= 436; a single 4-seed mean of the final return ranges from ~390 to 500).
    final, metrics = run_final(["--preset", "cartpole-q", "--total-timesteps", "100000", "--num-seeds", "8"])
    four_seed_curve = runlog.nanmean_quiet(np.asarray(metrics["episode_return"])[:4], axis=0)
    assert np.nanmax(four_seed_curve) >= 400, four_seed_curve
    assert final.mean() >= 400, final


@pytest.mark.slow
def test_stream_ac_learns_pendulum_within_200k_steps():
    final, _ = run_final(["--preset", "pendulum-ac", "--total-timesteps", "200000", "--num-seeds", "4"])
    assert final.mean() >= -700, final  # a random policy gets about -1200


@pytest.mark.slow
def test_stream_td_rms_error_falls_on_the_random_walk():
    _, metrics = run_final(["--preset", "td", "--num-seeds", "4"])
    rms = np.asarray(metrics["rms_error"])
    assert rms[:, 0].mean() > 0.25  # before learning: about the RMS of the true values
    assert rms[:, -1].mean() < 0.15, rms[:, -1]
