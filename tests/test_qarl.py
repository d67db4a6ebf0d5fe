"""QARL: the self-paced curriculum (KL trust region, moves only on a batch that meets the return bound, toward
the target), the Gamma KL against numerical integration, the linear schedule, the authors' SAC settings (α
from 0.005, one update per 3 transitions, critic and actor start thresholds), temperatures reused in both
phases, RARL without a temperature feature, the evaluation models, runs of every preset, errors,
determinism, and learning on the pendulum preset with absolute floors."""

import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import envs
import runner
from algorithms import qarl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate  # noqa: E402  (scripts/evaluate.py)

# 2 iterations of 5 envs x 20 steps per phase: 100 transitions per phase and player.
TINY = ["--total-timesteps", "200", "--phase-steps", "20", "--num-envs", "5", "--learning-starts", "100",
        "--actor-starts", "150", "--batch-size", "32", "--hidden-size", "16", "--num-layers", "1",
        "--grid-points", "2", "--grid-episodes", "1", "--num-evals", "1", "--num-eval-envs", "2",
        "--final-eval-episodes", "2", "--curriculum-batch", "10", "--quiet"]
RATE, INITIAL, TARGET = 1000.0, 50.0, 1.0


# ----------------------------------------------------------------------------------------------------
# Self-paced curriculum


@pytest.mark.parametrize("p,q", [(50.0, 1.0), (3.0, 7.5), (1.0, 1.0), (20.0, 30.0)])
def test_gamma_kl_matches_numerical_integration(p, q):
    density_p, density_q = stats.gamma(p, scale=1 / RATE), stats.gamma(q, scale=1 / RATE)
    upper = density_p.ppf(1 - 1e-12)
    numeric, _ = integrate.quad(lambda x: density_p.pdf(x) * (density_p.logpdf(x) - density_q.logpdf(x)), 0, upper,
                                limit=200)
    assert abs(float(qarl.gamma_kl(p, q)) - numeric) < 1e-6 + 1e-4 * abs(numeric)


def draws(shape, n=30, seed=0):
    return jax.random.gamma(jax.random.PRNGKey(seed), shape, (n,)) / RATE


def update(shape, temperatures, returns, bound):
    return qarl.self_paced_update(jnp.float32(shape), temperatures, returns, RATE, TARGET, 0.5, bound, INITIAL)


def test_curriculum_does_not_move_on_a_batch_below_the_bound():
    shape = update(INITIAL, draws(INITIAL), jnp.full(30, -900.0), bound=-400.0)
    assert float(shape) == INITIAL


def test_curriculum_does_not_move_on_a_batch_below_the_bound_after_the_bound_was_met_once():
    moved = update(INITIAL, draws(INITIAL), jnp.full(30, -200.0), bound=-400.0)
    assert float(moved) < INITIAL  # the bound was met: k moved
    again = update(float(moved), draws(float(moved), seed=1), jnp.full(30, -900.0), bound=-400.0)
    assert float(again) == pytest.approx(float(moved))  # the current batch is below it: k stays


def test_curriculum_moves_toward_the_target_within_the_trust_region_when_the_bound_is_met():
    shape = jnp.float32(INITIAL)
    for step in range(12):
        new = update(float(shape), draws(float(shape), seed=step), jnp.full(30, -200.0), bound=-400.0)
        assert float(qarl.gamma_kl(new, shape)) <= 0.5 + 1e-4  # the trust region
        assert float(qarl.gamma_kl(new, TARGET)) < float(qarl.gamma_kl(shape, TARGET))  # toward the target
        shape = new
    assert float(shape) < 5.0  # from k = 50 to near the target k = 1 in a dozen steps


def test_curriculum_keeps_the_importance_weighted_return_above_the_bound():
    # Returns fall when the temperature is below 0.045: a lower-mean distribution would break the bound,
    # so the update may lower k only as far as the weighted return allows (before the trust region binds).
    temperatures = draws(INITIAL, n=400)
    returns = jnp.where(temperatures < 0.045, -600.0, -100.0)
    new = update(INITIAL, temperatures, returns, bound=-250.0)
    weights = np.exp(np.asarray(qarl.gamma_log_density(temperatures, new, RATE)
                                - qarl.gamma_log_density(temperatures, INITIAL, RATE)))
    assert np.sum(weights * np.asarray(returns)) / weights.sum() >= -250.0 - 1e-3
    assert float(new) < INITIAL  # it still moved
    unconstrained = update(INITIAL, temperatures, jnp.full(400, -100.0), bound=-250.0)
    assert float(unconstrained) < float(new)  # and the bound held it back


def test_curriculum_batch_is_whole_iterations_of_both_phases():
    sizes = lambda batch: qarl.derive_sizes(qarl.Config(curriculum_batch=batch)).curriculum_capacity  # noqa: E731
    assert sizes(30) == 30 and sizes(10) == 10 and sizes(25) == 30 and sizes(1) == 10  # 10 episodes per iteration


def test_linear_schedule_reaches_the_target_at_two_thirds_then_stays_flat():
    initial, target, iterations = 0.05, 0.001, 30
    temperature = [float(qarl.linear_temperature(i, iterations, initial, target)) for i in range(iterations)]
    assert temperature[0] == pytest.approx(initial)
    assert temperature[10] == pytest.approx(initial + (target - initial) / 2)  # halfway at 1/3
    assert all(np.diff(temperature[:21]) < 0)  # falling until 2/3 ...
    assert temperature[20:] == pytest.approx([target] * 10, rel=1e-5)  # ... then flat at the target (float32)


# ----------------------------------------------------------------------------------------------------
# Runs


@functools.lru_cache(maxsize=None)
def tiny_train(flags=()):
    """One jitted tiny run per flag set, compiled once and shared by the tests."""
    config = runner.parse_config(qarl.Config, qarl.PRESETS, [*TINY, *flags])
    return jax.jit(runner.vmap_seeds(qarl.make_train(config)))


def tiny_run(flags=()):
    return tiny_train(tuple(flags))(runner.seed_keys(0, 1))


@pytest.mark.slow
def test_learned_alpha_starts_at_0_005():
    for curriculum in ("self-paced", "rarl"):
        config = runner.parse_config(qarl.Config, qarl.PRESETS, [*TINY, "--curriculum", curriculum])
        state, _ = qarl.make_train(config).init(jax.random.PRNGKey(0))
        assert float(state.protagonist.log_alpha) == pytest.approx(-5.298, abs=1e-3)  # log 0.005, the authors' -5.30
        if curriculum == "rarl":
            assert float(state.adversary.log_alpha) == pytest.approx(-5.298, abs=1e-3)


def expected_updates(phases, per_step, steps, every, start):
    """Updates of one player: one per `every` transitions of each phase, once its buffer holds `start`."""
    size = count = 0
    for _ in range(phases):
        stored = 0
        for _ in range(steps):
            size += per_step
            if size >= start:
                count += (stored + per_step) // every - stored // every
            stored += per_step
    return count


@pytest.mark.slow
def test_one_gradient_update_per_three_transitions_from_the_critic_and_actor_thresholds():
    state, metrics = tiny_run(("--learning-starts", "50", "--actor-starts", "80"))
    for player in (state.protagonist, state.adversary):  # 2 phases each of 5 envs x 20 steps
        assert int(player.critic_updates[0]) == expected_updates(2, 5, 20, 3, 50) == 51
        assert int(player.actor_updates[0]) == expected_updates(2, 5, 20, 3, 80) == 41
    assert int(metrics["protagonist_updates"][0, -1]) == 51
    assert expected_updates(2, 5, 20, 3, 0) == 2 * (100 // 3)  # from the start: one per 3 transitions


@pytest.mark.slow
def test_temperature_reaches_both_players_observations_and_rewards_are_zero_sum():
    state, metrics = tiny_run()
    for buffer in (state.protagonist_buffer, state.adversary_buffer):
        feature = np.asarray(buffer.data.obs)[0, : int(buffer.size[0]), -1]  # α_adv itself (the raw feature)
        scaled = feature / (INITIAL / RATE)
        assert scaled.std() > 0.05 and 0.2 < scaled.mean() < 3.0  # α_adv / E[α_adv] of Gamma(50, 1000) draws
        np.testing.assert_array_equal(np.asarray(buffer.data.next_obs)[0, : int(buffer.size[0]), -1], feature)
    protagonist_rewards = np.asarray(state.protagonist_buffer.data.reward)[0, : int(state.protagonist_buffer.size[0])]
    adversary_rewards = np.asarray(state.adversary_buffer.data.reward)[0, : int(state.adversary_buffer.size[0])]
    assert (protagonist_rewards <= 0).all() and (adversary_rewards >= 0).all()  # Pendulum rewards are <= 0
    assert abs(float(metrics["temperature"][0, -1]) / (INITIAL / RATE) - 1.0) < 0.5


@pytest.mark.slow
def test_the_adversarys_force_reaches_the_environment():
    """The same run with the adversary's force scaled to nearly nothing (--max-force 1e-6): the first adversary
    phase (untrained players, the same keys) gets other returns, so the adversary's action moves the env; a
    wiring that dropped it would give identical returns. The protagonist-phase returns differ too."""
    _, metrics = tiny_run()
    _, weak = tiny_run(("--max-force", "1e-6"))
    for key in ("adversary_phase_return", "episode_return"):
        full, almost_none = float(metrics[key][0, 0]), float(weak[key][0, 0])
        assert abs(full - almost_none) > 1e-3 * abs(full), (key, full, almost_none)


@pytest.mark.slow
def test_temperatures_are_reused_in_both_phases_and_the_curriculum_sees_discounted_returns_of_both():
    state, metrics = tiny_run()
    temperatures = np.asarray(state.curriculum.temperatures[0])  # the last iteration's 10 episodes
    np.testing.assert_array_equal(temperatures[:5], temperatures[5:])  # adversary phase, then protagonist phase
    np.testing.assert_array_equal(temperatures[5:], np.asarray(state.temperature[0]))
    # the same temperatures in the stored transitions of both players' last phase (20 steps x 5 envs)
    for buffer in (state.protagonist_buffer, state.adversary_buffer):
        feature = np.asarray(buffer.data.obs)[0, 100:200, -1].reshape(20, 5)
        np.testing.assert_allclose(feature, np.tile(temperatures[5:], (20, 1)), rtol=1e-5)  # the raw feature
    returns = np.asarray(state.curriculum.returns[0])
    assert float(metrics["curriculum_return"][0, -1]) == pytest.approx(returns.mean(), rel=1e-5)
    # discounted (γ 0.99) Pendulum returns (rewards <= 0) are above the undiscounted ones of the same episodes
    assert returns[5:].mean() > float(metrics["episode_return"][0, -1])


@pytest.mark.slow
def test_determinism():
    _, first = tiny_run()
    _, second = tiny_run()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # another seed is another run (the seed reaches the envs, the networks and the temperatures)
    _, other = tiny_train(())(runner.seed_keys(1, 1))
    for key in ("episode_return", "temperature", "protagonist_critic_loss"):
        assert not np.array_equal(first[key], other[key], equal_nan=True), key


@pytest.mark.slow
def test_rarl_has_no_temperature_feature_and_learns_the_adversarys_alpha():
    state, metrics = tiny_run(("--curriculum", "rarl", "--actor-starts", "0"))
    obs_dim = 3  # Pendulum's cos θ, sin θ, θ dot: nothing appended
    assert np.asarray(state.protagonist_buffer.data.obs).shape[-1] == obs_dim
    assert np.asarray(state.adversary_buffer.data.obs).shape[-1] == obs_dim
    assert float(state.adversary.log_alpha[0]) != pytest.approx(np.log(0.005), abs=1e-6)  # tuned
    assert np.isfinite(np.asarray(metrics["adversary_alpha"])).all()
    assert int(state.adversary.actor_updates[0]) == expected_updates(2, 5, 20, 3, 100)  # from the critic's start


@pytest.mark.slow
def test_adversary_off_is_sac_without_a_temperature_feature():
    state, metrics = tiny_run(("--adversary", "off"))
    assert int(state.adversary_buffer.size[0]) == 0
    assert int(state.protagonist_buffer.size[0]) == 200
    assert np.asarray(state.protagonist_buffer.data.obs).shape[-1] == 3
    assert np.isnan(np.asarray(metrics["adversary_phase_return"])).all()


def test_grid_models_are_each_axis_alone_at_nominal_and_the_joint_grid():
    uset = envs.uncertainty_set("pendulum-2d")
    lines, grid = uset.axis_lines(11), np.asarray(uset.grid(11))
    assert lines.shape == (2, 11, 2) and grid.shape == (11, 11, 2)
    np.testing.assert_allclose(lines[0, :, 0], np.linspace(uset.low[0], uset.high[0], 11), rtol=1e-6)
    np.testing.assert_allclose(lines[0, :, 1], uset.nominal[1])  # the other axis at its nominal value
    np.testing.assert_allclose(lines[1, :, 0], uset.nominal[0])
    np.testing.assert_allclose(lines[1, :, 1], np.linspace(uset.low[1], uset.high[1], 11), rtol=1e-6)


# Runs of the classic presets; the brax presets are built (env, adversary, grid set, sizes) without
# compiling: a brax QARL program takes ~1.5 min to compile on 2 CPU cores, beyond CI's 30-minute budget.
@pytest.mark.parametrize("preset", ["pendulum", "cartpole"])
@pytest.mark.slow
def test_preset_runs(preset, tmp_path):
    flags = ["--preset", preset, *TINY, "--run-dir", str(tmp_path)]
    summary = qarl.main(flags)
    for name in ("config.json", "metrics_seed0.csv", "curve.png", "checkpoint.msgpack",
                 "grid.csv", "grid.png", "summary.json"):
        assert (tmp_path / name).exists(), name
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["grid_worst"] == summary["grid_worst"] and len(written["grid_average"]) == 1
    assert np.asarray(written["grid_axis_returns"]).shape == (1, 2, 2)  # seeds x axes x values
    for name in ("final_return", "return_vs_adversary", "final_return_deterministic"):
        assert np.isfinite(written[name]).all(), name
    rows = (tmp_path / "grid.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 ** 2  # header + the 2x2 grid
    # scripts/evaluate.py rebuilds the protagonist: the authors' final evaluation again, episodes, its grid
    report = evaluate.main([str(tmp_path), "--final-return", "--episodes", "2", "--grid", written_grid_set(tmp_path),
                            "--grid-points", "2", "--grid-steps", "20", "--out", str(tmp_path / "eval")])
    np.testing.assert_allclose(report["final_return"]["evaluated"], written["final_return"], rtol=1e-4, atol=1e-4)
    assert len(report["episodes"]["per_seed"][0]["returns"]) == 2
    # the grid's worst case and average are the minimum and mean of its cells, seed by seed
    cells = np.asarray(report["grid"]["grid_returns_per_seed"]).reshape(1, -1)
    np.testing.assert_allclose(report["grid"]["worst_per_seed"], cells.min(1), rtol=1e-6)
    np.testing.assert_allclose(report["grid"]["average_per_seed"], cells.mean(1), rtol=1e-5)
    assert (tmp_path / "eval" / "heatmap.png").exists()


def written_grid_set(run_dir):
    return json.loads((run_dir / "config.json").read_text())["grid_set"]


@pytest.mark.parametrize("preset", list(qarl.PRESETS))
@pytest.mark.slow
def test_every_preset_builds(preset):
    config = runner.parse_config(qarl.Config, qarl.PRESETS, ["--preset", preset])
    train = qarl.make_train(config)
    uset, _ = qarl.make_grid_evaluation(config)
    assert callable(train) and uset.env_id == config.env_id and uset.dim >= 1


@pytest.mark.parametrize("flags,message", [
    (["--env-id", "Acrobot-v1"], "continuous"),
    (["--grid-set", "hopper-2d"], "pendulum-2d"),
    (["--grid-set", "pendulum-9d"], "No uncertainty set"),
    (["--total-timesteps", "100"], "--total-timesteps"),
    (["--max-force", "-1"], "max_force"),
    (["--update-every", "0"], "update_every"),
])
def test_bad_input_fails_before_compiling_with_the_fix(flags, message):
    config = runner.parse_config(qarl.Config, qarl.PRESETS, flags)
    with pytest.raises(envs.ConfigError, match=message.replace("-", r"\-")):
        qarl.make_train(config)


# ----------------------------------------------------------------------------------------------------
# Learning: absolute floors against a do-nothing policy, and robustness against plain SAC, on the pendulum preset


def do_nothing_return(num_episodes=64):
    """Pendulum-v1's mean return under zero torque (the protagonist's floor)."""
    env, params = envs.make("Pendulum-v1")

    def episode(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)

        def step(carry, key):
            state, total = carry
            _, state, reward, _, _ = env.step(key, state, jnp.zeros(1), params)[:5]
            return (state, total + reward), None

        (_, total), _ = jax.lax.scan(step, (state, 0.0), jax.random.split(key_steps, 200))
        return total

    return float(jax.vmap(episode)(jax.random.split(jax.random.PRNGKey(0), num_episodes)).mean())


@pytest.mark.slow
@pytest.mark.optimised
def test_qarl_learns_the_pendulum_and_is_about_as_robust_as_sac(tmp_path):
    """The pendulum preset at 3e4 protagonist steps (30 of its 50 iterations; the curriculum's schedule follows
    the iteration count), QARL against plain SAC with the same protagonist steps and updates, 2 seeds. Floors: both beat the do-nothing policy
    (zero torque, about -1200 on 200-step episodes) by 600 in the final evaluation (20 stochastic episodes,
    no adversary); QARL's nominal return within 10% of SAC's; QARL's grid worst case within 150 of SAC's.
    Measured on the 2-core CPU with these 2 seeds at 5e4 steps: do-nothing -1183; final return -185, -154 (QARL) vs
    -170, -152 (SAC); against the trained adversary -146, -149 (QARL); grid worst -1163, -1260 vs -1332, -1246,
    average -398, -403 vs -391, -253 (the grid's worst models, heavy long pendulums, are ones no policy here swings
    up). At 3e4 steps (2026-12-07): final -165, -164 (QARL) vs -159, -161 (SAC); grid worst -1150, -1250 vs
    -1232, -1152."""
    floor = do_nothing_return()
    results = {}
    for adversary in ("on", "off"):
        results[adversary] = qarl.main(["--num-seeds", "2", "--adversary", adversary, "--total-timesteps", "30000",
                                        "--quiet",
                                        "--run-dir", str(tmp_path / adversary)])
    for adversary, result in results.items():
        assert min(result["final_return"]) >= floor + 600, (adversary, result["final_return"], floor)
    qarl_nominal, sac_nominal = np.mean(results["on"]["final_return"]), np.mean(results["off"]["final_return"])
    assert qarl_nominal >= sac_nominal - 0.1 * abs(sac_nominal), (qarl_nominal, sac_nominal)
    qarl_worst, sac_worst = np.mean(results["on"]["grid_worst"]), np.mean(results["off"]["grid_worst"])
    assert qarl_worst >= sac_worst - 150, (qarl_worst, sac_worst)


@pytest.mark.slow
def test_temperature_feature_raw_is_the_authors_and_reaches_the_run_and_grid_episodes_are_per_cell(tmp_path):
    """The default feature is α_adv itself (the authors' input), read back as α; --temperature-feature scaled
    divides it by its initial mean (about 1). Each flag reaches the run: scaled changes the learning (critic
    losses), and --grid-common-random-numbers changes only the grid (the same training, other grid returns)."""
    raw = qarl.Config()
    scaled = qarl.Config(temperature_feature="scaled")
    temperature = jnp.float32(0.02)
    assert float(qarl.observe(raw, jnp.zeros(3), temperature)[-1]) == pytest.approx(0.02)
    assert float(qarl.observe(scaled, jnp.zeros(3), temperature)[-1]) == pytest.approx(0.02 / 0.05)
    for config in (raw, scaled):  # the adversary's α, read back from its input, is α_adv in both
        feature = qarl.observe(config, jnp.zeros(3), temperature)[-1]
        assert float(feature * qarl.feature_scale(config)) == pytest.approx(0.02)
    runs = {}
    for name, flags in {"raw": [], "scaled": ["--temperature-feature", "scaled"],
                        "common": ["--grid-common-random-numbers"]}.items():
        qarl.main([*TINY, *flags, "--run-dir", str(tmp_path / name)])
        runs[name] = (np.genfromtxt(tmp_path / name / "metrics_seed0.csv", delimiter=",", names=True),
                      json.loads((tmp_path / name / "summary.json").read_text()))
    (raw_metrics, raw_summary), (scaled_metrics, _), (common_metrics, common_summary) = runs.values()
    assert not np.array_equal(scaled_metrics["adversary_critic_loss"], raw_metrics["adversary_critic_loss"],
                              equal_nan=True)
    for column in raw_metrics.dtype.names:
        np.testing.assert_array_equal(raw_metrics[column], common_metrics[column], err_msg=column)
    assert raw_summary["grid_axis_returns"] != common_summary["grid_axis_returns"]
