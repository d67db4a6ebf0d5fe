"""Robust-RL environments (envs/robust.py, envs/adversary.py): physical parameters change the dynamics the
way physics says, identical parameters give identical trajectories, grid evaluation equals a loop of
single evaluations, rewards are zero-sum, and bad input fails early with the fix in the message.

brax compiles slowly on a CPU: the brax checks share a few module-scoped jitted functions
(inverted_pendulum, and one hopper rollout that covers friction, mass, pushes and determinism).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from gymnax.environments.classic_control.pendulum import EnvState as PendulumState

import envs
from envs.brax_adapter import link_force_to_joint_torques

# ---------------------------------------------------------------------------------------------------
# Classic control


def pendulum_velocity_after(params, steps=5, torque=2.0):
    """Angular speed of a pendulum started hanging down at rest, after `steps` of a constant torque."""
    env, _ = envs.make("Pendulum-v1")
    state = PendulumState(theta=jnp.float32(np.pi), theta_dot=jnp.float32(0.0), last_u=jnp.float32(0.0), time=0)
    for t in range(steps):
        _, state, *_ = env.step(jax.random.PRNGKey(t), state, jnp.array([torque]), params)
    return float(state.theta_dot)


def test_heavier_or_longer_pendulum_swings_slower():
    env, params = envs.make("Pendulum-v1")
    nominal = pendulum_velocity_after(params)
    heavy = pendulum_velocity_after(envs.with_dynamics(env, params, {"mass": 2.0}))
    long = pendulum_velocity_after(envs.with_dynamics(env, params, {"length": 1.5}))
    assert 0 < heavy < nominal and 0 < long < nominal
    # Hanging at rest gravity has no torque yet: the first step's speed is 3 u dt / (m l^2) exactly.
    first = lambda p: pendulum_velocity_after(p, steps=1)  # noqa: E731
    assert np.isclose(first(params), 3 * 2.0 * 0.05, rtol=1e-5)
    assert np.isclose(first(envs.with_dynamics(env, params, {"mass": 2.0})), 3 * 2.0 * 0.05 / 2.0, rtol=1e-4)
    assert np.isclose(first(envs.with_dynamics(env, params, {"length": 1.5})), 3 * 2.0 * 0.05 / 2.25, rtol=1e-4)


def test_cartpole_parameters_and_derived_fields():
    env, params = envs.make("CartPole-v1")
    heavy_cart = envs.with_dynamics(env, params, {"cart_mass": 2.0, "pole_mass": 0.3})
    assert np.isclose(heavy_cart.total_mass, 2.3) and np.isclose(heavy_cart.polemass_length, 0.15)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    state = state.replace(x=0.0, x_dot=0.0, theta=0.1, theta_dot=0.0)

    def after(p, action=1):
        _, s, *_ = env.step(jax.random.PRNGKey(1), state, action, p)
        return s

    # The same push accelerates a heavier cart less; a longer pole tips over more slowly.
    assert 0 < after(heavy_cart).x_dot < after(params).x_dot
    longer = envs.with_dynamics(env, params, {"pole_length": 1.0})
    assert 0 < after(longer, 0).theta_dot < after(params, 0).theta_dot


def linear_policy(weights, obs):
    return jnp.clip(jnp.dot(weights, obs), -2.0, 2.0)[None]


def test_identical_parameters_give_identical_trajectories():
    env, params = envs.make("Pendulum-v1")
    uset = envs.uncertainty_set("pendulum-2d")
    values = jnp.array([[1.5, 0.8], [1.5, 0.8], [0.7, 1.2]])

    @jax.jit
    def trajectory(values):
        p = uset.apply(env, params, values)
        obs, state = env.reset(jax.random.PRNGKey(0), p)

        def body(carry, key):
            obs, state = carry
            obs, state, reward, *_ = env.step(key, state, linear_policy(jnp.array([-1.0, 0.3, -0.2]), obs), p)
            return (obs, state), obs

        return jax.lax.scan(body, (obs, state), jax.random.split(jax.random.PRNGKey(1), 50))[1]

    obs = jax.vmap(trajectory)(values)
    # Within a batch, XLA's vectorized sin/cos may round the lanes differently (1 ulp): allclose.
    np.testing.assert_allclose(obs[0], obs[1], rtol=1e-5, atol=1e-5)
    assert np.abs(obs[0] - obs[2]).max() > 0.1
    np.testing.assert_allclose(obs[0], trajectory(values[0]), rtol=1e-5, atol=1e-5)  # batched equals alone
    np.testing.assert_array_equal(trajectory(values[0]), trajectory(values[1]))  # deterministic


def test_uncertainty_sets_normalize_and_grid():
    uset = envs.uncertainty_set("hopper-2d")
    assert uset.env_id == "brax/hopper" and uset.names == ("friction", "torso_mass") and uset.dim == 2
    assert uset.low == (0.1, 0.1) and uset.high == (3.0, 3.0)
    assert envs.uncertainty_set("hopper-3d").names[-1] == "thigh_mass"
    assert envs.uncertainty_set("inverted_pendulum-2d").high == (31.0, 11.0)
    z = jnp.array([0.25, 0.5])
    np.testing.assert_allclose(uset.to_normalized(uset.from_normalized(z)), z, rtol=1e-6)
    np.testing.assert_allclose(uset.from_normalized(jnp.zeros(2)), uset.low)
    grid = uset.grid(4)
    assert grid.shape == (4, 4, 2)
    np.testing.assert_allclose(grid[0, 0], uset.low)
    np.testing.assert_allclose(grid[-1, -1], uset.high, rtol=1e-6)
    np.testing.assert_allclose(grid[1, 2], [0.1 + 2.9 / 3, 0.1 + 2 * 2.9 / 3], rtol=1e-6)
    samples = jax.vmap(uset.sample)(jax.random.split(jax.random.PRNGKey(0), 500))
    assert np.all(samples >= np.array(uset.low)) and np.all(samples <= np.array(uset.high))
    assert envs.uncertainty_set("cartpole-3d").names == ("pole_mass", "pole_length", "cart_mass")


@pytest.mark.slow
def test_set_nominal_values_are_the_unmodified_envs():
    for uset in envs.UNCERTAINTY_SETS.values():
        env, _ = envs.make(uset.env_id)
        nominal = envs.nominal_dynamics(env)
        np.testing.assert_allclose([nominal[n] for n in uset.names], uset.nominal, rtol=1e-5, err_msg=uset.name)


def test_ant_3d_third_axis_is_m2td3_body_mass_4():
    """M2TD3's Ant "frontrightlegmass" is gym's body_mass[4] (utils/make_env.py): in gym's ant.xml the lower
    segment (left_ankle_geom) under aux_1. ant-3d's third axis must set brax's link for that body, and only it."""
    uset = envs.uncertainty_set("ant-3d")
    env, params = envs.make(uset.env_id)
    sys = env.brax_env.sys
    link = envs.robust._brax_mass_links(env)[uset.names[2]]
    # the same body in brax's MuJoCo model: child of aux_1, which hangs from the torso, mass 0.0676 kg
    mj_body = link + 1  # brax link i is MuJoCo body i + 1 (body 0 is the world)
    parent = sys.mj_model.body_parentid[mj_body]
    assert sys.link_names[parent - 1] == "aux_1" and sys.link_names[sys.mj_model.body_parentid[parent] - 1] == "torso"
    np.testing.assert_allclose(np.asarray(sys.link.inertia.mass)[link], 0.067592, rtol=1e-5)
    import gymnasium  # requirements.txt: its MuJoCo assets are M2TD3's models

    gym_ant = mujoco.MjModel.from_xml_path(str(Path(gymnasium.__file__).parent / "envs/mujoco/assets/ant.xml"))
    gym_parent = gym_ant.body_parentid[4]
    assert mujoco.mj_id2name(gym_ant, mujoco.mjtObj.mjOBJ_BODY, gym_parent) == "aux_1"
    np.testing.assert_allclose(gym_ant.body_mass[4], np.asarray(sys.link.inertia.mass)[link], rtol=1e-4)
    # applying the set changes that link's mass and nothing else
    values = jnp.asarray([0.48388025, 0.039157752, 2.5])
    changed = np.asarray(uset.apply(env, params, values).link_mass)
    expected = np.asarray(sys.link.inertia.mass).copy()
    expected[link] = 2.5
    np.testing.assert_allclose(changed, expected, rtol=1e-6)


@pytest.mark.slow
def test_grid_evaluation_matches_a_loop_of_single_evaluations():
    env, params = envs.make("Pendulum-v1")
    uset = envs.uncertainty_set("pendulum-2d")
    weights = jnp.array([-2.0, 0.5, -0.5])
    key = jax.random.PRNGKey(3)
    result = envs.evaluate_grid(env, params, uset, linear_policy, weights, key, num_per_axis=3, num_steps=40,
                                num_episodes=2)
    assert result.returns.shape == (3, 3) and result.values.shape == (3, 3, 2)
    single = envs.make_model_evaluator(env, params, uset, linear_policy, num_steps=40, num_episodes=2)
    for i in range(3):
        for j in range(3):
            alone = single(weights, result.values[i, j][None], key)[0]
            np.testing.assert_allclose(result.returns[i, j], alone, rtol=1e-5)
    # And against a plain Python loop over the same episodes.
    values = result.values[2, 1]
    p = envs.with_dynamics(env, params, {"mass": values[0], "length": values[1]}).replace(max_steps_in_episode=40)
    total = 0.0
    for episode_key in jax.random.split(key, 2):
        key_reset, key_steps = jax.random.split(episode_key)
        obs, state = env.reset(key_reset, p)
        for step_key in jax.random.split(key_steps, 40):
            obs, state, reward, *_ = env.step(step_key, state, linear_policy(weights, obs), p)
            total += float(reward) / 2
    np.testing.assert_allclose(result.returns[2, 1], total, rtol=1e-4)
    assert float(result.worst) == float(result.returns.min())
    assert np.isclose(result.average, result.returns.mean())
    np.testing.assert_allclose(result.worst_values, result.values.reshape(-1, 2)[np.argmin(result.returns)])


@pytest.mark.slow
def test_policy_with_memory_in_the_evaluator():
    env, params = envs.make("Pendulum-v1")
    uset = envs.uncertainty_set("pendulum-2d")
    weights = jnp.array([-2.0, 0.5, -0.5])
    values, key = jnp.array([[1.2, 0.9]]), jax.random.PRNGKey(6)
    stateless = envs.make_model_evaluator(env, params, uset, linear_policy, num_steps=30)(weights, values, key)
    # The same policy carrying a step counter; then one that pushes for its first 10 steps only.
    counting = lambda w, obs, count: (linear_policy(w, obs), count + 1)  # noqa: E731
    same = envs.make_model_evaluator(env, params, uset, counting, 30, policy_init=lambda w, obs: 0)
    np.testing.assert_allclose(same(weights, values, key), stateless, rtol=1e-6)
    push_first = lambda w, obs, count: (jnp.where(count < 10, 2.0, 0.0)[None], count + 1)  # noqa: E731
    returns = envs.make_model_evaluator(env, params, uset, push_first, 30, policy_init=lambda w, obs: 0)(
        weights, values, key)
    p = uset.apply(env, params, values[0]).replace(max_steps_in_episode=30)
    key_reset, key_steps = jax.random.split(jax.random.split(key, 1)[0])
    obs, state = env.reset(key_reset, p)
    total = 0.0
    for t, step_key in enumerate(jax.random.split(key_steps, 30)):
        obs, state, reward, *_ = env.step(step_key, state, jnp.array([2.0 if t < 10 else 0.0]), p)
        total += float(reward)
    np.testing.assert_allclose(returns[0], total, rtol=1e-5)


def test_domain_randomization_resamples_at_every_reset():
    env, params = envs.make("Pendulum-v1")
    params = params.replace(max_steps_in_episode=5)
    uset = envs.uncertainty_set("pendulum-2d")
    randomized = envs.DomainRandomization(env, uset)
    obs, state = randomized.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(randomized.step)
    seen = [np.asarray(state.dynamics)]
    for t in range(15):
        before = state
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(t + 1), state, jnp.ones(1), params)
        np.testing.assert_array_equal(info["dynamics"], before.dynamics)
        # The step used this episode's model: the same step on the plain env with those values agrees.
        p = uset.apply(env, params, before.dynamics)
        expected = env.step(jax.random.split(jax.random.PRNGKey(t + 1))[0], before.env_state, jnp.ones(1), p)
        np.testing.assert_allclose(reward, expected[2], rtol=1e-6)
        if truncated:
            assert not np.allclose(state.dynamics, before.dynamics)
            seen.append(np.asarray(state.dynamics))
        else:
            np.testing.assert_array_equal(state.dynamics, before.dynamics)
    assert len(seen) == 4  # resets at steps 5, 10, 15
    uset.check(np.stack(seen))


def test_classic_adversary_is_zero_sum_bounded_and_pushes_the_right_way():
    env, params = envs.make("Pendulum-v1")
    two_player = envs.AdversarialForces(env)
    assert two_player.adversary_action_dim == 2 and two_player.max_force == 1.0
    space = two_player.adversary_action_space(params)
    assert space.shape == (2,) and float(space.high) == 1.0
    _, state = env.reset(jax.random.PRNGKey(0), params)
    key = jax.random.PRNGKey(1)
    plain = env.step(key, state, jnp.array([0.7]), params)
    zero = two_player.step(key, state, (jnp.array([0.7]), jnp.zeros(2)), params)
    for a, b in zip(plain[:5], zero[:5]):
        np.testing.assert_array_equal(jax.tree.leaves(a), jax.tree.leaves(b))
    pushed = two_player.step(key, state, (jnp.array([0.7]), jnp.array([5.0, 0.0])), params)
    assert float(pushed[5]["adversary_reward"]) == -float(pushed[2])
    np.testing.assert_array_equal(pushed[5]["adversary_force"], [[1.0, 0.0]])  # clipped to max_force
    # Upright (θ = 0), a +x push at the center of mass adds torque l/2 F = 0.5: 3/(m l^2) 0.5 dt more speed.
    upright = state.replace(theta=jnp.float32(0.0), theta_dot=jnp.float32(0.0))
    base = two_player.step(key, upright, (jnp.zeros(1), jnp.zeros(2)), params)[1].theta_dot
    push = two_player.step(key, upright, (jnp.zeros(1), jnp.array([1.0, 0.0])), params)[1].theta_dot
    np.testing.assert_allclose(push - base, 3 * 0.5 * 0.05, rtol=1e-5)

    env, params = envs.make("CartPole-v1")
    two_player = envs.AdversarialForces(env, bodies=("pole", "cart"))
    _, state = env.reset(jax.random.PRNGKey(0), params)
    plain = env.step(key, state, 1, params)
    zero = two_player.step(key, state, (1, jnp.zeros(4)), params)
    np.testing.assert_array_equal(plain[0], zero[0])
    # A +x force on the cart speeds it up; on the pole it also tips the pole toward +x.
    cart = two_player.step(key, state, (1, jnp.array([0.0, 0.0, 2.0, 0.0])), params)
    pole = two_player.step(key, state, (1, jnp.array([2.0, 0.0, 0.0, 0.0])), params)
    assert cart[0][1] > plain[0][1] and pole[0][1] > plain[0][1] and pole[0][3] > plain[0][3]
    assert float(cart[5]["adversary_reward"]) == -float(cart[2])


def test_errors_say_what_to_do():
    env, params = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match="Unknown dynamics parameter 'mas'.*'mass'"):
        envs.with_dynamics(env, params, {"mas": 2.0})
    with pytest.raises(ValueError, match="positive"):
        envs.with_dynamics(env, params, {"mass": -1.0})
    uset = envs.uncertainty_set("pendulum-2d")
    with pytest.raises(ValueError, match=r"mass=3 is outside pendulum-2d's range \[0.5, 2\]"):
        uset.apply(env, params, jnp.array([3.0, 1.0]))
    with pytest.raises(ValueError, match="outside"):
        envs.make_model_evaluator(env, params, uset, linear_policy, 10)(jnp.zeros(3), jnp.array([[1.0, 9.0]]),
                                                                          jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="2 parameters"):
        uset.check(np.ones(3))
    with pytest.raises(ValueError, match="No uncertainty set named 'hoper-2d'.*'hopper-2d'"):
        envs.uncertainty_set("hoper-2d")
    acrobot, acrobot_params = envs.make("Acrobot-v1")
    with pytest.raises(ValueError, match="'Acrobot-v1' has no physical parameters.*Pendulum-v1"):
        envs.with_dynamics(acrobot, acrobot_params, {"mass": 1.0})
    with pytest.raises(ValueError, match="is for 'brax/hopper'.*envs.make"):
        envs.uncertainty_set("hopper-2d").apply(env, params, jnp.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="is for 'CartPole-v1'"):
        envs.DomainRandomization(env, envs.uncertainty_set("cartpole-1d"))
    with pytest.raises(ValueError, match="No default adversary for 'Acrobot-v1'.*bodies="):
        envs.AdversarialForces(acrobot)
    with pytest.raises(ValueError, match="directly"):
        envs.AdversarialForces(envs.EpisodeStatistics(env))
    with pytest.raises(ValueError, match="'pole'"):
        envs.AdversarialForces(env, bodies=("cart",))
    with pytest.raises(ValueError, match="num_per_axis"):
        uset.grid(1)


# ---------------------------------------------------------------------------------------------------
# brax


@pytest.fixture(scope="module")
def cartpole3d():
    """brax inverted_pendulum with a +-50 N adversary on the cart, and a jitted one-step function."""
    env, params = envs.make("brax/inverted_pendulum", episode_length=1000)
    two_player = envs.AdversarialForces(env, bodies=("cart",), max_force=50.0)

    @jax.jit
    def cart_velocity_after_one_step(params, action, force, key):
        _, state = two_player.reset(key, params)
        _, state, reward, _, _, info = two_player.step(key, state, (action, force), params)
        # The final observation (q, qd) is the stepped state even when the pole fell and the env reset.
        return info["final_observation"][2], reward, info["adversary_reward"]

    return env, params, cart_velocity_after_one_step


@pytest.mark.slow
def test_brax_push_along_x_speeds_the_body_up(cartpole3d):
    env, params, one_step = cartpole3d
    params = envs.with_dynamics(env, params, {"cart_mass": 5.0})  # arrays from here on: one compilation
    key = jax.random.PRNGKey(0)
    v = {f: float(one_step(params, jnp.zeros(1), jnp.array([f, 0.0]), key)[0]) for f in (-50.0, 0.0, 50.0, 80.0)}
    assert v[50.0] > v[0.0] + 0.1 > v[-50.0] + 0.2
    np.testing.assert_allclose(v[50.0] - v[0.0], v[0.0] - v[-50.0], rtol=1e-2)  # linear in the force
    assert v[80.0] == v[50.0]  # clipped to max_force
    _, reward, adversary_reward = one_step(params, jnp.zeros(1), jnp.array([50.0, 0.0]), key)
    assert float(adversary_reward) == -float(reward)


@pytest.mark.slow
def test_brax_heavier_cart_accelerates_less(cartpole3d):
    env, params, one_step = cartpole3d
    key = jax.random.PRNGKey(0)
    velocity = lambda values: float(  # noqa: E731
        one_step(envs.with_dynamics(env, params, values), jnp.ones(1), jnp.zeros(2), key)[0]
    )
    light, nominal, heavy = (velocity({"cart_mass": m}) for m in (2.0, 10.471975, 11.0))
    assert light > nominal > heavy > 0
    # The full motor push on cart + pole: a lighter system gains more speed (roughly ~1/mass).
    assert light / heavy > 1.5


@pytest.mark.slow
def test_mjx_pushes_like_generalized(cartpole3d):
    # Both backends apply the force at the cart's center of mass: xfrc_applied (mjx) vs J^T F (generalized).
    generalized_env, generalized_params, generalized_step = cartpole3d
    env, params = envs.make("brax/inverted_pendulum", backend="mjx")
    two_player = envs.AdversarialForces(env, bodies=("cart",), max_force=50.0)

    @jax.jit
    def speed_up(params, key):
        _, state = two_player.reset(key, params)
        pushed = two_player.step(key, state, (jnp.zeros(1), jnp.array([50.0, 0.0])), params)[5]
        free = two_player.step(key, state, (jnp.zeros(1), jnp.zeros(2)), params)[5]
        return pushed["final_observation"][2] - free["final_observation"][2]

    key = jax.random.PRNGKey(0)
    mjx = float(speed_up(envs.with_dynamics(env, params, {"cart_mass": 5.0}), key))
    generalized_params = envs.with_dynamics(generalized_env, generalized_params, {"cart_mass": 5.0})
    generalized = float(
        generalized_step(generalized_params, jnp.zeros(1), jnp.array([50.0, 0.0]), key)[0]
        - generalized_step(generalized_params, jnp.zeros(1), jnp.zeros(2), key)[0]
    )
    assert mjx > 0.1
    np.testing.assert_allclose(mjx, generalized, rtol=0.05)


@pytest.mark.slow
def test_force_to_joint_torques_matches_mujoco():
    """J^T F through the ancestor joints equals MuJoCo's mj_applyFT at the bodies' centers of mass."""
    from brax import kinematics
    from brax.generalized import dynamics
    from brax.generalized.base import State

    for name in ("hopper", "ant"):  # planar root joints; a free joint
        env, _ = envs.make(f"brax/{name}")
        sys = env.brax_env.sys
        rng = np.random.default_rng(0)
        q = np.asarray(sys.init_q) + rng.uniform(-0.3, 0.3, sys.q_size())
        if name == "ant":
            q[3:7] /= np.linalg.norm(q[3:7])
        force = rng.normal(size=(sys.num_links(), 3))

        @jax.jit
        def torques(q, force):
            qd = jnp.zeros(sys.qd_size())
            x, xd = kinematics.forward(sys, q, qd)
            state = dynamics.transform_com(sys, State.init(q, qd, x, xd))  # x, root_com, cdof at q
            return link_force_to_joint_torques(sys, state, force)

        torques = np.asarray(torques(jnp.asarray(q, jnp.float32), jnp.asarray(force, jnp.float32)))
        model = sys.mj_model
        data = mujoco.MjData(model)
        data.qpos[:] = q
        mujoco.mj_forward(model, data)
        expected = np.zeros(model.nv)
        for link in range(sys.num_links()):
            mujoco.mj_applyFT(model, data, force[link], np.zeros(3), data.xipos[link + 1], link + 1, expected)
        np.testing.assert_allclose(torques, expected, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def hopper_rollout():
    """A vmapped, jitted 30-step hopper rollout (no termination) with per-env params and pushes."""
    env, params = envs.make("brax/hopper", terminate_when_unhealthy=False)
    two_player = envs.AdversarialForces(env, bodies=("torso",), max_force=100.0)

    @jax.jit
    def rollout(params, action, force):
        def one(params, action, force):
            key = jax.random.PRNGKey(0)
            _, state = two_player.reset(key, params)

            def body(state, step_key):
                _, state, *_ = two_player.step(step_key, state, (action, force), params)
                return state, state.brax_state.pipeline_state.xd.vel[0, 0]  # torso x velocity

            return jax.lax.scan(body, state, jax.random.split(key, 30))[1]

        return jax.vmap(one)(params, action, force)

    return env, params, rollout


@pytest.mark.slow
def test_brax_hopper_friction_mass_and_push_change_the_trajectory(hopper_rollout):
    env, params, rollout = hopper_rollout
    uset = envs.uncertainty_set("hopper-2d")
    nominal = envs.nominal_dynamics(env)
    models = jnp.array([[1.0, 3.0], [1.0, 3.0], [0.1, 3.0], [3.0, 3.0], [1.0, 0.5], [1.0, 3.0]])
    batch = jax.vmap(lambda v: uset.apply(env, params, v))(models)
    action = jnp.tile(jnp.array([0.5, -0.5, 0.3]), (len(models), 1))
    force = jnp.zeros((len(models), 2)).at[5, 0].set(100.0)
    velocity = np.asarray(rollout(batch, action, force))
    np.testing.assert_allclose(velocity[0], velocity[1], rtol=1e-4, atol=1e-5)  # identical parameters
    for other in (2, 3, 4):  # low friction, high friction, light torso
        assert np.abs(velocity[other] - velocity[0]).max() > 1e-2, other
    assert velocity[5, 0] > velocity[0, 0] + 0.05  # a +x push on the torso speeds it up along x
    # Friction below the foot's own 2.0 takes effect: the foot's geom is scaled with the floor.
    physics = env.physics(envs.with_dynamics(env, params, {"friction": 0.1}))
    np.testing.assert_allclose(np.asarray(physics.sys.geom_friction)[:, 0], [0.1, 0.09, 0.09, 0.09, 0.2], rtol=1e-6)
    # The nominal values rebuild the unmodified system.
    same = env.physics(envs.with_dynamics(env, params, nominal)).sys
    np.testing.assert_allclose(same.link.inertia.mass, env.brax_env.sys.link.inertia.mass, rtol=1e-6)
    np.testing.assert_allclose(same.body_mass, env.brax_env.sys.body_mass, rtol=1e-6)
    np.testing.assert_allclose(same.geom_friction, env.brax_env.sys.geom_friction, rtol=1e-6)


@pytest.mark.slow
def test_brax_nominal_parameters_and_zero_force_reproduce_the_plain_env(cartpole3d):
    env, params, one_step = cartpole3d
    masses = {name: value for name, value in envs.nominal_dynamics(env).items() if name.endswith("_mass")}
    nominal = envs.with_dynamics(env, params, masses)  # (friction's nominal: the hopper test)
    key = jax.random.PRNGKey(4)
    _, state = env.reset(key, params)
    _, plain, reward, *_ = env.step(key, state, jnp.ones(1), params)
    velocity, reward_two_player, _ = one_step(nominal, jnp.ones(1), jnp.zeros(2), key)
    np.testing.assert_allclose(velocity, plain.brax_state.obs[2], rtol=1e-5)
    np.testing.assert_allclose(reward_two_player, reward)


@pytest.mark.slow
def test_brax_grid_matches_single_evaluations_and_errors():
    env, params = envs.make("brax/inverted_pendulum")
    uset = envs.uncertainty_set("inverted_pendulum-2d")
    policy = lambda gain, obs: jnp.clip(gain * (obs[1] + 0.1 * obs[3])[None], -1.0, 1.0)  # noqa: E731
    key = jax.random.PRNGKey(5)
    evaluate = envs.make_grid_evaluator(env, params, uset, policy, num_per_axis=2, num_steps=20)
    result = evaluate(jnp.float32(-0.5), key)  # a bad controller: the pole falls sooner or later
    single = envs.make_model_evaluator(env, params, uset, policy, num_steps=20)
    loop = np.array([single(jnp.float32(-0.5), v[None], key)[0] for v in result.values.reshape(-1, 2)])
    np.testing.assert_allclose(result.returns.reshape(-1), loop, rtol=1e-5)
    assert float(result.worst) == pytest.approx(loop.min(), rel=1e-5)
    assert float(result.average) == pytest.approx(loop.mean(), rel=1e-5)
    assert 0 < loop.min() < loop.max() <= 20  # the models differ: the pole falls at different steps
    with pytest.raises(ValueError, match="Unknown dynamics parameter 'torso_mass'.*pole_mass"):
        envs.with_dynamics(env, params, {"torso_mass": 1.0})
    with pytest.raises(ValueError, match="pole_mass=40 is outside"):
        uset.apply(env, params, jnp.array([40.0, 5.0]))
    with pytest.raises(ValueError, match="no body 'torso'.*cart, pole"):
        envs.AdversarialForces(env, bodies=("torso",), max_force=1.0)
    with pytest.raises(ValueError, match="No default adversary for 'brax/inverted_pendulum'"):
        envs.AdversarialForces(env)
    positional, _ = envs.make("brax/inverted_pendulum", backend="positional")
    with pytest.raises(ValueError, match="generalized or mjx"):
        envs.AdversarialForces(positional, bodies=("cart",), max_force=1.0)


@pytest.mark.slow
def test_common_random_numbers_give_every_model_the_same_episodes_and_independent_ones_do_not():
    """Pendulum's reset is random: with common random numbers two copies of one model return the same, with
    independent episodes (QARL's default grid, as its authors draw one episode per cell) they do not."""
    env, params = envs.make("Pendulum-v1")
    uset = envs.uncertainty_set("pendulum-2d")
    weights, key = jnp.array([-2.0, 0.5, -0.5]), jax.random.PRNGKey(3)
    values = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.5, 0.8]])
    common = envs.make_model_evaluator(env, params, uset, linear_policy, num_steps=30)(weights, values, key)
    independent = envs.make_model_evaluator(env, params, uset, linear_policy, num_steps=30,
                                            common_random_numbers=False)(weights, values, key)
    assert common[0] == common[1] and independent[0] != independent[1]
    # each model's own episode is the one a single-model evaluation draws with its folded key
    alone = envs.make_model_evaluator(env, params, uset, linear_policy, num_steps=30)(
        weights, values[2:], jax.random.fold_in(key, 2))
    np.testing.assert_allclose(independent[2], alone[0], rtol=1e-5)
