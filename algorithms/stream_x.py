"""stream-x: stream Q(λ), stream AC(λ) and stream TD(λ), deep RL with batch size one.

Elsayed, Vasan & Mahmood, "Streaming Deep Reinforcement Learning Finally Works" (2024, arXiv 2410.14606).
A streaming learner sees each transition once, updates on it at once and forgets it: no replay buffer, no
batches, no target network. The stream-x techniques that make this stable are written once in this file
and shared by its three learners:
- ObGD, overshooting-bounded gradient descent with eligibility traces: z <- γλ z + ∇f, then
  w <- w + α_eff δ z, where α_eff = α / M if M = α κ max(|δ|, 1) ||z||_1 exceeds 1 and α otherwise, so
  that one update cannot overshoot the TD target (`obgd_update`);
- sparse initialization (each unit keeps 10% of its inputs), LayerNorm without learned scale or bias over
  the whole feature tensor, LeakyReLU (`StreamNetwork`);
- running observation normalization, reward scaling and a time feature (wrappers in envs/normalization.py).
Learners: stream Q(λ) (control: ε-greedy, traces cut after exploratory actions), stream AC(λ)
(actor-critic: softmax or Gaussian policy, entropy bonus with the sign of δ) and stream TD(λ) (prediction,
on a task whose true values are known). A run is one `lax.scan` over single steps; seeds, and optionally
a small grid of one hyperparameter, are vmapped, so dozens of learners train in one program.

Time limits. With the time feature (`--time-feature`, the default for flat observations) the elapsed
fraction of the time limit is part of the state, so reaching the limit is a terminal state: a timeout
does not bootstrap (as the authors, and the consistent choice: Pardo et al. 2018; bootstrapping there
would query V at a time input past every state it trains on). Without the time feature a timeout is a
truncation and bootstraps from V of the true final observation. MinAtar (`minatar-q`) runs without the
time feature and, as the authors' runs on the original MinAtar, without a time limit (`--no-time-limit`:
gymnax would cut episodes at 1000 steps, Freeway at 2500).

Run (from the repository root):
    python algorithms/stream_x.py                                 # stream Q(λ) on CartPole-v1
    python algorithms/stream_x.py --preset pendulum-ac --num-seeds 8
    python algorithms/stream_x.py --preset td --sweep td_lambda=0.0,0.4,0.8,0.95   # one run dir per value
    python algorithms/stream_x.py --preset minatar-q --env-id SpaceInvaders-MinAtar
    python algorithms/stream_x.py --resume runs/stream_x_CartPole-v1_...   # continue a run from its last checkpoint

Logged per row (metrics_seed<i>.csv; a row is total_timesteps / num_log_rows steps): env_steps,
episode_return / episode_length (mean over the episodes that finished in the row, NaN if none; unscaled
reward), episodes (how many finished), abs_td_error (mean |δ|), step_size (mean effective ObGD step of
the value/Q optimizer: α when the bound is inactive), and per learner epsilon (q), policy_step_size (ac),
rms_error (td: root-mean-square error of V against the true values over all states, at the row's end).
summary.json's final_return is the mean return of the training episodes that finished in the last 10% of
the run (streaming learners have no separate evaluation in the paper); for td it also has final_rms_error.

Where this file still differs from the authors' code (github.com/mohmdelsayed/streaming-drl at 407dca7),
and why (the learners, ObGD, the network, the normalizers and the presets' values otherwise follow it):
- Environments: gymnax and brax, not gymnasium (the whole run is one JAX program). CartPole keeps gymnax's
  500-step limit (the authors raise it to 10,000), so its time feature counts to 500. brax hopper and
  halfcheetah stand in for MuJoCo's (the paper's MuJoCo numbers are not brax's). MinAtar is gymnax's port
  with the minimal action set (as their `MinAtar/<Game>-v1`); no Atari (the ALE is not in JAX).
- Without the time feature a timeout bootstraps (a truncation: the state does not show the time); the
  authors stop at every episode end. Their runs without the time feature (MinAtar) have no time limit, so
  this differs only for a user's `--no-time-feature` where the env has one.
- The time feature is exactly t / T - 0.5, the elapsed fraction, so a timeout's final observation shows
  0.5 (theirs appends before counting the step: -0.5 on the first two observations of an episode).
- Sticky actions (MinAtar, p = 0.1) come from a wrapper that restarts the previous action at no-op every
  episode, as the ALE does; MinAtar carries it over from the last episode (this can change only an
  episode's first step, with probability 0.1).
- stream TD: the authors' task is ETTm2 oil-temperature prediction (observation: an electricity
  transformer's 6 load readings and oil temperature; cumulant: the next oil temperature, min-max scaled;
  one 68k-step pass, observation traces β = 0.999, observation normalization, reward scaling, hidden
  128). It needs a download (github.com/zhouhaoyi/ETDataset) and its true values are unknown, so the `td`
  preset stands in the 19-state random walk, whose true values are exact (`rms_error`), without
  normalization or scaling (they would change the values to be learned).
- Running statistics are float32 (theirs float64: JAX's default precision); random streams are JAX's.
"""

from __future__ import annotations

import dataclasses
import sys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py and envs/
# runner first: on a multi-host launch it starts jax.distributed before gymnax touches the devices
import runner  # noqa: E402
import envs  # noqa: E402

NAME = Path(__file__).stem  # the algorithm's name in run directories and summaries: a copy names itself

@dataclass(frozen=True)
class Config:
    """stream-x hyperparameters. Every field is a command-line flag (`--td-lambda 0.9`)."""

    preset: Literal["cartpole-q", "minatar-q", "cartpole-ac", "pendulum-ac", "brax-hopper-ac",
                    "brax-halfcheetah-ac", "brax-walker2d-ac", "dmc-cheetah-ac", "td"] = "cartpole-q"
    """Named settings; other flags override them."""
    learner: Literal["q", "ac", "td"] = "q"
    """q: stream Q(λ) (discrete actions); ac: stream AC(λ) (discrete or continuous); td: stream TD(λ)."""
    env_id: str = "CartPole-v1"
    """Environment id: a gymnax id, brax/<name>, dmc/<Task>, or RandomWalk-v0 (the td task with known values)."""
    seed: int = 0
    """Base seed; run i uses the key fold_in(PRNGKey(seed), i), the same whatever --num-seeds (a batch of one and
    of several seeds are different float programs: run 0's numbers agree up to rounding that learning can grow)."""
    num_seeds: int = 1
    """Independent learners, trained together as one vmapped program."""
    total_timesteps: int = 500_000
    """Environment steps (= updates) per learner."""
    lr: float = 1.0
    """ObGD step size α (the same for every optimizer, as the authors)."""
    gamma: float = 0.99
    """Discount factor (also the discount of the reward-scaling trace)."""
    td_lambda: float = 0.8
    """λ of the eligibility traces."""
    kappa: float = 2.0
    """ObGD κ of the value optimizer (Q for q, V for ac and td)."""
    kappa_policy: float = 3.0
    """ObGD κ of the policy optimizer (ac)."""
    entropy_coeff: float = 0.01
    """Entropy bonus of the policy (ac), applied with the sign of δ."""
    eps_start: float = 1.0
    """ε of the ε-greedy policy at the start (q)."""
    eps_finish: float = 0.01
    """ε after the decay (q)."""
    exploration_fraction: float = 0.05
    """Fraction of the steps over which ε decays linearly (q)."""
    reset_traces_on_explore: bool = True
    """Cut the traces after a non-greedy action, as Watkins's Q(λ) and the authors' code (always, since d8bf7d0) (q)."""
    network: Literal["mlp", "cnn"] = "mlp"
    """mlp: [Dense -> LayerNorm -> LeakyReLU] x num_layers; cnn: the MinAtar Conv(16, 3x3) first."""
    hidden_size: int = 32
    """Units per hidden layer (authors: 32 classic control, 128 MuJoCo and MinAtar)."""
    num_layers: int = 2
    """Hidden Dense layers (after the conv layer for cnn)."""
    sparsity: float = 0.9
    """Fraction of each unit's inputs set to zero at initialization."""
    normalize_observations: bool = True
    """Running per-dimension observation normalization."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return."""
    time_feature: bool = True
    """Append the elapsed fraction of the time limit to the observation (flat observations only). It makes the
    time limit part of the state: a timeout is then terminal (no bootstrap); without it, a timeout bootstraps."""
    time_limit: bool = True
    """Keep the env's time limit; --no-time-limit (MinAtar only) gives the original MinAtar's uncapped episodes."""
    sticky_action_prob: float = 0.0
    """Probability of repeating the previous action (MinAtar's sticky actions; discrete actions)."""
    backend: str = "generalized"
    """Physics backend for brax ids: generalized, positional, spring or mjx."""
    num_log_rows: int = 200
    """Rows of logged metrics over the run (each averages total_timesteps / num_log_rows steps)."""
    run_dir: str | None = None
    """Output directory; default runs/stream_x_<env>_<time>."""
    quiet: bool = False
    """No progress lines and no progress.csv (the compiled program then has no host callback, so JAX's
    persistent compilation cache can keep it)."""
    tensorboard: bool = False
    """Also write TensorBoard logs (one series per seed)."""
    wandb: bool = False
    """Also log to Weights & Biases (WANDB_MODE=offline works)."""
    wandb_project: str = "jax-rl-collection"
    """wandb project name."""
    sweep: str = ""
    """Train every value of one hyperparameter in one vmapped program, e.g. lr=1e-4,3e-4 (see SWEEPABLE)."""
    num_checkpoints: int = 10
    """Times the whole training state is saved during the run (RUN_DIR/resume.npz), for --resume: the run is cut
    into the most equal chunks <= this that divide its update count (one compiled chunk), so it can be fewer;
    the start-up line says how many."""
    resume: bool = False
    """Set by `--resume RUN_DIR`, which continues that run from its last saved state."""


# Hyperparameters that `--sweep` can vary inside one vmapped program (they enter the run as numbers).
SWEEPABLE = ("lr", "td_lambda", "kappa", "kappa_policy", "entropy_coeff")


# Where each value comes from (the authors' scripts' defaults at 407dca7, github.com/mohmdelsayed/streaming-drl):
# α 1, γ 0.99, λ 0.8, κ 2 (value) and 3 (policy), entropy 0.01, ε 1 -> 0.01 over 5% of the steps: every script.
# cartpole-q: stream_q.py (hidden 32, 500k steps). cartpole-ac: stream_ac_discrete.py (hidden 32, 500k steps).
# brax-*-ac: stream_ac_continuous.py (hidden 128, 2M steps; MuJoCo there). dmc-cheetah-ac: the same script's
# values on DMC cheetah run, one of the paper's DMC tasks (the script's default run is 2M steps; the paper's DMC
# curves run longer). minatar-q: stream_q_minatar.py, 5M steps and ε over 20% of them (407dca7: "to match the
# one used to produce the figures"), Conv(16, 3x3) -> 128, no time feature; sticky actions 0.1 and no episode
# cap are the original MinAtar's (minatar/environment.py, its gymnasium registration has no max_episode_steps). pendulum-ac is ours (Pendulum is not in the paper). td
# stands in for the authors' ETTm2 task (stream_td.py; see the docstring): γ, λ, κ and α are theirs, the random
# walk, hidden 32 (its 19 one-hot inputs) and 50k steps are ours.
PRESETS = {
    "cartpole-q": Config(),
    "minatar-q": Config(
        preset="minatar-q", env_id="Breakout-MinAtar", total_timesteps=5_000_000, exploration_fraction=0.2,
        network="cnn", hidden_size=128, num_layers=1, time_feature=False, sticky_action_prob=0.1, time_limit=False,
    ),
    "cartpole-ac": Config(preset="cartpole-ac", learner="ac"),
    "pendulum-ac": Config(preset="pendulum-ac", learner="ac", env_id="Pendulum-v1", total_timesteps=200_000,
                          hidden_size=128),
    "brax-hopper-ac": Config(preset="brax-hopper-ac", learner="ac", env_id="brax/hopper",
                             total_timesteps=2_000_000, hidden_size=128),
    "brax-halfcheetah-ac": Config(preset="brax-halfcheetah-ac", learner="ac", env_id="brax/halfcheetah",
                                  total_timesteps=2_000_000, hidden_size=128),
    "brax-walker2d-ac": Config(preset="brax-walker2d-ac", learner="ac", env_id="brax/walker2d",
                               total_timesteps=2_000_000, hidden_size=128),
    "dmc-cheetah-ac": Config(preset="dmc-cheetah-ac", learner="ac", env_id="dmc/CheetahRun",
                             total_timesteps=2_000_000, hidden_size=128),
    "td": Config(preset="td", learner="td", env_id="RandomWalk-v0", total_timesteps=50_000,
                 normalize_observations=False, scale_rewards=False, time_feature=False),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    num_rows: int  # logged rows
    steps_per_row: int
    total_steps: int  # per learner: num_rows * steps_per_row
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    for name in ("num_seeds", "num_layers", "hidden_size", "num_log_rows"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    for name in ("gamma", "td_lambda", "eps_start", "eps_finish", "exploration_fraction", "sticky_action_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise runner.ConfigError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    if not 0.0 <= config.sparsity < 1.0:
        raise runner.ConfigError(f"sparsity must be in [0, 1), got {config.sparsity}.")
    for name in ("lr", "kappa", "kappa_policy"):
        if getattr(config, name) <= 0:
            raise runner.ConfigError(f"{name} must be positive, got {getattr(config, name)}.")
    num_rows = min(config.num_log_rows, config.total_timesteps)
    if num_rows < 1:
        raise runner.ConfigError(f"total_timesteps must be at least 1, got {config.total_timesteps}.")
    steps_per_row = config.total_timesteps // num_rows
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(num_rows, steps_per_row, num_rows * steps_per_row, sweep_name, sweep_values)


class ActionSpec(NamedTuple):
    discrete: bool
    size: int  # number of actions (discrete) or action dimensions (continuous)


def make_env(config: Config):
    """The training env with the stream-x wrappers, its params and its action spec."""
    kwargs = {"backend": config.backend} if config.env_id.startswith(envs.registry.BRAX_PREFIX) else {}
    if config.time_feature and not config.time_limit:
        raise runner.ConfigError("--time-feature counts towards a time limit: with --no-time-limit use --no-time-feature.")
    env, env_params = envs.make(config.env_id, time_limit=config.time_limit, **kwargs)
    episode_limit = int(env_params.max_steps_in_episode)  # what the time feature counts towards
    if isinstance(env, envs.HorizonCap):  # an `<id>/horizon<H>` id ends episodes at H steps
        episode_limit = min(episode_limit, env.horizon)
    discrete = hasattr(env.action_space(env_params), "n")
    if config.learner == "q":
        size = envs.require_discrete_actions(env, env_params, config.env_id, "stream Q(λ)",
                                             "--learner ac (stream AC(λ)) for continuous actions")
    elif discrete:
        size = int(env.action_space(env_params).n)
    else:
        size = envs.require_continuous_actions(env, env_params, config.env_id, "stream AC(λ)", "--learner q")
    obs_shape = env.observation_space(env_params).shape
    if config.network == "cnn" and len(obs_shape) != 3:
        raise runner.ConfigError(f"--network cnn needs image observations (height, width, channels), but {config.env_id} "
                         f"gives shape {obs_shape}: use --network mlp.")
    if config.network == "cnn" and config.time_feature:
        raise runner.ConfigError("--time-feature appends to flat observations; with --network cnn use --no-time-feature.")
    if config.learner == "td":
        if not hasattr(env, "true_values"):
            raise runner.ConfigError(f"--learner td needs a task with known true values, and {config.env_id} has none: "
                             f"use --env-id RandomWalk-v0 (or --preset td).")
        if config.scale_rewards or config.normalize_observations or config.time_feature:
            raise runner.ConfigError("--learner td measures V against the true values of the raw task: add "
                             "--no-scale-rewards --no-normalize-observations --no-time-feature (as --preset td).")
    if config.sticky_action_prob > 0:
        if not discrete:
            raise runner.ConfigError("--sticky-action-prob needs discrete actions; set it to 0 for continuous ones.")
        env = envs.StickyActions(env, config.sticky_action_prob)
    if not discrete:
        env = envs.ClipAction(env)  # the Gaussian policy is unbounded; the env gets the clipped action
    if config.network == "mlp":
        env = envs.FlattenObservation(env)
    env = envs.EpisodeStatistics(env)  # inside the reward scaling: logged returns stay unscaled
    if config.scale_rewards:
        env = envs.ScaleReward(env, config.gamma)
    if config.normalize_observations:
        env = envs.NormalizeObservation(env)
    if config.time_feature:
        env = envs.AddTimeFeature(env, episode_limit)
    return env, env_params, ActionSpec(discrete, size)


# ----------------------------------------------------------------------------------------------------
# NETWORK: sparse init, parameter-free LayerNorm, LeakyReLU


def sparse_init(sparsity: float) -> Callable:
    """W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then exactly ceil(sparsity * fan_in) of each output unit's
    inputs set to zero, chosen without replacement. fan_in counts every input of a unit (kh * kw * c_in for
    a conv kernel), as the authors' `sparse_init`."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
        key_weights, key_zeros = jax.random.split(key)
        bound = 1.0 / math.sqrt(fan_in)
        weights = jax.random.uniform(key_weights, (fan_in, fan_out), dtype, -bound, bound)
        # A random rank per input within each unit's column; the lowest ceil(sparsity * fan_in) are zeroed.
        rank = jax.random.uniform(key_zeros, (fan_in, fan_out)).argsort(0).argsort(0)
        weights = jnp.where(rank < math.ceil(sparsity * fan_in), 0.0, weights)
        return weights.reshape(shape)

    return init


def layer_norm(x: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """Normalize over the whole feature tensor (all of C*H*W after a conv layer), no learned parameters."""
    return (x - x.mean()) / jnp.sqrt(x.var() + epsilon)


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding="VALID") on one (height, width, channels) image, computed as 3x3
    patches times the same kernel: the same function, 1.5x faster per streaming step on CPU."""

    features: int
    kernel_init: Callable

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        height, width = x.shape[0] - 2, x.shape[1] - 2
        patches = [x[i:i + height, j:j + width] for i in range(3) for j in range(3)]
        return jnp.concatenate(patches, axis=-1) @ kernel.reshape(-1, self.features) + bias


class StreamNetwork(nn.Module):
    """[Dense -> LayerNorm -> LeakyReLU] x num_layers -> Dense(num_outputs), optionally after the MinAtar
    torso Conv(16, 3x3, VALID) -> LayerNorm -> LeakyReLU -> flatten. Sparse init everywhere, biases 0.
    Takes ONE observation (no batch axis): streaming learners see one at a time, and the LayerNorm
    normalizes over everything it is given."""

    num_outputs: int
    hidden_size: int
    num_layers: int
    conv: bool
    sparsity: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        init = sparse_init(self.sparsity)
        x = obs.astype(jnp.float32)
        if self.conv:
            x = Conv3x3(16, init)(x)
            x = nn.leaky_relu(layer_norm(x), 0.01).reshape(-1)
        for _ in range(self.num_layers):
            x = nn.leaky_relu(layer_norm(nn.Dense(self.hidden_size, kernel_init=init)(x)), 0.01)
        return nn.Dense(self.num_outputs, kernel_init=init)(x)


# ----------------------------------------------------------------------------------------------------
# ObGD


def obgd_update(params, traces, grads, delta, lr, kappa, trace_decay, reset):
    """One step of ObGD (the paper's Algorithm 3), for ascent on f with error δ:

        z <- γλ z + ∇f;   M = α κ max(|δ|, 1) ||z||_1;   α_eff = α / M if M > 1 else α;   w <- w + α_eff δ z

    then z <- 0 where `reset` (episode end; exploratory action for Q): after the update, as the authors'
    code. Returns (params, traces, α_eff).
    """
    traces = jax.tree.map(lambda z, g: trace_decay * z + g, traces, grads)
    trace_norm = sum(jnp.abs(z).sum() for z in jax.tree.leaves(traces))
    bound = lr * kappa * jnp.maximum(jnp.abs(delta), 1.0) * trace_norm
    step_size = jnp.where(bound > 1.0, lr / bound, lr)
    params = jax.tree.map(lambda w, z: w + step_size * delta * z, params, traces)
    traces = jax.tree.map(lambda z: jnp.where(reset, 0.0, z), traces)
    return params, traces, step_size


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array  # as the learner sees it (scaled when --scale-rewards)
    terminated: jax.Array
    truncated: jax.Array
    final_obs: jax.Array  # the true next observation (the last one of the episode where it ended)


def td_error(t: Transition, value, next_value, gamma: float, bootstrap_truncation: bool):
    """δ = r + γ V(s') - V(s), with V(s') = value of the true next observation; no bootstrap at
    termination, nor at truncation when `bootstrap_truncation` is off. The learners pass
    `not config.time_feature`: with the time feature a timeout is a terminal state (see the docstring)."""
    stop = t.terminated | (t.truncated & (not bootstrap_truncation))
    return t.reward + gamma * (1.0 - stop.astype(jnp.float32)) * next_value - value


class LearnerState(NamedTuple):
    params: Any  # q, td: the value network's; ac: {"actor": ..., "critic": ...}
    traces: Any  # eligibility traces, the same structure as params
    env_state: Any  # includes the running normalization statistics
    obs: jax.Array
    step: jax.Array  # env steps taken


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build one learner's whole run as a `runner.Program`: `make_train(config)(key) -> (LearnerState, metrics)`
    runs it in one jittable scan over logged rows; `runner.run_program` runs it in checkpointed chunks (init,
    then `update`, one logged row of steps_per_row agent steps, scanned).

    Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the swept field traced.
    `progress`, if given, is called from inside the run every logged row. Bad configs raise here, before
    anything is compiled.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    env, env_params, action_spec = make_env(config)
    obs_shape = env.observation_space(env_params).shape
    conv = config.network == "cnn"

    def network(num_outputs):
        return StreamNetwork(num_outputs, config.hidden_size, config.num_layers, conv, config.sparsity)

    value_net = network(action_spec.size if config.learner == "q" else 1)
    actor = network(action_spec.size * (1 if action_spec.discrete else 2))
    exploration_steps = config.exploration_fraction * sizes.total_steps
    bootstrap_truncation = not config.time_feature  # with the time feature, the time limit is part of the state
    true_values = all_obs = None
    if config.learner == "td":
        true_values, all_obs = jnp.asarray(env.true_values(config.gamma)), jnp.asarray(env.all_observations())

    def value(params, obs):
        return value_net.apply(params, obs)[0]

    def policy(actor_params, obs):
        out = actor.apply(actor_params, obs)
        if action_spec.discrete:
            return distrax.Categorical(logits=out)
        mean, pre_std = jnp.split(out, 2)
        return distrax.Normal(mean, jax.nn.softplus(pre_std))

    def env_step(key, env_state, action):
        next_obs, env_state, reward, terminated, truncated, info = env.step(key, env_state, action, env_params)
        return next_obs, env_state, info, Transition(None, action, reward, terminated, truncated,
                                                     info["final_observation"])

    # STREAM Q(λ)
    def q_step(state: LearnerState, key):
        key_explore, key_random, key_env = jax.random.split(key, 3)
        q_values, q_vjp = jax.vjp(lambda p: value_net.apply(p, state.obs), state.params)
        greedy = q_values.argmax()
        # Linear from eps_start, counting the current step as the authors (their first action uses t = 1).
        epsilon = config.eps_start + (config.eps_finish - config.eps_start) * jnp.clip(
            (state.step + 1) / max(exploration_steps, 1.0), 0.0, 1.0)
        explore = jax.random.uniform(key_explore) < epsilon
        action = jnp.where(explore, jax.random.randint(key_random, (), 0, action_spec.size), greedy)
        next_obs, env_state, info, t = env_step(key_env, state.env_state, action)
        (grads,) = q_vjp(jax.nn.one_hot(action, action_spec.size))  # ∇_w Q(s, a)
        # δ = r + γ max_a' Q(s', a') - Q(s, a), with the parameters before the update
        next_q = value_net.apply(state.params, t.final_obs).max()
        delta = td_error(t, q_values[action], next_q, config.gamma, bootstrap_truncation)
        reset = t.terminated | t.truncated | (config.reset_traces_on_explore & (action != greedy))
        params, traces, step_size = obgd_update(state.params, state.traces, grads, delta, config.lr, config.kappa,
                                                config.gamma * config.td_lambda, reset)
        return LearnerState(params, traces, env_state, next_obs, state.step + 1), info, {
            "abs_td_error": jnp.abs(delta), "step_size": step_size, "epsilon": epsilon}

    # STREAM AC(λ)
    def ac_step(state: LearnerState, key):
        key_action, key_env = jax.random.split(key)
        params, traces = state.params, state.traces
        action = policy(params["actor"], state.obs).sample(seed=key_action)
        next_obs, env_state, info, t = env_step(key_env, state.env_state, action)
        # δ once, before both updates: δ = r + γ V(s') - V(s)
        v, value_grads = jax.value_and_grad(value)(params["critic"], state.obs)
        delta = td_error(t, v, value(params["critic"], t.final_obs), config.gamma, bootstrap_truncation)

        def policy_objective(actor_params):  # log π(a|s) + c sign(δ) H(π(·|s)), ascended with step δ
            dist = policy(actor_params, state.obs)
            return dist.log_prob(action).sum() + config.entropy_coeff * jnp.sign(delta) * dist.entropy().sum()

        policy_grads = jax.grad(policy_objective)(params["actor"])
        reset = t.terminated | t.truncated
        trace_decay = config.gamma * config.td_lambda
        critic, critic_traces, step_size = obgd_update(params["critic"], traces["critic"], value_grads, delta,
                                                       config.lr, config.kappa, trace_decay, reset)
        actor_params, actor_traces, policy_step_size = obgd_update(
            params["actor"], traces["actor"], policy_grads, delta, config.lr, config.kappa_policy, trace_decay, reset)
        state = LearnerState({"actor": actor_params, "critic": critic},
                             {"actor": actor_traces, "critic": critic_traces}, env_state, next_obs, state.step + 1)
        return state, info, {"abs_td_error": jnp.abs(delta), "step_size": step_size,
                             "policy_step_size": policy_step_size}

    # STREAM TD(λ)
    def td_step(state: LearnerState, key):
        key_action, key_env = jax.random.split(key)
        action = env.action_space(env_params).sample(key_action)  # the task's fixed policy
        next_obs, env_state, info, t = env_step(key_env, state.env_state, action)
        v, grads = jax.value_and_grad(value)(state.params, state.obs)
        delta = td_error(t, v, value(state.params, t.final_obs), config.gamma, bootstrap_truncation)
        params, traces, step_size = obgd_update(state.params, state.traces, grads, delta, config.lr, config.kappa,
                                                config.gamma * config.td_lambda, t.terminated | t.truncated)
        return LearnerState(params, traces, env_state, next_obs, state.step + 1), info, {
            "abs_td_error": jnp.abs(delta), "step_size": step_size}

    agent_step = {"q": q_step, "ac": ac_step, "td": td_step}[config.learner]

    def init(key):
        key, key_value, key_actor, key_reset = jax.random.split(key, 4)
        obs, env_state = env.reset(key_reset, env_params)
        params = value_net.init(key_value, jnp.zeros(obs_shape))
        if config.learner == "ac":
            params = {"actor": actor.init(key_actor, jnp.zeros(obs_shape)), "critic": params}
        traces = jax.tree.map(jnp.zeros_like, params)
        return LearnerState(params, traces, env_state, obs, jnp.int32(0)), key

    def update(carry, row_index):  # one logged row: steps_per_row agent steps
        state, key = carry
        key, key_row = jax.random.split(key)

        def step(state, key):
            state, info, stats = agent_step(state, key)
            return state, (info["episode_done"], info["episode_return"], info["episode_length"], stats)

        state, (done, returns, lengths, stats) = jax.lax.scan(
            step, state, jax.random.split(key_row, sizes.steps_per_row))

        # LOG
        metrics = {
            "env_steps": (row_index + 1) * sizes.steps_per_row,
            "episode_return": envs.mean_over_finished(returns, done),
            "episode_length": envs.mean_over_finished(lengths, done),
            "episodes": done.sum(),
            **{name: values.mean() for name, values in stats.items()},
        }
        if config.learner == "td":
            predicted = jax.vmap(value, in_axes=(None, 0))(state.params, all_obs)
            metrics["rms_error"] = jnp.sqrt(jnp.mean((predicted - true_values) ** 2))
        if progress is not None:
            shown = ("env_steps", "episode_return", "abs_td_error") + (("rms_error",) if "rms_error" in metrics
                                                                       else ())
            jax.debug.callback(lambda m: progress(**m), {k: metrics[k] for k in shown})
        return (state, key), metrics

    def evaluation_action(params, obs):
        """The policy the learner converged to, without exploration: greedy in Q, or the mode of π."""
        if config.learner == "q":
            return value_net.apply(params, obs).argmax()
        out = actor.apply(params["actor"], obs)
        return out.argmax() if action_spec.discrete else jnp.split(out, 2)[0]

    def train(key):
        """The whole run, one jittable function of a key: `jax.jit(jax.vmap(make_train(config)))(keys)`."""
        carry, metrics = jax.lax.scan(update, init(key), jnp.arange(sizes.num_rows))
        return carry[0], metrics

    return runner.Program(init, update, sizes.num_rows, train, result=lambda carry: carry[0],
                          act=evaluation_action)


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's learned policy without exploration (greedy Q, or π's mode) from its checkpoint, for
    `scripts/evaluate.py`. It acts on fresh envs without the streaming wrappers: observations are normalized with
    the statistics the run ended with (frozen) and get the time feature, as the learner saw them. There is no
    final_return() to redo: the run's final_return is a training return."""
    if config.learner == "td":
        raise runner.ConfigError("--learner td learns the values of a fixed random policy: it has no policy to evaluate.")
    program = make_train(config)
    training_env, _, _ = make_env(config)
    env, env_params, _ = make_env(dataclasses.replace(config, normalize_observations=False, scale_rewards=False,
                                                      time_feature=False))

    def find(tree, name):  # the saved wrapper state holding `name`, however deep in the wrappers
        if isinstance(tree, dict):
            return tree[name] if name in tree else next(
                (found for value in tree.values() if (found := find(value, name)) is not None), None)
        return None

    saved = find(checkpoint["env_state"], "obs_stats")
    stats = envs.RunningMeanStd(saved["mean"], saved["sum_squares"], saved["count"]) if saved else None

    def observe(obs, t):
        if config.normalize_observations:
            obs = envs.NormalizeObservation(env).normalize(obs, stats)
        if config.time_feature:
            obs = training_env.feature(obs, t)  # AddTimeFeature is the outermost wrapper
        return obs

    def act(t, obs, key):
        return program.act(checkpoint["params"], observe(obs, t)), t + 1

    return runner.Policy(env, env_params, act=act, start=lambda obs: jnp.int32(0))


def final_training_return(metrics: dict[str, np.ndarray], fraction: float = 0.1) -> np.ndarray:
    """Per seed: mean return of the episodes that finished in the last `fraction` of the rows."""
    returns, counts = np.asarray(metrics["episode_return"]), np.asarray(metrics["episodes"], dtype=np.float64)
    last = max(int(round(fraction * returns.shape[1])), 1)
    returns, counts = returns[:, -last:], counts[:, -last:]
    total = np.where(counts > 0, np.nan_to_num(returns) * counts, 0.0).sum(1)
    return np.where(counts.sum(1) > 0, total / np.maximum(counts.sum(1), 1), np.nan)


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    training = runner.train(NAME, config, make_train, sizes.total_steps, (sizes.sweep_name, sizes.sweep_values),
                            detail=f"stream {config.learner.upper()}(λ)")
    td = config.learner == "td"
    curve_key = "rms_error" if td else "episode_return"
    summaries = [training.finish(
        run, final_return=final_training_return(run.metrics),
        checkpoint={"params": run.state.params, "traces": run.state.traces, "env_state": run.state.env_state},
        curve_key=curve_key, curve_label="RMS value error" if td else "episode return",
        extra_summary={"final_rms_error": run.metrics["rms_error"][:, -1].tolist()} if td else {},
    ) for run in training.runs]
    if not np.isfinite(np.asarray(training.metrics["abs_td_error"])).all():
        raise SystemExit(
            f"The TD error became NaN/inf. Outputs so far are in {training.run_dir}. Try a larger --kappa (a tighter "
            f"step-size bound), a smaller --lr, or --scale-rewards and --normalize-observations if they are off."
        )
    if not config.quiet:
        runner.report(training, summaries, curve_key, curve_key, final="final training return",
                      extra=lambda s: f"; final RMS error {[round(e, 4) for e in s['final_rms_error']]}" if td else "")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
