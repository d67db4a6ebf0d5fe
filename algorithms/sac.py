"""SAC: soft actor-critic with automatic temperature.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (2018, arXiv 1812.05905). An off-policy
actor-critic that maximises return plus entropy: twin Q networks (the minimum of the two in every target)
with Polyak-averaged target copies, a tanh-squashed Gaussian actor, and a temperature α tuned so that the
policy's entropy stays near a target (-|A| by default, brax's -0.5 |A| in the brax presets). Here many envs
step in parallel into a device-resident replay buffer, each iteration makes `num_envs * updates_per_env_step`
gradient updates, and the whole run, every seed at once, is one jitted function.

Run (from the repository root):
    python algorithms/sac.py                                          # gymnax Pendulum-v1
    python algorithms/sac.py --preset brax-inverted-pendulum
    python algorithms/sac.py --num-seeds 4 --actor-lr 1e-3            # any field below is a flag; see --help
    python algorithms/sac.py --sweep critic_lr=1e-4,3e-4,1e-3         # one vmapped program, one run dir per value
    python algorithms/sac.py --resume runs/sac_Pendulum-v1_...        # continue a run from its last checkpoint

Logged per row (metrics_seed<i>.csv, ~200 rows a run): env_steps (per seed), episode_return /
episode_length (training episodes that finished in that stretch, NaN if none; unscaled reward),
critic_loss, actor_loss, alpha, entropy (-log π of the actions sampled for the actor update), q_mean,
eval_return (deterministic policy tanh(mean) on separate envs, every 1/num_evals of the run, NaN
between). Losses are NaN before learning starts. summary.json's final_return is the last evaluation.

Choices (the paper leaves them open):
- The policy acts in [-1, 1]^|A|; actions are rescaled to the env's bounds when stepping (as SB3, brax),
  so log π and the entropy target live in that box.
- log σ is clipped to [-20, 2] (the authors' softlearning code); the tanh log-det uses the stable form
  2 (log 2 - x - softplus(-2x)) (distrax's Tanh bijector).
- The temperature loss is -α (log π + H_target) with α = exp(log α) (the paper's J(α)); H_target is -|A|
  (the paper's) unless --target-entropy(-per-action-dim) says otherwise; the brax and dmc presets use brax's -0.5 |A|.
- Replay is a plain ring buffer in this file (20 lines, no extra dependency) rather than flashbax.
- At a time limit the target bootstraps from the true final observation; rejax / Stoix treat them as terminal.
- The last evaluation (final_return) draws its episodes from --seed alone (runner.final_eval_key), the same
  episodes for every seed of the run, so that scripts/evaluate.py can redo it from the checkpoint.

What still differs from brax's SAC (brax 0.14, brax/training/agents/sac) in the brax presets and the dmc-cheetah
preset (MuJoCo Playground's brax SAC config, whose critics' LayerNorm after each hidden ReLU is
--critic-layer-norm here; its num_resets_per_eval has no counterpart, evaluation envs start fresh), and why:
- Evaluation: brax evaluates a stochastic policy by default (deterministic_eval=False); here tanh(mean), the
  paper's evaluation and what eval_return means in every preset of this collection.
- Prefill: brax fills min_replay_size with the initial policy's own (stochastic) actions; here
  learning_starts steps of uniformly random actions (the paper's, softlearning's and SB3's warm-up).
- Truncation: brax zeroes the critic loss of transitions cut by the time limit (drops them); here they
  bootstrap from the true final observation, which keeps them and is unbiased.
- Update order: brax updates α first (its own action sample from the pre-update policy), then the critics
  with the old α, then the actor against the *pre-update* critics; here critics, then the actor against the
  updated critics, then α from the actor's sample (the paper's Algorithm 1 / softlearning order).
- Policy scale: brax σ = softplus(x) + 0.001; here σ = exp(clip(x, -20, 2)) (softlearning's).
- Initialization: brax lecun_uniform kernels; here flax's default lecun_normal (both zero biases).
- Observation normalizer: brax updates its statistics with s_t of each step and divides by std clipped to
  [1e-6, 1e6]; here with s_{t+1} (the true next observation, so final observations count) and sqrt(var + 1e-8).
- Sampling: brax draws all grad_updates_per_step batches of an env step in one call; here one per update
  (both uniform with replacement from the same buffer). Keys and initial parameters differ, so runs are not
  bit-comparable; scripts/compare_brax_sac.py compares the learning curves.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py and envs/
# runner first: on a multi-host launch it starts jax.distributed before gymnax touches the devices
import runner  # noqa: E402
import envs  # noqa: E402

NAME = Path(__file__).stem  # the algorithm's name in run directories and summaries: a copy names itself


@dataclass(frozen=True)
class Config:
    """SAC hyperparameters. Every field is a command-line flag (`--batch-size 512`)."""

    preset: Literal["pendulum", "mountaincar", "brax-inverted-pendulum", "brax-hopper", "brax-walker2d",
                    "brax-halfcheetah", "brax-ant", "dmc-cheetah"] = "pendulum"
    """Named settings; other flags override them."""
    env_id: str = "Pendulum-v1"
    """Environment id: a continuous-action gymnax id (Pendulum-v1, MountainCarContinuous-v0), brax/<name> or
    dmc/<Task> (dmc/CheetahRun, ...)."""
    seed: int = 0
    """Base seed; run i uses the key fold_in(PRNGKey(seed), i), the same whatever --num-seeds (a batch of one and
    of several seeds are different float programs: run 0's numbers agree up to rounding that learning can grow)."""
    num_seeds: int = 1
    """Independent runs, trained together as one vmapped program."""
    total_timesteps: int = 20_000
    """Environment steps per seed."""
    num_envs: int = 1
    """Parallel training environments."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (capped at total_timesteps)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 1_000
    """Environment steps (all envs together) of uniformly random actions before the first update."""
    updates_per_env_step: float = 1.0
    """Gradient updates per environment step; num_envs * this updates per iteration (a whole number)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α."""
    init_alpha: float = 1.0
    """Initial temperature."""
    target_entropy: float | None = None
    """Entropy target; None means target_entropy_per_action_dim * |A|."""
    target_entropy_per_action_dim: float = -1.0
    """H_target per action dimension when target_entropy is None: -1 is the paper's -|A|, -0.5 brax's SAC."""
    hidden_size: int = 256
    """Units per hidden layer (actor and critics)."""
    num_layers: int = 2
    """Hidden layers (actor and critics)."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden ReLU of the critics (brax's q_network_layer_norm, Playground's DMC config)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (logged returns stay unscaled)."""
    normalize_observations: bool = False
    """Normalize network inputs by running mean and std (saved in the checkpoint)."""
    backend: str = "generalized"
    """Physics backend for brax ids: generalized, positional, spring or mjx."""
    num_eval_envs: int = 16
    """Separate environments for the deterministic evaluations."""
    num_evals: int = 10
    """Evaluations during training (the last one, at the end, gives final_return)."""
    run_dir: str | None = None
    """Output directory; default runs/sac_<env>_<time>."""
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
    """Train every value of one hyperparameter in one vmapped program, e.g. critic_lr=1e-4,3e-4 (see SWEEPABLE)."""
    num_checkpoints: int = 10
    """Times the whole training state is saved during the run (RUN_DIR/resume.npz), for --resume: the run is cut
    into the most equal chunks <= this that divide its update count (one compiled chunk), so it can be fewer;
    the start-up line says how many."""
    resume: bool = False
    """Set by `--resume RUN_DIR`, which continues that run from its last saved state."""


# Hyperparameters that `--sweep` can vary inside one vmapped program (they enter the run as numbers).
SWEEPABLE = ("actor_lr", "critic_lr", "alpha_lr", "init_alpha", "gamma", "tau", "reward_scale")


# pendulum / mountaincar: the paper's defaults (lr 3e-4, 256x256, batch 256, γ 0.99, τ 0.005, 1 update per env
# step, H_target = -|A|); the step budgets and the 1e3 random steps are this collection's, for a CPU.
# brax-hopper / brax-walker2d: brax's SAC configs (brax's training colab, notebooks/training.ipynb, `hopper` and
# `walker2d` cells): num_timesteps 6_553_600 / 7_864_320, num_envs 128, batch_size 512 / 128,
# grad_updates_per_step 64 / 32 per 128 env steps (0.5 / 0.25 per env step), reward_scaling 30 / 5, discounting
# 0.997, learning_rate 6e-4 (actor and critics), normalize_observations, min_replay_size 8192 (learning_starts),
# max_replay_size 1048576, num_evals 20; num_eval_envs 128 and τ 0.005 are sac.train's defaults, α's Adam rate 3e-4
# is fixed in brax's sac/train.py, and H_target = -0.5 |A| is brax's sac/losses.py.
# brax-halfcheetah / brax-ant: brax has no SAC config for them: the paper's optimizer settings (lr 3e-4, γ 0.99,
# reward scale 1) with hopper's parallelism, replay, evaluation and brax's H_target.
# brax-inverted-pendulum: the setting measured against brax's own SAC (scripts/compare_brax_sac.py: 64 envs, batch
# 256, 0.5 updates per env step, brax's H_target); its budget and warm-up are this collection's, for a CPU.
# dmc-cheetah: MuJoCo Playground's tuned brax SAC config for the DeepMind Control Suite (mujoco_playground/config/
# dm_control_suite_params.py, brax_sac_config, 0.2.0): num_timesteps 10M for CheetahRun, num_envs 128, batch_size
# 512, learning_rate 1e-3, grad_updates_per_step 8 per 128 env steps (1/16 per env step), discounting 0.99,
# reward_scaling 1, normalize_observations, min_replay_size 8192, max_replay_size 4 * 1048576, num_evals 10,
# q_network_layer_norm (--critic-layer-norm); α's rate, H_target, 256x256 and τ as in brax's SAC above.
# What still differs from brax's SAC in these presets is listed in the module docstring.
_BRAX_SAC = dict(num_envs=128, buffer_size=1_048_576, learning_starts=8_192, normalize_observations=True,
                 target_entropy_per_action_dim=-0.5, num_eval_envs=128, num_evals=20)
PRESETS = {
    "pendulum": Config(),
    "mountaincar": Config(preset="mountaincar", env_id="MountainCarContinuous-v0", total_timesteps=50_000),
    "brax-inverted-pendulum": Config(
        preset="brax-inverted-pendulum", env_id="brax/inverted_pendulum", total_timesteps=50_000, num_envs=64,
        updates_per_env_step=0.5, learning_starts=2_048, target_entropy_per_action_dim=-0.5, num_eval_envs=8,
        num_evals=5,
    ),
    "brax-hopper": Config(
        preset="brax-hopper", env_id="brax/hopper", total_timesteps=6_553_600, batch_size=512,
        updates_per_env_step=0.5, reward_scale=30.0, gamma=0.997, actor_lr=6e-4, critic_lr=6e-4, **_BRAX_SAC,
    ),
    "brax-walker2d": Config(
        preset="brax-walker2d", env_id="brax/walker2d", total_timesteps=7_864_320, batch_size=128,
        updates_per_env_step=0.25, reward_scale=5.0, gamma=0.997, actor_lr=6e-4, critic_lr=6e-4, **_BRAX_SAC,
    ),
    "brax-halfcheetah": Config(
        preset="brax-halfcheetah", env_id="brax/halfcheetah", total_timesteps=5_000_000, updates_per_env_step=0.5,
        **_BRAX_SAC,
    ),
    "brax-ant": Config(
        preset="brax-ant", env_id="brax/ant", total_timesteps=5_000_000, updates_per_env_step=0.5, **_BRAX_SAC,
    ),
    "dmc-cheetah": Config(
        preset="dmc-cheetah", env_id="dmc/CheetahRun", total_timesteps=10_000_000, batch_size=512,
        updates_per_env_step=1 / 16, actor_lr=1e-3, critic_lr=1e-3, critic_layer_norm=True,
        **{**_BRAX_SAC, "buffer_size": 4_194_304, "num_evals": 10},
    ),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    iterations: int  # env steps of all envs; each is followed by the gradient updates
    random_iterations: int  # iterations with uniformly random actions and no update
    updates_per_iteration: int
    buffer_capacity: int
    iterations_per_row: int  # iterations averaged into one metrics row
    num_rows: int
    eval_every: int  # rows between evaluations
    progress_every: int  # rows between progress callbacks
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    for name in ("num_seeds", "num_envs", "batch_size", "num_eval_envs", "num_evals", "hidden_size"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    for name in ("gamma", "tau"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise runner.ConfigError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    if config.init_alpha <= 0:
        raise runner.ConfigError(f"init_alpha must be positive (log α is learned), got {config.init_alpha}.")
    for name in ("actor_lr", "critic_lr"):
        if not getattr(config, name) > 0:
            raise runner.ConfigError(f"{name} must be positive, got {getattr(config, name)}: e.g. "
                             f"--{name.replace('_', '-')} 3e-4.")
    if not config.alpha_lr >= 0:
        raise runner.ConfigError(f"alpha_lr must be at least 0 (0 keeps α at --init-alpha), got {config.alpha_lr}.")
    updates = config.num_envs * config.updates_per_env_step
    if updates < 1 or abs(updates - round(updates)) > 1e-9:
        raise runner.ConfigError(
            f"num_envs * updates_per_env_step ({config.num_envs} * {config.updates_per_env_step} = {updates:g}) "
            f"must be a whole number of updates per iteration, at least 1: change --updates-per-env-step."
        )
    iterations = config.total_timesteps // config.num_envs
    if iterations < 1:
        raise runner.ConfigError(f"total_timesteps ({config.total_timesteps}) must be at least num_envs ({config.num_envs}).")
    if config.learning_starts // config.num_envs >= iterations:
        raise runner.ConfigError(f"learning_starts ({config.learning_starts}) leaves no step of the {config.total_timesteps} "
                         f"(--total-timesteps) for learning, so the run would make no update: lower --learning-starts "
                         f"or raise --total-timesteps.")
    if config.buffer_size < max(config.batch_size, config.num_envs):
        raise runner.ConfigError(f"buffer_size ({config.buffer_size}) must hold at least one batch (--batch-size "
                         f"{config.batch_size}) and one step of every env (--num-envs {config.num_envs}): raise "
                         f"--buffer-size.")
    iterations_per_row = max(iterations // 200, 1)
    num_rows = iterations // iterations_per_row
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(
        iterations=num_rows * iterations_per_row,
        random_iterations=config.learning_starts // config.num_envs,
        updates_per_iteration=int(round(updates)),
        buffer_capacity=min(config.buffer_size, num_rows * iterations_per_row * config.num_envs),
        iterations_per_row=iterations_per_row,
        num_rows=num_rows,
        eval_every=max(num_rows // config.num_evals, 1),
        progress_every=max(num_rows // 100, 1),
        sweep_name=sweep_name,
        sweep_values=sweep_values,
    )


def entropy_target(config: Config, action_dim: int) -> float:
    """H_target of the temperature loss: target_entropy, else target_entropy_per_action_dim * |A|."""
    if config.target_entropy is not None:
        return float(config.target_entropy)
    return config.target_entropy_per_action_dim * float(action_dim)


def make_env(config: Config):
    """The env with its wrappers, its params, the action dimension and the action bounds."""
    kwargs = {"backend": config.backend} if config.env_id.startswith(envs.registry.BRAX_PREFIX) else {}
    env, env_params = envs.make(config.env_id, **kwargs)
    action_dim = envs.require_continuous_actions(
        env, env_params, config.env_id, "SAC", "PQN (algorithms/pqn.py) for discrete actions"
    )
    space = env.action_space(env_params)
    bounds = (jnp.broadcast_to(space.low, (action_dim,)), jnp.broadcast_to(space.high, (action_dim,)))
    return envs.EpisodeStatistics(envs.FlattenObservation(env)), env_params, action_dim, bounds


# ----------------------------------------------------------------------------------------------------
# NETWORKS


class Actor(nn.Module):
    """π(·|s): an MLP giving the mean and log σ of a Gaussian, squashed by tanh."""

    action_dim: int
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for _ in range(self.num_layers):
            x = nn.relu(nn.Dense(self.hidden_size)(x))
        mean = nn.Dense(self.action_dim)(x)
        log_std = jnp.clip(nn.Dense(self.action_dim)(x), -20.0, 2.0)
        return mean, log_std


class Critic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action (optionally LayerNorm after each ReLU)."""

    hidden_size: int
    num_layers: int
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        for _ in range(self.num_layers):
            x = nn.relu(nn.Dense(self.hidden_size)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return nn.Dense(1)(x)[..., 0]


# Two independent critics with one call: parameters stacked on a leading axis of size 2, outputs [2, ...].
TwinCritic = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                     out_axes=0, axis_size=2)


def squashed_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """tanh(u), u ~ N(mean, σ²): log π(a) = log N(u) - Σ log(1 - tanh(u)²), the log-det in its stable form."""
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


# ----------------------------------------------------------------------------------------------------
# TARGETS AND LOSSES (module level, so tests can check them against plain computations)


def critic_targets(reward, terminated, next_q_min, next_log_prob, alpha, gamma: float):
    """y = r + γ (1 - term) [min_i Q̄_i(s', a') - α log π(a'|s')], a' ~ π(·|s'), s' the true next state.

    At a time limit s' is the final observation and the target bootstraps; only termination cuts it.
    """
    return reward + gamma * (1.0 - terminated) * (next_q_min - alpha * next_log_prob)


def temperature_loss(log_alpha, log_prob, target_entropy: float):
    """J(α) = E[-α (log π(a|s) + H_target)]: α grows when the entropy -log π is below the target."""
    return -(jnp.exp(log_alpha) * jax.lax.stop_gradient(log_prob + target_entropy)).mean()


# ----------------------------------------------------------------------------------------------------
# REPLAY BUFFER AND OBSERVATION NORMALIZER


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array  # in [-1, 1]^|A|, before rescaling to the env's bounds
    reward: jax.Array  # unscaled
    terminated: jax.Array
    next_obs: jax.Array  # the true next observation (the final one where the episode ended)


class Buffer(NamedTuple):
    data: Transition  # every field has a leading axis of size capacity
    position: jax.Array  # where the next transition goes
    size: jax.Array


def buffer_add(buffer: Buffer, batch: Transition) -> Buffer:
    """Write a batch of transitions at the ring position, overwriting the oldest when full."""
    capacity, count = buffer.data.reward.shape[0], batch.reward.shape[0]
    index = (buffer.position + jnp.arange(count)) % capacity
    data = jax.tree.map(lambda stored, new: stored.at[index].set(new), buffer.data, batch)
    return Buffer(data, (buffer.position + count) % capacity, jnp.minimum(buffer.size + count, capacity))


def buffer_sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Transition:
    """Uniform sample (with replacement) from the filled part of the buffer."""
    index = jax.random.randint(key, (batch_size,), 0, buffer.size)
    return jax.tree.map(lambda stored: stored[index], buffer.data)


class RunningStats(NamedTuple):
    count: jax.Array
    mean: jax.Array
    var: jax.Array


def update_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch into running per-dimension mean and variance (Chan et al.'s parallel update)."""
    count = batch.shape[0]
    batch_mean, batch_var = batch.mean(0), batch.var(0)
    total = stats.count + count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * count / total
    m2 = stats.var * stats.count + batch_var * count + delta**2 * stats.count * count / total
    return RunningStats(total, mean, m2 / total)


def deterministic_evaluation(env, env_params, act: Callable, key, num_envs: int, num_steps: int):
    """Mean return of the first episode of each of num_envs fresh envs, acting with act(obs) (batched obs)."""
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, num_envs), env_params)

    def step(carry, key):
        obs, env_state, first_return, finished = carry
        keys = jax.random.split(key, num_envs)
        obs, env_state, _, _, _, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, env_state, act(obs),
                                                                                  env_params)
        first_return = jnp.where(finished, first_return, info["episode_return"])
        return (obs, env_state, first_return, finished | info["episode_done"]), None

    carry = (obs, env_state, jnp.zeros(num_envs), jnp.zeros(num_envs, bool))
    (_, _, first_return, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, num_steps))
    return first_return.mean()


class TrainState(NamedTuple):
    actor: Any
    critic: Any
    target_critic: Any
    log_alpha: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    obs_stats: RunningStats


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build the whole run as a `runner.Program`: `make_train(config)(key) -> (TrainState, metrics)` runs it
    in one jittable scan; `runner.run_program` runs it in checkpointed chunks (init, then `update` scanned).

    Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the swept field traced.
    `progress`, if given, is called from inside the run (host callback) every ~1% of it. Bad configs
    raise here, before anything is compiled.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    env, env_params, action_dim, (action_low, action_high) = make_env(config)
    obs_dim = env.observation_space(env_params).shape[0]
    actor = Actor(action_dim, config.hidden_size, config.num_layers)
    critic = TwinCritic(config.hidden_size, config.num_layers, config.critic_layer_norm)
    target_entropy = entropy_target(config, action_dim)
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    eval_steps = int(env_params.max_steps_in_episode)

    # Adam for the actor, the twin critics and log α.
    actor_optimizer, critic_optimizer, alpha_optimizer = (optax.adam(config.actor_lr), optax.adam(config.critic_lr),
                                                          optax.adam(config.alpha_lr))

    def normalize(stats: RunningStats, obs):
        if not config.normalize_observations:
            return obs
        return (obs - stats.mean) / jnp.sqrt(stats.var + 1e-8)

    def to_env_action(action):
        """[-1, 1] -> [low, high]."""
        return action_low + 0.5 * (action + 1.0) * (action_high - action_low)

    def sample_action(actor_params, obs, key):
        return squashed_gaussian(*actor.apply(actor_params, obs)).sample_and_log_prob(seed=key)

    def deterministic_action(state: TrainState, obs):
        """The evaluation policy: tanh of the actor's mean, in the env's bounds."""
        mean, _ = actor.apply(state.actor, normalize(state.obs_stats, obs))
        return to_env_action(jnp.tanh(mean))

    def evaluation(state: TrainState, key):
        return deterministic_evaluation(env, env_params, lambda obs: deterministic_action(state, obs), key,
                                        config.num_eval_envs, eval_steps)

    def gradient_update(state: TrainState, batch: Transition, key):
        """One SAC update: critics, then actor (against the new critics), then temperature, then targets."""
        key_next, key_actor = jax.random.split(key)
        obs, next_obs = normalize(state.obs_stats, batch.obs), normalize(state.obs_stats, batch.next_obs)
        alpha = jnp.exp(state.log_alpha)

        # CRITIC UPDATE
        next_action, next_log_prob = sample_action(state.actor, next_obs, key_next)
        next_q_min = critic.apply(state.target_critic, next_obs, next_action).min(0)
        targets = critic_targets(config.reward_scale * batch.reward, batch.terminated.astype(jnp.float32),
                                 next_q_min, next_log_prob, alpha, config.gamma)

        def critic_loss_fn(params):
            q = critic.apply(params, obs, batch.action)  # [2, batch]
            return 0.5 * ((q - targets) ** 2).mean(-1).sum(), q.mean()

        (critic_loss, q_mean), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(state.critic)
        updates, critic_opt = critic_optimizer.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)

        # ACTOR UPDATE
        def actor_loss_fn(params):
            action, log_prob = sample_action(params, obs, key_actor)
            q_min = critic.apply(critic_params, obs, action).min(0)
            return (alpha * log_prob - q_min).mean(), log_prob

        (actor_loss, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(state.actor)
        updates, actor_opt = actor_optimizer.update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)

        # TEMPERATURE UPDATE
        grad = jax.grad(temperature_loss)(state.log_alpha, log_prob, target_entropy)
        updates, alpha_opt = alpha_optimizer.update(grad, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        # TARGET CRITICS (Polyak averaging)
        target_critic = optax.incremental_update(critic_params, state.target_critic, config.tau)
        state = TrainState(actor_params, critic_params, target_critic, log_alpha, actor_opt, critic_opt,
                           alpha_opt, state.obs_stats)
        losses = {"critic_loss": critic_loss, "actor_loss": actor_loss, "alpha": alpha,
                  "entropy": -log_prob.mean(), "q_mean": q_mean}
        return state, losses

    def init(key):
        key, key_actor, key_critic, key_reset = jax.random.split(key, 4)
        dummy_obs, dummy_action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        actor_params = actor.init(key_actor, dummy_obs)
        critic_params = critic.init(key_critic, dummy_obs, dummy_action)
        log_alpha = jnp.log(jnp.float32(config.init_alpha))
        state = TrainState(
            actor_params, critic_params, critic_params, log_alpha, actor_optimizer.init(actor_params),
            critic_optimizer.init(critic_params), alpha_optimizer.init(log_alpha),
            RunningStats(jnp.float32(1e-4), jnp.zeros(obs_dim), jnp.ones(obs_dim)),
        )
        capacity = sizes.buffer_capacity
        buffer = Buffer(
            Transition(jnp.zeros((capacity, obs_dim)), jnp.zeros((capacity, action_dim)), jnp.zeros(capacity),
                       jnp.zeros(capacity, bool), jnp.zeros((capacity, obs_dim))),
            jnp.int32(0), jnp.int32(0),
        )
        obs, env_state = reset_envs(jax.random.split(key_reset, config.num_envs), env_params)
        return state, buffer, env_state, obs, key

    def iteration(carry, index):
        """One step of every env into the buffer, then updates_per_iteration gradient updates."""
        state, buffer, env_state, obs, key = carry
        key, key_action, key_random, key_step, key_update = jax.random.split(key, 5)

        # COLLECT: one step of every env, uniformly random actions before learning starts
        policy_action, _ = sample_action(state.actor, normalize(state.obs_stats, obs), key_action)
        random_action = jax.random.uniform(key_random, policy_action.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(index < sizes.random_iterations, random_action, policy_action)
        keys = jax.random.split(key_step, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = step_envs(
            keys, env_state, to_env_action(action), env_params
        )
        done = (terminated | truncated)[:, None]
        true_next_obs = jnp.where(done, info["final_observation"], next_obs)
        buffer = buffer_add(buffer, Transition(obs, action, reward, terminated, true_next_obs))
        if config.normalize_observations:
            state = state._replace(obs_stats=update_stats(state.obs_stats, true_next_obs))

        # UPDATE NETWORKS: updates_per_iteration gradient steps on fresh samples
        def learn(state):
            def one_update(state, key):
                key_sample, key_loss = jax.random.split(key)
                return gradient_update(state, buffer_sample(buffer, key_sample, config.batch_size), key_loss)

            state, losses = jax.lax.scan(one_update, state,
                                         jax.random.split(key_update, sizes.updates_per_iteration))
            return state, jax.tree.map(jnp.mean, losses)

        no_losses = {k: jnp.float32(jnp.nan) for k in ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean")}
        state, losses = jax.lax.cond(index >= sizes.random_iterations, learn, lambda s: (s, no_losses), state)
        episodes = (info["episode_done"], info["episode_return"], info["episode_length"])
        return (state, buffer, env_state, next_obs, key), (losses, episodes)

    def update(carry, row_index):
        """iterations_per_row iterations, averaged into one metrics row; an evaluation every eval_every rows."""
        first = row_index * sizes.iterations_per_row
        carry, (losses, (done, returns, lengths)) = jax.lax.scan(
            iteration, carry, first + jnp.arange(sizes.iterations_per_row)
        )
        state, buffer, env_state, obs, key = carry
        key, key_eval = jax.random.split(key)

        # EVALUATE AND LOG
        is_last = row_index == sizes.num_rows - 1
        is_eval = ((row_index + 1) % sizes.eval_every == 0) | is_last
        # The final evaluation's episodes come from the seed (runner.final_eval_key): scripts/evaluate.py redoes it.
        key_eval = jnp.where(is_last, runner.final_eval_key(config.seed), key_eval)
        eval_return = jax.lax.cond(is_eval, lambda: evaluation(state, key_eval),
                                   lambda: jnp.float32(jnp.nan))
        metrics = {
            "env_steps": (first + sizes.iterations_per_row) * config.num_envs,
            "episode_return": envs.mean_over_finished(returns, done),
            "episode_length": envs.mean_over_finished(lengths, done),
            **{k: jnp.nanmean(v) for k, v in losses.items()},  # NaN only before learning starts
            "eval_return": eval_return,
        }
        if progress is not None:
            jax.lax.cond(
                (row_index + 1) % sizes.progress_every == 0,
                lambda: jax.debug.callback(
                    lambda m: progress(**m),
                    {k: metrics[k] for k in ("env_steps", "episode_return", "eval_return", "alpha")},
                ),
                lambda: None,
            )
        return (state, buffer, env_state, obs, key), metrics

    def train(key):
        """The whole run, one jittable function of a key: `jax.jit(jax.vmap(make_train(config)))(keys)`."""
        carry, metrics = jax.lax.scan(update, init(key), jnp.arange(sizes.num_rows))
        return carry[0], metrics

    return runner.Program(init, update, sizes.num_rows, train, result=lambda carry: carry[0],
                          act=deterministic_action, evaluate=evaluation)


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's deterministic policy (tanh of the mean, with the run's observation statistics) from its
    checkpoint (`scripts/evaluate.py`); final_return() redoes the run's last evaluation, on the same episodes."""
    program = make_train(config)
    state = runner.restore(lambda: program.result(program.init(jax.random.PRNGKey(0))), checkpoint)
    env, env_params, _, _ = make_env(config)
    return runner.Policy(env, env_params, act=lambda memory, obs, key: (program.act(state, obs), memory),
                         final_return=lambda: program.evaluate(state, runner.final_eval_key(config.seed)))


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    training = runner.train(NAME, config, make_train, sizes.iterations * config.num_envs,
                            (sizes.sweep_name, sizes.sweep_values))
    summaries = [training.finish(run, final_return=run.metrics["eval_return"][:, -1], checkpoint=run.state._asdict())
                 for run in training.runs]
    env_steps = np.asarray(training.metrics["env_steps"]).reshape(-1, sizes.num_rows)[0]
    learning = env_steps > config.learning_starts + sizes.iterations_per_row * config.num_envs
    critic_loss = np.asarray(training.metrics["critic_loss"]).reshape(-1, sizes.num_rows)[:, learning]
    if not np.isfinite(critic_loss).all():
        learner, row = np.argwhere(~np.isfinite(critic_loss))[0]
        raise SystemExit(
            f"critic_loss became NaN/inf for learner {learner} (seed x swept value) at env step "
            f"{int(env_steps[learning][row]):,}. Outputs so far are in {training.run_dir}. Try lower learning "
            f"rates, a smaller --reward-scale, or --normalize-observations."
        )
    if not config.quiet:
        runner.report(training, summaries, "eval_return", "evaluation return")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
