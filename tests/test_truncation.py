"""Time limits through every training loop: a time-limit step bootstraps from the true final observation, a
terminal step does not, and the next episode's first observation is never used in their place.

Each test runs the file's own code from rollout to targets (`make_train` / `make_sac`, one update or a few,
jitted) on `TwoEndings`, a 3-step env whose every value is known: an episode is of kind 0 (runs into the time
limit: truncated after step 3) or kind 1 (terminated after step 2), drawn at reset; the observation after
step t is [t, kind, 1] (the first one is [0, kind, 1]), and step t pays t + 10 kind, so a reward names the
step it came from. The file's target function (`lambda_returns`, `critic_targets`, `td_error`, `head_targets`)
is wrapped to record its inputs and outputs (a host callback; the wrapper returns what the original
returns), and every recorded number is checked against what the env says it must be:
- the value bootstrapped at a step is the network's value of [t, kind, 1], the true next observation, with the
  parameters the update used; at a time limit that is [3, 0, 1], never a reset observation [0, k, 1] (whose
  value differs by far more than the tolerance: asserted);
- a terminal step's target is its reward alone.
Where a file makes a timeout terminal on purpose, the test pins that: stream-x with its time feature (the
elapsed fraction is in the state: no bootstrap), and SQIRL (finite horizon, the authors' choice).
QARL: both players' buffers and critic targets, with the temperature feature (a fake force wrapper stands in
for envs.AdversarialForces, which knows only real bodies).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

import envs
from algorithms import iwocs, pqn, qarl, sac, sqirl, stream_x

TIME_LIMIT = 3  # kind 0 is truncated after step 3
TERMINAL_AT = 2  # kind 1 is terminated after step 2
GAMMA = 0.9
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # the same float32 network, batched vs one observation


@struct.dataclass
class TwoEndingsState(environment.EnvState):
    time: jax.Array
    kind: jax.Array


@struct.dataclass
class TwoEndingsParams(environment.EnvParams):
    max_steps_in_episode: int = TIME_LIMIT


class TwoEndings(environment.Environment[TwoEndingsState, TwoEndingsParams]):
    """3 steps to a time limit (kind 0) or 2 steps to a terminal state (kind 1); the action is ignored."""

    def __init__(self, continuous: bool):
        super().__init__()
        self.continuous = continuous

    @property
    def default_params(self) -> TwoEndingsParams:
        return TwoEndingsParams()

    def get_obs(self, state, params=None, key=None):
        return jnp.stack([state.time, state.kind, 1]).astype(jnp.float32)

    def reset_env(self, key, params):
        state = TwoEndingsState(time=jnp.int32(0), kind=jax.random.bernoulli(key).astype(jnp.int32))
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        state = TwoEndingsState(time=state.time + 1, kind=state.kind)
        reward = (state.time + 10 * state.kind).astype(jnp.float32)
        terminated = (state.kind == 1) & (state.time == TERMINAL_AT)
        return self.get_obs(state), state, reward, terminated, {}

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32) if self.continuous else spaces.Discrete(2)

    def observation_space(self, params=None):
        return spaces.Box(0.0, 10.0, (3,), jnp.float32)


def steps_from_rewards(reward):
    """What the env says about the step that paid `reward`: (t, kind, terminated, truncated, true next obs)."""
    reward = np.rint(np.asarray(reward)).astype(int)
    t, kind = reward % 10, reward // 10
    next_obs = np.stack([t, kind, np.ones_like(t)], -1).astype(np.float32)
    return t, kind, (kind == 1) & (t == TERMINAL_AT), (kind == 0) & (t == TIME_LIMIT), next_obs


RESET_OBS = np.array([[0, 0, 1], [0, 1, 1]], np.float32)
TIMEOUT_OBS = np.array([TIME_LIMIT, 0, 1], np.float32)


@pytest.fixture
def two_endings(monkeypatch):
    """envs.make gives TwoEndings (continuous actions if asked) whatever the id."""
    chosen = {"continuous": False}

    def make(env_id, **kwargs):
        env = TwoEndings(chosen["continuous"])
        return env, env.default_params

    monkeypatch.setattr(envs, "make", make)
    return chosen


def record(monkeypatch, module, name):
    """Wrap module.<name> so that every call's inputs and output are appended (as numpy) to the returned list."""
    calls, original = [], getattr(module, name)

    def wrapper(*args):
        out = original(*args)
        jax.debug.callback(lambda a, o: calls.append(jax.tree.map(np.asarray, (a, o))),
                           jax.tree.map(jnp.asarray, args), out)
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def assert_values_tell_apart(value_of):
    """The bootstrap value at the time limit differs from a reset observation's by far more than TOLERANCE."""
    for obs in RESET_OBS:
        assert abs(value_of(TIMEOUT_OBS) - value_of(obs)) > 1e-3, "the test could not tell the observations apart"


# ----------------------------------------------------------------------------------------------------
# PQN: rollout -> next_q_max (final observations at episode ends) -> λ-returns


def test_pqn_lambda_returns_bootstrap_from_the_final_observation_at_time_limits(two_endings, monkeypatch):
    calls = record(monkeypatch, pqn, "lambda_returns")
    config = dataclasses.replace(pqn.PRESETS["cartpole"], num_envs=8, num_steps=8, total_timesteps=64,
                                 num_minibatches=1, num_epochs=1, num_eval_envs=2, num_evals=1, gamma=GAMMA,
                                 td_lambda=0.5, reward_scale=1.0, quiet=True)
    program = pqn.make_train(config)
    carry = program.init(jax.random.PRNGKey(0))
    jax.block_until_ready(jax.jit(program.update)(carry, 0))
    jax.effects_barrier()
    (rewards, terminated, done, next_q_max, gamma, td_lambda), returns = calls[0]

    network = pqn.QNetwork(2, config.hidden_size, config.num_layers, conv=False, norm=config.norm,
                           norm_input=config.norm_input, obs_divisor=config.obs_divisor)
    params = carry[0].params  # the targets of the first update use the initial parameters

    def q_max(obs):
        return float(network.apply(params, jnp.asarray(obs)[None]).max(-1)[0])

    t, kind, term, trunc, next_obs = steps_from_rewards(rewards)
    assert term.any() and trunc.any()
    np.testing.assert_array_equal(terminated, term)
    np.testing.assert_array_equal(done, term | trunc)
    # Every step bootstraps from (or, terminal, is given) the value of its true next observation.
    expected_q = np.vectorize(lambda i, j: q_max(next_obs[i, j]))(*np.indices(rewards.shape))
    np.testing.assert_allclose(next_q_max, expected_q, **TOLERANCE)
    assert_values_tell_apart(q_max)
    # λ-returns from the env's numbers: the recursion restarts at every episode end and at the rollout's end.
    expected = np.zeros_like(expected_q)
    for i in reversed(range(len(rewards))):
        ended = (term | trunc)[i] | (i == len(rewards) - 1)
        later = expected_q[i] if i == len(rewards) - 1 else expected[i + 1]
        bracket = np.where(ended, expected_q[i], (1 - td_lambda) * expected_q[i] + td_lambda * later)
        expected[i] = rewards[i] + gamma * (1 - term[i]) * bracket
    np.testing.assert_allclose(returns, expected, **TOLERANCE)
    np.testing.assert_array_equal(returns[term], rewards[term])  # a terminal step: its reward, nothing more
    np.testing.assert_allclose(returns[trunc], rewards[trunc] + gamma * q_max(TIMEOUT_OBS), **TOLERANCE)


# ----------------------------------------------------------------------------------------------------
# SAC: rollout -> replay buffer (true next observations) -> critic targets


@pytest.mark.slow
def test_sac_stores_final_observations_and_cuts_only_terminal_targets(two_endings, monkeypatch):
    two_endings["continuous"] = True
    calls = record(monkeypatch, sac, "critic_targets")
    config = dataclasses.replace(sac.PRESETS["pendulum"], num_envs=4, total_timesteps=48, learning_starts=16,
                                 batch_size=32, hidden_size=16, num_eval_envs=2, num_evals=1, gamma=GAMMA,
                                 reward_scale=1.0, normalize_observations=False, quiet=True)
    program = sac.make_train(config)
    num_rows = sac.derive_sizes(config).num_rows
    carry, _ = jax.jit(lambda c: jax.lax.scan(program.update, c, jnp.arange(num_rows)))(
        program.init(jax.random.PRNGKey(0)))
    jax.effects_barrier()

    # The buffer, written by the file's rollout: every transition's next_obs is the env's true next observation.
    buffer = jax.tree.map(np.asarray, carry[1].data)
    t, kind, term, trunc, next_obs = steps_from_rewards(buffer.reward)
    assert term.any() and trunc.any()
    np.testing.assert_array_equal(buffer.terminated, term)  # a time limit is not stored as terminal
    np.testing.assert_array_equal(buffer.next_obs, next_obs)  # never a reset observation [0, k, 1]

    # The targets of every sampled batch: a terminal step's is its reward; a time limit's bootstraps.
    assert calls
    for (reward, terminated, next_q_min, next_log_prob, alpha, gamma), targets in calls:
        _, _, term, trunc, _ = steps_from_rewards(reward)
        np.testing.assert_array_equal(terminated, term)
        np.testing.assert_array_equal(targets[term], reward[term])
        bootstrap = gamma * (next_q_min - alpha * next_log_prob)
        np.testing.assert_allclose(targets[~term], reward[~term] + bootstrap[~term], **TOLERANCE)
    assert any(trunc.any() for (reward, *_), _ in calls for *_, trunc, _ in [steps_from_rewards(reward)])


# ----------------------------------------------------------------------------------------------------
# stream Q(λ) and stream AC(λ): each step's δ from the true next observation; the time feature makes a timeout
# terminal (pinned), without it a timeout bootstraps


@pytest.mark.parametrize("learner, time_feature", [("q", True), ("q", False), ("ac", False)])
@pytest.mark.slow
def test_stream_x_td_error_at_time_limits(two_endings, monkeypatch, learner, time_feature):
    two_endings["continuous"] = learner == "ac"
    calls = record(monkeypatch, stream_x, "td_error")
    config = dataclasses.replace(stream_x.PRESETS[f"cartpole-{learner}"], total_timesteps=30, num_log_rows=1,
                                 lr=1e-30, gamma=GAMMA, normalize_observations=False, scale_rewards=False,
                                 time_feature=time_feature, hidden_size=16, quiet=True)
    program = stream_x.make_train(config)
    state, key = program.init(jax.random.PRNGKey(0))
    # The output layer starts at zero (V = 0 everywhere, which could not tell observations apart): random
    # parameters instead. With α = 1e-30 they stay these to float32 precision, so V of any observation is known.
    leaves, tree = jax.tree.flatten(state.params)
    params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape) for k, x in
                                       zip(jax.random.split(jax.random.PRNGKey(1), len(leaves)), leaves)])
    jax.block_until_ready(jax.jit(program.update)((state._replace(params=params), key), 0))
    jax.effects_barrier()
    assert len(calls) == 30
    num_outputs = (2 if learner == "q" else 1)
    network = stream_x.StreamNetwork(num_outputs, config.hidden_size, config.num_layers, False, config.sparsity)
    value_params = params if learner == "q" else params["critic"]

    def with_feature(obs):
        return np.append(obs, obs[0] / TIME_LIMIT - 0.5).astype(np.float32) if time_feature else obs

    def value_of(obs):
        return float(network.apply(value_params, jnp.asarray(with_feature(obs))).max())

    seen = {"term": 0, "trunc": 0}
    for (transition, value, next_value, gamma, _), delta in calls:
        t, kind, term, trunc, next_obs = steps_from_rewards(transition.reward)
        seen["term"] += int(term)
        seen["trunc"] += int(trunc)
        assert transition.terminated == term and transition.truncated == trunc
        np.testing.assert_array_equal(transition.final_obs, with_feature(next_obs))  # the true next obs
        np.testing.assert_allclose(next_value, value_of(next_obs), **TOLERANCE)
        stop = term or (trunc and time_feature)
        np.testing.assert_allclose(delta, transition.reward + (0.0 if stop else gamma * value_of(next_obs)) - value,
                                   **TOLERANCE)
    assert seen["term"] and seen["trunc"]
    assert_values_tell_apart(value_of)
    if time_feature:  # the timeout's final observation shows the limit reached: 0.5
        assert with_feature(TIMEOUT_OBS)[-1] == 0.5


# ----------------------------------------------------------------------------------------------------
# SQIRL: finite horizon, every episode end is terminal (the authors' choice): pinned


@pytest.mark.slow
def test_sqirl_stops_returns_and_backups_at_every_episode_end(two_endings, monkeypatch):
    calls = record(monkeypatch, sqirl, "head_targets")
    horizon = 5  # longer than the env's episodes: after an end, the env auto-resets inside the horizon
    config = dataclasses.replace(sqirl.PRESETS["lock"], env_id="CartPole-v1", horizon=horizon,
                                 episodes_per_iteration=8, num_epochs=2, batch_size=16, hidden_size=16,
                                 num_eval_envs=2, num_evals=1, gamma=GAMMA, quiet=True)
    program = sqirl.make_train(config)
    carry = jax.jit(program.update)(program.init(jax.random.PRNGKey(0)), 0)[0]
    jax.effects_barrier()

    buffer = jax.tree.map(lambda x: np.asarray(x)[0], carry[2])  # iteration 0's slot: [H, episodes]
    kind = buffer.obs[0, :, 1].astype(int)
    assert (kind == 0).any() and (kind == 1).any()
    for episode, k in enumerate(kind):
        length = TERMINAL_AT if k else TIME_LIMIT
        steps = np.arange(1, length + 1)
        np.testing.assert_array_equal(buffer.obs[:length, episode], np.stack([steps - 1, 0 * steps + k, 1 + 0 * steps], -1))
        np.testing.assert_array_equal(buffer.done[:length, episode], steps == length)  # a timeout too
        np.testing.assert_array_equal(buffer.valid[:, episode], np.arange(horizon) < length)  # the next episode: never
        rewards = steps + 10.0 * k
        expected = [sum(GAMMA ** (j - i) * rewards[j] for j in range(i, length)) for i in range(length)]
        np.testing.assert_allclose(buffer.mc_return[:length, episode], expected, **TOLERANCE)  # no next episode

    assert calls
    for (next_q, reward, done, mc_return, gamma), targets in calls:
        np.testing.assert_array_equal(targets[:, 0], mc_return)
        np.testing.assert_array_equal(targets[done, 1:], np.broadcast_to(reward[done, None], targets[done, 1:].shape))
        np.testing.assert_allclose(targets[~done, 1:], reward[~done, None] + gamma * next_q[~done, :-1].max(-1),
                                   **TOLERANCE)
    assert any(done.any() for (_, _, done, _, _), _ in calls)


# ----------------------------------------------------------------------------------------------------
# IWOCS: its SAC's rollout -> replay -> soft and unregularized critic targets


@pytest.mark.slow
def test_iwocs_sac_targets_bootstrap_from_the_final_observation(two_endings, monkeypatch):
    two_endings["continuous"] = True

    class OneModel:  # the uncertainty set of the one model TwoEndings has
        name, env_id = "two-endings", "Pendulum-v1"

        @staticmethod
        def apply(env, env_params, values):
            return env_params

    monkeypatch.setattr(envs, "uncertainty_set", lambda name: OneModel)
    calls = record(monkeypatch, iwocs, "critic_targets")
    config = dataclasses.replace(iwocs.PRESETS["pendulum"], env_id="Pendulum-v1", num_envs=4, total_timesteps=400,
                                 learning_starts=16, batch_size=32, hidden_size=16, gamma=GAMMA, reward_scale=1.0,
                                 normalize_observations=False, quiet=True)
    train = iwocs.make_sac(config, 48, randomize=False)
    jax.block_until_ready(jax.jit(train)(jax.random.PRNGKey(0), jnp.zeros(2), jnp.int32(0)))
    jax.effects_barrier()

    assert calls
    seen = {"term": 0, "trunc": 0}
    for (batch, next_soft_q_min, next_log_prob, next_plain_q, alpha, gamma, reward_scale), (soft, plain) in calls:
        _, _, term, trunc, next_obs = steps_from_rewards(batch.reward)
        seen["term"] += term.sum()
        seen["trunc"] += trunc.sum()
        np.testing.assert_array_equal(batch.terminated, term)
        np.testing.assert_array_equal(batch.next_obs, next_obs)  # the true next obs, never [0, k, 1]
        np.testing.assert_array_equal(soft[term], batch.reward[term])
        np.testing.assert_array_equal(plain[term], batch.reward[term])
        np.testing.assert_allclose(soft[~term], (batch.reward + gamma * (next_soft_q_min - alpha * next_log_prob))[~term],
                                   **TOLERANCE)
        np.testing.assert_allclose(plain[~term], (batch.reward + gamma * next_plain_q)[~term], **TOLERANCE)
    assert seen["term"] and seen["trunc"]


# ----------------------------------------------------------------------------------------------------
# QARL: both players' phases -> their replay buffers (true next observations, the temperature feature) ->
# critic targets; the horizon (phase_steps) is the time limit


class NoForces(envs.Wrapper):
    """Stands in for envs.AdversarialForces on TwoEndings: takes (protagonist, adversary) actions, ignores the
    adversary's (TwoEndings' rewards do not depend on actions anyway)."""

    adversary_action_dim, max_force = 2, 1.0

    def __init__(self, env, max_force=None):
        super().__init__(env)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action[0], params)
        return obs, state, reward, terminated, truncated, {**info, "adversary_reward": -reward}


@pytest.mark.slow
def test_qarl_buffers_and_targets_of_both_players_at_the_horizon(two_endings, monkeypatch):
    two_endings["continuous"] = True

    class OneModel:  # the grid set's env must be the config's
        name, env_id, dim = "two-endings", "Pendulum-v1", 1

    monkeypatch.setattr(envs, "uncertainty_set", lambda name: OneModel)
    monkeypatch.setattr(envs, "AdversarialForces", NoForces)
    calls = record(monkeypatch, qarl, "critic_targets")
    config = dataclasses.replace(qarl.PRESETS["pendulum"], phase_steps=TIME_LIMIT, num_envs=4, total_timesteps=48,
                                 learning_starts=8, actor_starts=8, batch_size=16, hidden_size=16, gamma=GAMMA,
                                 curriculum_batch=8, num_evals=1, num_eval_envs=2, quiet=True)
    program = qarl.make_train(config)
    (state, _), _ = jax.jit(lambda c: jax.lax.scan(program.update, c, jnp.arange(4)))(
        program.init(jax.random.PRNGKey(0)))
    jax.effects_barrier()

    # Each player's buffer, written by the phases: the adversary's reward is the negated protagonist reward;
    # next_obs is the env's true next observation (then the episode's temperature feature), never [0, k, 1].
    for name, sign in (("protagonist_buffer", 1.0), ("adversary_buffer", -1.0)):
        buffer = getattr(state, name)
        size = int(buffer.size)
        data = jax.tree.map(lambda x: np.asarray(x)[:size], buffer.data)
        t, kind, term, trunc, next_obs = steps_from_rewards(sign * data.reward)
        assert term.any() and trunc.any(), name
        np.testing.assert_array_equal(data.terminated, term)  # the horizon is not stored as terminal
        np.testing.assert_array_equal(data.next_obs[:, :3], next_obs)
        np.testing.assert_array_equal(data.next_obs[:, 3], data.obs[:, 3])  # one temperature per episode
        assert (t >= 1).all() and (t <= TIME_LIMIT).all()  # no idle step after a terminal one was stored

    # The targets of every update, of either player: a terminal step's is its reward; the horizon bootstraps.
    assert calls
    seen = {"term": 0, "trunc": 0}
    for (reward, terminated, next_q_min, next_entropy_term, gamma), targets in calls:
        _, _, term, trunc, _ = steps_from_rewards(np.abs(reward))
        seen["term"] += term.sum()
        seen["trunc"] += trunc.sum()
        np.testing.assert_array_equal(terminated, term)
        np.testing.assert_array_equal(targets[term], reward[term])
        np.testing.assert_allclose(targets[~term], (reward + gamma * (next_q_min - next_entropy_term))[~term],
                                   **TOLERANCE)
    assert seen["term"] and seen["trunc"]
