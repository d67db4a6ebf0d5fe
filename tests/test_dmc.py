"""DeepMind Control Suite tasks through MuJoCo Playground (`dmc/` ids, envs/dmc_adapter.py): the gymnax 1.x
contract, per-env dynamics inside one vmapped program, adversary forces through `xfrc_applied`, QARL's grids,
and `envs.reset_where`, which keeps a costly reset off the steps where no env ended.

Mostly dmc/CartpoleBalance (it compiles in seconds); one HopperHop check for friction, which needs contacts
(about a minute of compiling on a 2-core CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.registry import DMC_ENV_NAMES

pytestmark = pytest.mark.slow  # every test builds a MuJoCo Playground env (seconds each) or trains on one

# Batched and unbatched runs of the same MJX rollout are different float programs (XLA vectorizes them
# differently); 40 steps of a cartpole in float32 stay within this of each other. Differences between the
# models compared below are orders of magnitude larger (asserted).
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def cartpole():
    env, params = envs.make("dmc/CartpoleBalance", episode_length=5)
    return env, params


def test_ids_are_playgrounds_dm_control_suite():
    from mujoco_playground import registry

    assert sorted(DMC_ENV_NAMES) == sorted(registry.dm_control_suite.ALL_ENVS)
    assert "dmc/CheetahRun" in envs.known_env_ids()
    with pytest.raises(ValueError, match=r"Did you mean 'dmc/CheetahRun'.*Known ids:.*dmc/WalkerWalk"):
        envs.make("dmc/CheetaRun")


def test_spaces_and_bad_arguments(cartpole):
    env, params = cartpole
    assert env.observation_space(params).shape == (5,) and env.action_space(params).shape == (1,)
    assert float(env.action_space(params).low) == -1.0 and float(env.action_space(params).high) == 1.0
    with pytest.raises(ValueError, match="episode_length must be a positive"):
        envs.make("dmc/CartpoleBalance", episode_length=0)
    with pytest.raises(ValueError, match="Unknown MJX implementation 'cuda'; use one of jax, warp"):
        envs.make("dmc/CartpoleBalance", impl="cuda")


def test_truncation_at_the_limit_keeps_the_final_observation_and_resets(cartpole):
    """Five steps, then a time-limit truncation (never a termination): info holds the true last observation,
    the returned one is a fresh episode's, and the step counter restarts."""
    env, params = cartpole
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.dtype == jnp.float32 and obs.shape == (5,)
    raw_step = jax.jit(env.pg_env.step)  # Playground's own step: no time limit, no reset
    raw = state.pg_state
    for t in range(1, 6):
        action = jnp.array([0.3])
        raw = raw_step(raw, action)
        obs, state, reward, terminated, truncated, info = env.step(jax.random.PRNGKey(t), state, action, params)
        assert not bool(terminated)
        assert bool(truncated) == (t == 5)
        np.testing.assert_allclose(info["final_observation"], raw.obs, rtol=1e-6, atol=1e-7)
        assert float(reward) == pytest.approx(float(raw.reward), rel=1e-6)
        if t < 5:
            np.testing.assert_array_equal(obs, info["final_observation"])
    assert int(state.time) == 0
    assert not np.allclose(obs, info["final_observation"])  # the next episode's first observation
    fresh, _ = env.reset(jax.random.PRNGKey(5), params)  # drawn from the step's key
    np.testing.assert_array_equal(obs, fresh)
    assert 0.0 <= float(reward) <= 1.0  # dm_control's rewards per step


def cartpole_rollout(env, params, action, force=None, steps=40):
    """qvel after `steps` steps from the same reset, with a constant action and (x, z) force on the pole."""
    stepper = envs.AdversarialForces(env) if force is not None else env
    _, state = env.reset(jax.random.PRNGKey(0), params)

    def body(state, key):
        act = (action, force) if force is not None else action
        _, state, *_ = stepper.step(key, state, act, params)
        return state, None

    state, _ = jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(1), steps))
    return state.pg_state.data.qvel


@pytest.fixture(scope="module")
def long_cartpole():
    env, params = envs.make("dmc/CartpoleBalance")
    rollout = jax.jit(lambda params, force: cartpole_rollout(env, params, jnp.zeros(1), force))
    return env, params, rollout


def test_push_along_x_speeds_the_cart_up_and_a_heavier_cart_moves_less(long_cartpole):
    env, params, rollout = long_cartpole
    still = rollout(params, jnp.zeros(2))
    pushed = rollout(params, jnp.array([2.0, 0.0]))
    assert float(pushed[0]) > float(still[0]) + 0.05  # slider velocity: +x on the pole drags the cart along
    heavy = rollout(envs.with_dynamics(env, params, {"cart_mass": 1.5}), jnp.array([2.0, 0.0]))
    assert 0.0 < float(heavy[0]) - float(still[0]) < float(pushed[0]) - float(still[0]) - 0.01


def test_zero_adversary_action_is_the_plain_env(long_cartpole):
    env, params, rollout = long_cartpole
    plain = jax.jit(lambda p: cartpole_rollout(env, p, jnp.zeros(1)))(params)
    np.testing.assert_array_equal(rollout(params, jnp.zeros(2)), plain)


def test_qarl_adversary_bodies_and_maxima():
    for env_id, bodies, max_force in [
        ("dmc/CartpoleBalance", ("pole_1",), 2.0), ("dmc/PendulumSwingup", ("pole",), 1.0),
        ("dmc/CheetahRun", ("torso", "bfoot", "ffoot"), 1.0), ("dmc/HopperHop", ("foot",), 1.0),
        ("dmc/WalkerWalk", ("right_foot", "left_foot"), 1.0),
    ]:
        assert envs.DEFAULT_ADVERSARY[env_id] == (bodies, max_force)
    env, _ = envs.make("dmc/CartpoleBalance")
    adversary = envs.AdversarialForces(env)
    np.testing.assert_array_equal(adversary.forces(jnp.array([5.0, -0.5])), [[2.0, -0.5]])
    with pytest.raises(ValueError, match="has no body 'mast'; its bodies: cart, pole_1"):
        envs.AdversarialForces(env, bodies=("mast",), max_force=1.0)


def test_per_env_dynamics_in_one_vmapped_batch(long_cartpole):
    """Three cart masses in one vmapped call: each env runs its own model (equal to running it alone), and
    the models differ."""
    env, params, rollout = long_cartpole
    masses = jnp.array([0.5, 1.0, 1.5])
    batched = jax.jit(jax.vmap(lambda m: rollout(envs.with_dynamics(env, params, {"cart_mass": m}),
                                                 jnp.array([2.0, 0.0]))))(masses)
    for i, mass in enumerate([0.5, 1.0, 1.5]):
        alone = rollout(envs.with_dynamics(env, params, {"cart_mass": mass}), jnp.array([2.0, 0.0]))
        np.testing.assert_allclose(batched[i], alone, rtol=RTOL, atol=ATOL)
    assert float(batched[0, 0]) > float(batched[1, 0]) + 0.01 > float(batched[2, 0]) + 0.02


def test_dynamics_names_nominal_values_and_qarl_friction():
    env, params = envs.make("dmc/CartpoleBalance")
    assert envs.nominal_dynamics(env) == {"cart_mass": 1.0, "pole_1_mass": pytest.approx(0.1), "friction": 1.0}
    with pytest.raises(ValueError, match="Unknown dynamics parameter 'pole_mass'.*Did you mean 'pole_1_mass'"):
        envs.with_dynamics(env, params, {"pole_mass": 1.0})
    changed = envs.with_dynamics(env, params, {"friction": 0.3, "pole_1_mass": 5.0})
    ngeom = env.pg_env.mj_model.ngeom
    np.testing.assert_array_equal(changed.geom_friction, np.full(ngeom, 0.3, np.float32))  # every geom, set
    np.testing.assert_allclose(changed.body_mass, [0.0, 1.0, 5.0])
    for name, uset in envs.UNCERTAINTY_SETS.items():
        if uset.env_id.startswith("dmc/"):
            env, _ = envs.make(uset.env_id)
            nominal = envs.nominal_dynamics(env)
            assert uset.nominal == pytest.approx(tuple(nominal[n] for n in uset.names), rel=1e-6), name


def test_qarl_sets_hold_the_authors_absolute_ranges():
    expected = {
        "dmc-cartpole-balance-qarl": (("pole_1_mass", "cart_mass"), (1.0, 0.5), (20.0, 1.5)),
        "dmc-cartpole-swingup-qarl": (("pole_1_mass", "cart_mass"), (0.05, 0.5), (0.15, 1.5)),
        "dmc-cheetah-qarl": (("torso_mass", "friction"), (3.0, 0.1), (9.0, 1.9)),
        "dmc-hopper-qarl": (("torso_mass", "friction"), (1.0, 0.1), (9.0, 1.9)),
        "dmc-walker-qarl": (("torso_mass", "friction"), (5.0, 0.1), (15.0, 1.3)),
    }
    for name, (names, low, high) in expected.items():
        uset = envs.uncertainty_set(name)
        assert (uset.names, uset.low, uset.high) == (names, low, high)
    # An axis may sit at its nominal value outside the box (one axis varied alone), nothing else may.
    uset = envs.uncertainty_set("dmc-cartpole-balance-qarl")
    uset.check(np.array([[0.1, 1.2], [5.0, 1.0]]))
    with pytest.raises(ValueError, match=r"pole_1_mass=0.5 is outside .*\[1, 20\] \(nominal 0.1\)"):
        uset.check(np.array([0.5, 1.0]))


def test_grid_evaluation_equals_a_loop_of_single_evaluations():
    env, params = envs.make("dmc/CartpoleBalance")
    uset = envs.uncertainty_set("dmc-cartpole-balance-qarl")

    def policy(weights, obs):
        return jnp.tanh(obs @ weights)[:1]

    weights = jnp.array([[0.3], [-0.2], [0.5], [0.1], [-0.4]])
    grid = envs.evaluate_grid(env, params, uset, policy, weights, jax.random.PRNGKey(3), num_per_axis=2,
                              num_steps=40)
    single = envs.make_model_evaluator(env, params, uset, policy, num_steps=40)
    values = np.asarray(grid.values).reshape(-1, 2)
    loop = [float(single(weights, jnp.asarray(v)[None], jax.random.PRNGKey(3))[0]) for v in values]
    np.testing.assert_allclose(np.asarray(grid.returns).reshape(-1), loop, rtol=RTOL, atol=ATOL)
    assert np.ptp(loop) > 100 * (RTOL * max(map(abs, loop)) + ATOL)  # the models give different returns
    assert float(grid.worst) == pytest.approx(min(loop), rel=RTOL)


def test_domain_randomization_on_a_dmc_id():
    env, params = envs.make("dmc/CartpoleBalance", episode_length=3)
    uset = envs.uncertainty_set("dmc-cartpole-balance-qarl")
    randomized = envs.DomainRandomization(env, uset)
    obs, state = jax.vmap(randomized.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 4), params)
    uset.check(state.dynamics)
    assert len({float(m) for m in state.dynamics[:, 0]}) == 4
    step = jax.jit(jax.vmap(randomized.step, in_axes=(0, 0, 0, None)))
    for t in range(3):
        before = state.dynamics
        obs, state, reward, terminated, truncated, info = step(jax.random.split(jax.random.PRNGKey(t + 1), 4),
                                                               state, jnp.zeros((4, 1)), params)
        np.testing.assert_array_equal(info["dynamics"], before)
    assert bool(truncated.all()) and not np.allclose(state.dynamics, before)  # a new model per episode


def test_friction_changes_a_hopper_rollout_and_each_env_keeps_its_own():
    """HopperHop falls onto the floor: a low friction changes its motion once the foot touches down. The
    nominal friction (the floor's 1.0, set on every geom) reproduces the unmodified model."""
    env, params = envs.make("dmc/HopperHop")

    def rollout(friction):
        p = envs.with_dynamics(env, params, {"friction": friction})
        _, state = env.reset(jax.random.PRNGKey(0), p)

        def body(state, key):
            _, state, *_ = env.step(key, state, jnp.array([0.5, -0.5, 0.5, -0.5]), p)
            return state, state.pg_state.data.qpos

        return jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(1), 50))[1]

    qpos = jax.jit(jax.vmap(rollout))(jnp.array([1.0, 0.05]))
    assert np.abs(qpos[0] - qpos[1]).max() > 0.1
    np.testing.assert_array_equal(qpos[0, :10], qpos[1, :10])  # in the air: friction plays no part yet


def test_reset_where_matches_where_and_skips_the_reset_when_no_env_is_done():
    """Per env it is jnp.where(done, reset(key), current), under one or two vmaps; batched, the reset sits in
    a cond on 'any env done', so a step where none ended does not compute it."""
    def reset(key, params):
        return jnp.sin(key * params) * 100.0, key + params

    def direct(done, key, params, current):
        fresh = reset(key, params)
        return tuple(jnp.where(done, f, c) for f, c in zip(fresh, current))

    done = jnp.array([[True, False, False], [False, False, False]])
    key = jnp.arange(6.0).reshape(2, 3)
    params = jnp.float32(0.7)
    current = (jnp.ones((2, 3)), jnp.zeros((2, 3)))
    def per_env(done, key, params, current):
        return envs.reset_where(done, reset, key, params, current)

    def twice(function):
        return jax.vmap(jax.vmap(function, in_axes=(0, 0, None, 0)), in_axes=(0, 0, None, 0))

    got = jax.jit(twice(per_env))(done, key, params, current)
    want = twice(direct)(done, key, params, current)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(per_env(jnp.bool_(True), key[0, 0], params, (1.0, 0.0))[1], key[0, 0] + params)
    jaxpr = str(jax.make_jaxpr(twice(per_env))(done, key, params, current))
    assert "cond[" in jaxpr and "sin" in jaxpr.split("cond[", 1)[1]  # the reset only inside the cond


def test_stream_ac_trains_on_a_dmc_id_and_resumes_where_a_whole_run_ends(tmp_path, monkeypatch):
    """stream AC's checkpoint holds the env state (MJX's Data, registered with flax's serialization by the
    adapter): a run cut after its first chunk and resumed ends bit for bit where the whole run ends."""
    import functools

    import runner
    import runlog
    from algorithms import stream_x

    flags = ["--preset", "dmc-cheetah-ac", "--env-id", "dmc/CartpoleBalance/horizon10", "--total-timesteps", "40",
             "--num-log-rows", "2", "--num-checkpoints", "2", "--quiet"]
    whole = stream_x.main([*flags, "--run-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(runner, "run_program", functools.partial(runner.run_program, stop_after_chunks=1))
    with pytest.raises(runner.RunInterrupted):
        stream_x.main([*flags, "--run-dir", str(tmp_path / "cut")])
    monkeypatch.undo()
    resumed = stream_x.main(["--resume", str(tmp_path / "cut"), "--quiet"])
    assert np.isfinite(whole["final_return"]).all()
    for a, b in zip(jax.tree.leaves(runlog.load_checkpoint(tmp_path / "whole" / "checkpoint.msgpack")),
                    jax.tree.leaves(runlog.load_checkpoint(tmp_path / "cut" / "checkpoint.msgpack")), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["final_return"] == whole["final_return"]


def test_sac_trains_on_a_dmc_id(tmp_path):
    """SAC's dmc-cheetah preset (Playground's tuned config) at tiny sizes on the fast-compiling cartpole. (With the
    suite's level-0 compiles: 36 s on the 2-core CPU against 46 s optimised, measured side by side on 2026-12-08.)"""
    from algorithms import sac

    summary = sac.main(["--preset", "dmc-cheetah", "--env-id", "dmc/CartpoleBalance", "--total-timesteps", "256",
                        "--num-envs", "16", "--learning-starts", "64", "--batch-size", "32", "--hidden-size", "16",
                        "--updates-per-env-step", "0.125", "--buffer-size", "512", "--num-eval-envs", "2",
                        "--num-evals", "1", "--quiet", "--run-dir", str(tmp_path)])
    # Cartpole balance pays at most 1 per step; 1000 steps per evaluation episode.
    assert 0.0 < float(np.mean(summary["final_return"])) <= 1000.0
