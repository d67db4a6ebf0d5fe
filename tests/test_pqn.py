"""PQN: λ-returns against the forward-view definition, runs, outputs, errors, determinism, learning."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runlog
from algorithms import pqn

TINY = ["--total-timesteps", "4096", "--num-evals", "2", "--quiet"]


# ----------------------------------------------------------------------------------------------------
# λ-returns


def forward_view_lambda_returns(rewards, terminated, done, next_q_max, gamma, lam):
    """The λ-return as the λ-weighted mix of n-step returns, one (t, env) at a time, in plain Python.

    From step t, the n-step returns run up to the step where the episode ends or the rollout ends
    (whichever comes first, m steps); past that every n-step return equals the m-step one, which so
    takes the remaining weight λ^(m-1).
    """
    T, N = rewards.shape
    out = np.zeros((T, N))
    for env in range(N):
        for t in range(T):
            m = 1
            while not done[t + m - 1, env] and t + m < T:
                m += 1

            def n_step(n):
                ret = sum(gamma**k * rewards[t + k, env] for k in range(n))
                last = t + n - 1
                return ret + gamma**n * (1 - terminated[last, env]) * next_q_max[last, env]

            mixed = (1 - lam) * sum(lam ** (n - 1) * n_step(n) for n in range(1, m))
            out[t, env] = mixed + lam ** (m - 1) * n_step(m)
    return out


@pytest.mark.parametrize("case", ["terminated", "truncated", "both"])
def test_lambda_returns_match_forward_view(case):
    rng = np.random.default_rng(0)
    T, N = 9, 3
    rewards = rng.normal(size=(T, N))
    next_q_max = rng.normal(size=(T, N))  # at an episode end: max_a Q(final observation)
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    if case in ("terminated", "both"):
        terminated[2, 0] = terminated[5, 1] = terminated[8, 2] = True
    if case in ("truncated", "both"):
        truncated[4, 0] = truncated[0, 2] = truncated[7, 1] = True
    done = terminated | truncated
    for gamma, lam in [(0.99, 0.95), (0.9, 0.0), (0.97, 1.0), (0.99, 0.65)]:
        ours = pqn.lambda_returns(
            jnp.asarray(rewards), jnp.asarray(terminated), jnp.asarray(done), jnp.asarray(next_q_max), gamma, lam
        )
        expected = forward_view_lambda_returns(rewards, terminated, done, next_q_max, gamma, lam)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_penultimate_step_bootstraps_from_its_own_next_state():
    # The reference's off-by-one used Q(s_T) for the penultimate target; with λ = 0 the target of step
    # T-2 must be r + γ max Q(s_{T-1}).
    rewards = jnp.zeros((3, 1))
    next_q_max = jnp.array([[1.0], [2.0], [3.0]])
    no = jnp.zeros((3, 1), bool)
    returns = pqn.lambda_returns(rewards, no, no, next_q_max, 0.5, 0.0)
    np.testing.assert_allclose(returns[:, 0], [0.5, 1.0, 1.5])


def test_conv3x3_is_a_valid_3x3_convolution():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 10, 10, 4))
    conv = nn.Conv(16, kernel_size=(3, 3), padding="VALID")
    params = conv.init(jax.random.PRNGKey(1), x)
    ours = pqn.Conv3x3(16).apply(params, x)  # same parameter names and shapes as nn.Conv
    assert ours.shape == (5, 8, 8, 16)
    np.testing.assert_allclose(ours, conv.apply(params, x), atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Runs and outputs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pqn") / "run"
    summary = pqn.main([*TINY, "--num-seeds", "2", "--run-dir", str(run_dir)])
    return run_dir, summary


def test_run_writes_all_outputs(tiny_run):
    run_dir, summary = tiny_run
    for name in ["config.json", "progress.csv", "metrics_seed0.csv", "metrics_seed1.csv", "summary.json",
                 "curve.png", "checkpoint.msgpack"]:
        assert (run_dir / name).stat().st_size > 0, name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for key in ["algorithm", "env_id", "preset", "num_seeds", "env_steps", "final_return", "compile_seconds",
                "train_seconds", "env_steps_per_second", "peak_memory_mb"]:
        assert key in on_disk, key
    assert on_disk["algorithm"] == "pqn" and on_disk["num_seeds"] == 2 and len(on_disk["final_return"]) == 2
    assert on_disk["env_steps"] == 4096 and all(np.isfinite(on_disk["final_return"]))
    assert json.loads((run_dir / "config.json").read_text())["env_id"] == "CartPole-v1"
    header = (run_dir / "metrics_seed0.csv").read_text().splitlines()[0].split(",")
    assert {"env_steps", "episode_return", "td_loss", "eval_return"} <= set(header)


def test_checkpoint_round_trip(tiny_run):
    run_dir, _ = tiny_run
    config = runlog.parse_config(pqn.Config, pqn.PRESETS, [*TINY, "--num-seeds", "2"])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state_shape, _ = jax.eval_shape(jax.vmap(pqn.make_train(config)), keys)
    target = {"params": state_shape.params, "opt_state": state_shape.opt_state}
    restored = runlog.load_checkpoint(run_dir / "checkpoint.msgpack", target)
    assert jax.tree.structure(restored) == jax.tree.structure(target)
    raw = runlog.load_checkpoint(run_dir / "checkpoint.msgpack")
    kernel = restored["params"]["params"]["Dense_0"]["kernel"]
    assert kernel.shape == (2, 4, 256)
    np.testing.assert_array_equal(kernel, raw["params"]["params"]["Dense_0"]["kernel"])
    # Save again and reload: identical bytes in, identical arrays out.
    runlog.save_checkpoint(run_dir / "again.msgpack", restored)
    again = runlog.load_checkpoint(run_dir / "again.msgpack", target)
    jax.tree.map(np.testing.assert_array_equal, again, restored)


def test_same_seed_same_result():
    config = runlog.parse_config(pqn.Config, pqn.PRESETS, TINY)
    train = jax.jit(pqn.make_train(config))
    (state_a, metrics_a) = train(jax.random.PRNGKey(3))
    (state_b, metrics_b) = train(jax.random.PRNGKey(3))
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
    np.testing.assert_array_equal(metrics_a["td_loss"], metrics_b["td_loss"])
    (state_c, _) = train(jax.random.PRNGKey(4))
    assert not np.array_equal(state_a.params["params"]["Dense_0"]["kernel"], state_c.params["params"]["Dense_0"]["kernel"])


@pytest.mark.parametrize("preset", list(pqn.PRESETS))
def test_every_preset_runs(preset, tmp_path):
    steps = "4096" if preset != "minatar" else "8192"
    summary = pqn.main(["--preset", preset, "--total-timesteps", steps, "--num-evals", "1", "--quiet",
                        "--run-dir", str(tmp_path / preset)])
    assert summary["preset"] == preset and np.isfinite(summary["final_return"]).all()


def test_minatar_preset_any_game(tmp_path):
    summary = pqn.main(["--preset", "minatar", "--env-id", "Asterix-MinAtar", "--total-timesteps", "4096",
                        "--num-evals", "1", "--quiet", "--run-dir", str(tmp_path / "asterix")])
    assert summary["env_id"] == "Asterix-MinAtar"


# ----------------------------------------------------------------------------------------------------
# Bad input: clear errors before compiling, outputs kept on NaN


def test_batch_that_does_not_divide():
    with pytest.raises(ValueError, match=r"num_envs \* num_steps .* must be divisible by num_minibatches"):
        pqn.main(["--num-minibatches", "7", "--quiet"])


def test_continuous_env_points_to_sac():
    with pytest.raises(TypeError, match=r"discrete action space.*Pendulum-v1.*SAC"):
        pqn.main(["--env-id", "Pendulum-v1", "--quiet"])


def test_unknown_env_id():
    with pytest.raises(ValueError, match="CartPole-v1"):
        pqn.main(["--env-id", "Cartpole-v1", "--quiet"])


def test_cnn_needs_images():
    with pytest.raises(ValueError, match="--network mlp"):
        pqn.main(["--network", "cnn", "--quiet"])


def test_unknown_preset():
    with pytest.raises(SystemExit, match="cartpole"):
        pqn.main(["--preset", "atari"])


def test_nan_loss_is_reported_and_outputs_are_kept(tmp_path):
    run_dir = tmp_path / "nan"
    with pytest.raises(SystemExit, match="NaN.*--lr"):
        pqn.main([*TINY, "--reward-scale", "nan", "--run-dir", str(run_dir)])
    assert (run_dir / "metrics_seed0.csv").exists() and (run_dir / "checkpoint.msgpack").exists()
    assert (run_dir / "summary.json").exists()


# ----------------------------------------------------------------------------------------------------
# Learning


@pytest.mark.slow
def test_cartpole_learns(tmp_path):
    """The authors' CartPole settings, 4 seeds, 5e5 steps each: mean final greedy return >= 475."""
    summary = pqn.main(["--num-seeds", "4", "--quiet", "--run-dir", str(tmp_path / "learn")])
    assert np.mean(summary["final_return"]) >= 475, summary["final_return"]
