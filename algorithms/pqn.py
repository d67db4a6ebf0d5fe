"""PQN: parallelised Q-learning with LayerNorm and λ-returns.

Gallici et al., "Simplifying Deep Temporal Difference Learning" (2024, arXiv 2407.04811). Online Q(λ)
over many parallel environments with no replay buffer and no target network: LayerNorm in the Q-network
is what keeps the TD updates stable. Every update collects `num_steps` x `num_envs` transitions with an
ε-greedy policy, computes λ-returns once from the Q-values seen during the rollout, then makes
`num_epochs` passes over the batch in `num_minibatches` shuffled minibatches, minimising
0.5 * mean((Q(s, a) - G)^2) with RAdam after global-norm clipping.

The paper's ablation is a flag: `--norm layer|batch|none` after every hidden layer (BatchNorm uses minibatch
statistics in the learning pass and its running averages, frozen, when acting and evaluating) and
`--norm-input` (BatchNorm on the observations), as the authors' NORM_TYPE and NORM_INPUT.

Run (from the repository root):
    python algorithms/pqn.py                                   # CartPole-v1, the authors' settings
    python algorithms/pqn.py --preset minatar --env-id Asterix-MinAtar
    python algorithms/pqn.py --norm batch --norm-input         # the ablation: batch instead of layer norm
    python algorithms/pqn.py --num-seeds 4 --lr 3e-4           # any field below is a flag; see --help
    python algorithms/pqn.py --sweep lr=1e-4,3e-4,1e-3         # one vmapped program, one run dir per value
    python algorithms/pqn.py --resume runs/pqn_CartPole-v1_... # continue a run from its last checkpoint

Logged per update (metrics_seed<i>.csv): env_steps (per seed), episode_return / episode_length (mean over
the training episodes that finished in that rollout, NaN if none did; raw, unscaled reward), td_loss,
q_mean, epsilon, learning_rate, eval_return (NaN between evaluations). Evaluation is the authors' protocol:
every 1/num_evals of training (20: every 5%) and at the end, num_eval_envs (128) separate envs act greedily
for the env's time limit, resetting themselves, and eval_return is the mean return over every episode that
finished. summary.json's final_return is the last greedy evaluation of each seed. The checkpoint holds the
network's variables (with BatchNorm's running averages) and the optimizer state.

Where this file differs from the authors' code (purejaxql @970ecce), and why:
- λ-returns bootstrap step t from max_a Q(s_{t+1}) for every t; the reference uses Q(s_T) for the
  penultimate step (an off-by-one: a bug, not copied).
- At a time limit the target bootstraps from Q(final observation); the reference treats it as terminal
  (it merges truncation into termination, which biases CartPole's values at 500 steps).
- No evaluation of the untrained network before the first update (the reference's test at update 0):
  metrics are one row per update. The last update is always evaluated (final_return); the reference tests
  at multiples of int(0.05 x updates), which can miss the end.
- No BatchNorm placeholder: without NORM_INPUT the reference still applies a BatchNorm to the input and
  discards its output ("for global compatibility"); it computes nothing that is used, so it is left out.
- ε-greedy draws and env keys are split differently (the same distributions, other random streams); ε's
  decay length is int(eps_decay x updates) (the reference's is not rounded), the learning rate decays to 0
  (the reference's to 1e-20); the run's length is also the schedules' (no TOTAL_TIMESTEPS_DECAY).
- Training returns are logged as the mean over the episodes that ended in each rollout (the reference logs
  the mean of its LogWrapper's last-episode returns over all steps).
- The MinAtar Conv(16, 3x3) is computed as 3x3 patches times its kernel (`Conv3x3`): the same function
  and parameters, with weight gradients 5x faster on CPU than XLA's convolution.
- The last evaluation (final_return) draws its episodes from --seed alone (runner.final_eval_key), the same
  episodes for every seed of the run, so that scripts/evaluate.py can redo it from the checkpoint.
- Extras the reference does not have, off by default: sticky actions, --obs-divisor 1 (raw MinAtar inputs).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

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
    """PQN hyperparameters. Every field is a command-line flag (`--num-envs 64`)."""

    preset: Literal["cartpole", "acrobot", "minatar"] = "cartpole"
    """Named settings; other flags override them."""
    env_id: str = "CartPole-v1"
    """Environment id: any discrete-action gymnax id, e.g. Acrobot-v1, Breakout-MinAtar."""
    seed: int = 0
    """Base seed; run i uses the key fold_in(PRNGKey(seed), i), the same whatever --num-seeds (a batch of one and
    of several seeds are different float programs: run 0's numbers agree up to rounding that learning can grow)."""
    num_seeds: int = 1
    """Independent runs, trained together as one vmapped program."""
    total_timesteps: int = 500_000
    """Environment steps per seed."""
    num_envs: int = 32
    """Parallel training environments."""
    num_steps: int = 64
    """Steps per environment in each rollout."""
    num_minibatches: int = 16
    """Minibatches per epoch; must divide num_envs * num_steps."""
    num_epochs: int = 4
    """Passes over each rollout."""
    lr: float = 1e-4
    """RAdam learning rate."""
    lr_linear_decay: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    max_grad_norm: float = 10.0
    """Global-norm gradient clipping."""
    gamma: float = 0.99
    """Discount factor."""
    td_lambda: float = 0.95
    """λ of the λ-returns (0: one-step Q-learning targets)."""
    eps_start: float = 1.0
    """ε of the ε-greedy policy at the start."""
    eps_finish: float = 0.2
    """ε after the decay."""
    eps_decay: float = 0.2
    """Fraction of the updates over which ε decays linearly."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this for learning (logged returns stay unscaled)."""
    network: Literal["mlp", "cnn"] = "mlp"
    """mlp: [Dense -> norm -> ReLU] x num_layers; cnn: the MinAtar Conv(16, 3x3) -> norm -> ReLU torso first."""
    norm: Literal["layer", "batch", "none"] = "layer"
    """Normalization after every hidden layer, the paper's ablation (the authors' NORM_TYPE): layer (LayerNorm),
    batch (BatchNorm: minibatch statistics in the learning pass, which also updates the running averages;
    running averages, frozen, when acting, computing targets and evaluating) or none."""
    norm_input: bool = False
    """BatchNorm on the observations, before the network (the authors' NORM_INPUT); it takes the place of
    obs_divisor, as in their code."""
    obs_divisor: float = 1.0
    """Observations are divided by this before the network. The minatar preset uses 255 as the authors' code
    does, so its 0/1 inputs become 0 or 1/255 (not harmless: see docs/pqn.md); --obs-divisor 1 keeps them raw."""
    hidden_size: int = 256
    """Units per hidden layer."""
    num_layers: int = 2
    """Hidden Dense layers (after the conv layer for cnn)."""
    sticky_action_prob: float = 0.0
    """Probability of repeating the previous action (MinAtar/Machado et al. sticky actions)."""
    num_eval_envs: int = 128
    """Separate environments for greedy evaluation (the authors' TEST_NUM_ENVS)."""
    num_evals: int = 20
    """Greedy evaluations during training, one every 1/num_evals of it (20: the authors' TEST_INTERVAL 0.05); the
    last one, at the end, gives final_return."""
    run_dir: str | None = None
    """Output directory; default runs/pqn_<env>_<time>."""
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
SWEEPABLE = ("lr", "td_lambda", "gamma", "eps_finish", "reward_scale", "max_grad_norm")


# The authors' values, from purejaxql (github.com/mttga/purejaxql @970ecce):
# - cartpole = the Config defaults, all from config/alg/pqn_cartpole.yaml: TOTAL_TIMESTEPS 5e5, NUM_ENVS 32,
#   NUM_STEPS 64, NUM_MINIBATCHES 16, NUM_EPOCHS 4, LR 1e-4 with LR_LINEAR_DECAY, MAX_GRAD_NORM 10, GAMMA 0.99,
#   LAMBDA 0.95, EPS_START 1 / EPS_FINISH 0.2 / EPS_DECAY 0.2, REW_SCALE 0.1, HIDDEN_SIZE 256, NUM_LAYERS 2,
#   NORM_TYPE layer_norm, NORM_INPUT False, TEST_NUM_ENVS 128, TEST_INTERVAL 0.05 (num_evals 20), EPS_TEST 0
#   (greedy). The MLP itself (Dense with flax's default init -> norm -> ReLU) is pqn_gymnax.py's QNetwork.
# - acrobot: the same file names Acrobot-v1 as the other env for these settings.
# - minatar: config/alg/pqn_minatar.yaml: TOTAL_TIMESTEPS 1e7, NUM_ENVS 128, NUM_STEPS 32, NUM_MINIBATCHES 32,
#   NUM_EPOCHS 2, LR 5e-4 with LR_LINEAR_DECAY, MAX_GRAD_NORM 10, GAMMA 0.99, LAMBDA 0.65, EPS 1 / 0.05 / 0.1,
#   NORM_TYPE layer_norm, TEST_NUM_ENVS 128, TEST_INTERVAL 0.05; no REW_SCALE (1) or NORM_INPUT (False) there,
#   so pqn_minatar.py's defaults. The network (x / 255, Conv(16, 3x3, VALID), norm, ReLU, Dense(128), norm,
#   ReLU, head; He-normal init) is pqn_minatar.py's QNetwork and CNN. ENV_KWARGS {}: gymnax's MinAtar has no
#   sticky actions by default.
PRESETS = {
    "cartpole": Config(),
    "acrobot": Config(preset="acrobot", env_id="Acrobot-v1"),
    "minatar": Config(
        preset="minatar", env_id="Breakout-MinAtar", total_timesteps=10_000_000, num_envs=128,
        num_steps=32, num_minibatches=32, num_epochs=2, lr=5e-4, td_lambda=0.65, eps_finish=0.05,
        eps_decay=0.1, reward_scale=1.0, network="cnn", hidden_size=128, num_layers=1, obs_divisor=255.0,
    ),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    batch_size: int  # transitions per rollout
    minibatch_size: int
    num_updates: int
    eval_every: int  # updates between greedy evaluations
    progress_every: int  # updates between progress callbacks
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    for name in ("num_seeds", "num_envs", "num_steps", "num_minibatches", "num_epochs", "num_eval_envs",
                 "num_evals"):  # first: the sizes below divide by them
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    batch_size = config.num_envs * config.num_steps
    if batch_size % config.num_minibatches:
        raise runner.ConfigError(
            f"num_envs * num_steps ({config.num_envs} * {config.num_steps} = {batch_size}) must be divisible "
            f"by num_minibatches ({config.num_minibatches}): change --num-minibatches or --num-envs."
        )
    num_updates = config.total_timesteps // batch_size
    if num_updates < 1:
        raise runner.ConfigError(
            f"total_timesteps ({config.total_timesteps}) must be at least num_envs * num_steps ({batch_size})."
        )
    for name in ("gamma", "td_lambda", "eps_start", "eps_finish", "eps_decay", "sticky_action_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise runner.ConfigError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    if config.norm not in ("layer", "batch", "none"):
        raise runner.ConfigError(f"norm must be layer, batch or none, got {config.norm!r}: e.g. --norm batch.")
    if not config.obs_divisor > 0:
        raise runner.ConfigError(f"obs_divisor must be positive, got {config.obs_divisor}: --obs-divisor 1 keeps raw inputs.")
    if not config.lr > 0:
        raise runner.ConfigError(f"lr must be positive, got {config.lr}: e.g. --lr 1e-4.")
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(
        batch_size=batch_size,
        minibatch_size=batch_size // config.num_minibatches,
        num_updates=num_updates,
        eval_every=max(num_updates // config.num_evals, 1),
        progress_every=max(num_updates // 100, 1),
        sweep_name=sweep_name,
        sweep_values=sweep_values,
    )


def make_env(config: Config):
    """The training/evaluation env with its wrappers, its params and the number of actions."""
    env, env_params = envs.make(config.env_id)
    num_actions = envs.require_discrete_actions(
        env, env_params, config.env_id, "PQN", "SAC (algorithms/sac.py) for continuous actions"
    )
    obs_shape = env.observation_space(env_params).shape
    if config.network == "cnn" and len(obs_shape) != 3:
        raise runner.ConfigError(
            f"--network cnn needs image observations (height, width, channels), but {config.env_id} gives "
            f"shape {obs_shape}: use --network mlp."
        )
    if config.sticky_action_prob > 0:
        env = envs.StickyActions(env, config.sticky_action_prob)
    if config.network == "mlp":
        env = envs.FlattenObservation(env)
    return envs.EpisodeStatistics(env), env_params, num_actions


# ----------------------------------------------------------------------------------------------------
# NETWORK


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding="VALID"), computed as 3x3 patches times the same kernel.

    Same function, parameters and init; XLA's CPU backend computes its weight gradient about 5x faster
    this way than through its convolution op (tests/test_pqn.py checks the two agree).
    """

    features: int
    kernel_init: Callable = nn.initializers.he_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        height, width = x.shape[-3] - 2, x.shape[-2] - 2
        patches = [x[..., i:i + height, j:j + width, :] for i in range(3) for j in range(3)]
        return jnp.concatenate(patches, axis=-1) @ kernel.reshape(-1, self.features) + bias


class QNetwork(nn.Module):
    """Q(s, ·): [Dense -> norm -> ReLU] x num_layers -> Dense(num_actions), optionally after the MinAtar torso
    Conv(16, 3x3, VALID) -> norm -> ReLU -> flatten (He-normal init, as the authors). The input is first
    divided by obs_divisor, or batch-normalized instead (norm_input).

    `train=True` (the learning pass only) makes every BatchNorm use the minibatch's statistics and update its
    running averages (apply with mutable=["batch_stats"]); otherwise it uses the running averages, frozen.
    """

    num_actions: int
    hidden_size: int
    num_layers: int
    conv: bool
    norm: str = "layer"
    norm_input: bool = False
    obs_divisor: float = 1.0

    @nn.compact
    def __call__(self, obs: jax.Array, train: bool = False) -> jax.Array:
        def normalize(x):
            if self.norm == "layer":
                return nn.LayerNorm()(x)
            if self.norm == "batch":
                return nn.BatchNorm(use_running_average=not train)(x)
            return x

        x = obs
        if self.norm_input:
            x = nn.BatchNorm(use_running_average=not train)(x)
        elif self.obs_divisor != 1.0:
            x = x / self.obs_divisor
        init = nn.initializers.he_normal() if self.conv else nn.initializers.lecun_normal()
        if self.conv:
            x = Conv3x3(16, kernel_init=init)(x)
            x = nn.relu(normalize(x))
            x = x.reshape(*x.shape[:-3], -1)
        for _ in range(self.num_layers):
            x = nn.relu(normalize(nn.Dense(self.hidden_size, kernel_init=init)(x)))
        return nn.Dense(self.num_actions)(x)


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array  # scaled by reward_scale
    terminated: jax.Array  # no bootstrap
    done: jax.Array  # terminated or truncated: the next obs starts a new episode
    q_max: jax.Array  # max_a Q(obs, a), seen while acting
    final_obs: jax.Array  # true last observation where done (for the bootstrap at a time limit)


class TrainState(NamedTuple):
    params: Any  # the network's variables: {"params": weights} and, with BatchNorm, {"batch_stats": running averages}
    opt_state: Any  # the optimizer's state for {"params": weights}


# ----------------------------------------------------------------------------------------------------
# λ-RETURNS


def lambda_returns(rewards, terminated, done, next_q_max, gamma: float, td_lambda: float):
    """λ-returns over a rollout, all arrays [num_steps, num_envs].

    G_t = r_t + γ (1 - term_t) [(1 - λ) max_a Q(s_{t+1}, a) + λ G_{t+1}]

    `next_q_max[t]` is max_a Q of the true next state of step t (the final observation where the episode
    ended). Where the episode ended at t, or at the rollout's last step, G_{t+1} is unavailable and the
    bracket is max_a Q(s_{t+1}, a) alone: the recursion restarts at every episode boundary.
    """

    def backward(next_return, step):
        reward, term, ended, q_next = step
        bootstrap = jnp.where(ended, q_next, (1.0 - td_lambda) * q_next + td_lambda * next_return)
        g = reward + gamma * (1.0 - term) * bootstrap
        return g, g

    _, returns = jax.lax.scan(
        backward, next_q_max[-1], (rewards, terminated.astype(jnp.float32), done, next_q_max), reverse=True
    )
    return returns


# ----------------------------------------------------------------------------------------------------
# GREEDY EVALUATION


def greedy_evaluation(env, env_params, q_values: Callable, key, num_envs: int, num_steps: int):
    """The authors' test protocol: num_envs fresh envs run greedily for num_steps steps, each resetting itself
    when its episode ends; the result is the mean return over every episode that finished in that time
    (NaN if none did). With num_steps the env's time limit, every env finishes at least one episode."""
    key_reset, key_steps = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, num_envs), env_params)

    def step(carry, key):
        obs, env_state = carry
        action = q_values(obs).argmax(-1)
        keys = jax.random.split(key, num_envs)
        obs, env_state, _, _, _, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            keys, env_state, action, env_params)
        return (obs, env_state), (info["episode_done"], info["episode_return"])

    _, (done, returns) = jax.lax.scan(step, (obs, env_state), jax.random.split(key_steps, num_steps))
    return envs.mean_over_finished(returns, done)


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build the whole run as a `runner.Program`: `make_train(config)(key) -> (TrainState, metrics)` runs it
    in one jittable scan; `runner.run_program` runs it in checkpointed chunks (init, then `update` scanned).

    Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the swept field traced.
    `progress`, if given, is called from inside the run (host callback) every ~1% of the updates with
    env_steps and a few scalars. Bad configs raise here, before anything is compiled.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    env, env_params, num_actions = make_env(config)
    network = QNetwork(num_actions, config.hidden_size, config.num_layers, conv=config.network == "cnn",
                       norm=config.norm, norm_input=config.norm_input, obs_divisor=config.obs_divisor)
    # At least one step: optax holds a zero-length schedule at its start value.
    eps_decay_updates = max(int(config.eps_decay * sizes.num_updates), 1)
    num_gradient_steps = sizes.num_updates * config.num_epochs * config.num_minibatches

    learning_rate = (optax.linear_schedule(config.lr, 0.0, num_gradient_steps)
                     if config.lr_linear_decay else optax.constant_schedule(config.lr))
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.radam(learning_rate))

    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    obs_shape = env.observation_space(env_params).shape
    eval_steps = int(env_params.max_steps_in_episode)  # the authors' TEST_NUM_STEPS

    def epsilon_greedy(key, q_values, epsilon):
        key_explore, key_action = jax.random.split(key)
        greedy = q_values.argmax(-1)
        random_action = jax.random.randint(key_action, greedy.shape, 0, num_actions)
        return jnp.where(jax.random.uniform(key_explore, greedy.shape) < epsilon, random_action, greedy)

    def init(key):
        key, key_params, key_reset = jax.random.split(key, 3)
        variables = network.init(key_params, jnp.zeros((1, *obs_shape)))
        state = TrainState(variables, optimizer.init({"params": variables["params"]}))
        obs, env_state = reset_envs(jax.random.split(key_reset, config.num_envs), env_params)
        return state, env_state, obs, jnp.float32(jnp.nan), key

    def update(carry, update_index):
        state, env_state, obs, latest_eval_return, key = carry
        key, key_rollout, key_learn, key_eval = jax.random.split(key, 4)
        epsilon = optax.linear_schedule(config.eps_start, config.eps_finish, eps_decay_updates)(update_index)

        # COLLECT ROLLOUT
        def env_step(carry, key):
            env_state, obs = carry
            key_action, key_step = jax.random.split(key)
            q_values = network.apply(state.params, obs)
            action = epsilon_greedy(key_action, q_values, epsilon)
            keys = jax.random.split(key_step, config.num_envs)
            next_obs, env_state, reward, terminated, truncated, info = step_envs(
                keys, env_state, action, env_params
            )
            transition = Transition(
                obs, action, config.reward_scale * reward, terminated, terminated | truncated,
                q_values.max(-1), info["final_observation"],
            )
            episode = (info["episode_done"], info["episode_return"], info["episode_length"])
            return (env_state, next_obs), (transition, episode)

        (env_state, obs), (rollout, episodes) = jax.lax.scan(
            env_step, (env_state, obs), jax.random.split(key_rollout, config.num_steps)
        )

        # COMPUTE TARGETS
        # max_a Q(s_{t+1}): the next rollout step's Q-values, and a forward pass on the obs after the last.
        last_q_max = network.apply(state.params, obs).max(-1)
        next_q_max = jnp.concatenate([rollout.q_max[1:], last_q_max[None]])
        # Where an episode ended, the next obs belongs to the next episode: use the final observation
        # (it matters only at a time limit; a terminal step does not bootstrap).
        truncated = rollout.done & ~rollout.terminated
        final_q_max = jax.lax.cond(
            truncated.any(),
            lambda: network.apply(state.params, rollout.final_obs).max(-1),
            lambda: jnp.zeros_like(next_q_max),
        )
        next_q_max = jnp.where(rollout.done, final_q_max, next_q_max)
        targets = lambda_returns(
            rollout.reward, rollout.terminated, rollout.done, next_q_max, config.gamma, config.td_lambda
        )

        # UPDATE NETWORK
        # The only pass with train=True: BatchNorm normalizes with the minibatch's statistics and returns its
        # updated running averages (an empty dict without BatchNorm); the gradient is for the weights alone.
        def loss_fn(weights, variables, obs, action, target):
            q_values, batch_stats = network.apply(
                {**variables, **weights}, obs, train=True, mutable=["batch_stats"])
            q_taken = (q_values * jax.nn.one_hot(action, num_actions)).sum(-1)
            return 0.5 * jnp.mean((q_taken - target) ** 2), (q_taken.mean(), batch_stats)

        def minibatch_step(state, minibatch):
            weights = {"params": state.params["params"]}
            (loss, (q_mean, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                weights, state.params, *minibatch)
            updates, opt_state = optimizer.update(grads, state.opt_state, weights)
            variables = {**optax.apply_updates(weights, updates), **batch_stats}
            return TrainState(variables, opt_state), (loss, q_mean)

        batch = jax.tree.map(
            lambda x: x.reshape(sizes.batch_size, *x.shape[2:]), (rollout.obs, rollout.action, targets)
        )

        def epoch(state, key):
            order = jax.random.permutation(key, sizes.batch_size)
            minibatches = jax.tree.map(
                lambda x: x[order].reshape(config.num_minibatches, sizes.minibatch_size, *x.shape[1:]), batch
            )
            return jax.lax.scan(minibatch_step, state, minibatches)

        state, (losses, q_means) = jax.lax.scan(epoch, state, jax.random.split(key_learn, config.num_epochs))

        # EVALUATE AND LOG
        is_last = update_index == sizes.num_updates - 1
        is_eval = ((update_index + 1) % sizes.eval_every == 0) | is_last
        # The final evaluation's episodes come from the seed (runner.final_eval_key): scripts/evaluate.py redoes it.
        key_eval = jnp.where(is_last, runner.final_eval_key(config.seed), key_eval)
        eval_return = jax.lax.cond(
            is_eval,
            lambda: greedy_evaluation(env, env_params, lambda obs: network.apply(state.params, obs), key_eval,
                                      config.num_eval_envs, eval_steps),
            lambda: jnp.float32(jnp.nan),
        )
        latest_eval_return = jnp.where(is_eval, eval_return, latest_eval_return)
        done, returns, lengths = episodes
        metrics = {
            "env_steps": (update_index + 1) * sizes.batch_size,
            "episode_return": envs.mean_over_finished(returns, done),
            "episode_length": envs.mean_over_finished(lengths, done),
            "td_loss": losses.mean(),
            "q_mean": q_means.mean(),
            "epsilon": epsilon,
            "learning_rate": learning_rate((update_index + 1) * config.num_epochs * config.num_minibatches),
            "eval_return": eval_return,
        }
        if progress is not None:
            jax.lax.cond(
                (update_index + 1) % sizes.progress_every == 0,
                lambda: jax.debug.callback(
                    lambda m: progress(**m),
                    {k: metrics[k] for k in ("env_steps", "episode_return", "td_loss")}
                    | {"eval_return": latest_eval_return},
                ),
                lambda: None,
            )
        return (state, env_state, obs, latest_eval_return, key), metrics

    def train(key):
        """The whole run, one jittable function of a key: `jax.jit(jax.vmap(make_train(config)))(keys)`."""
        carry, metrics = jax.lax.scan(update, init(key), jnp.arange(sizes.num_updates))
        return carry[0], metrics

    return runner.Program(init, update, sizes.num_updates, train, result=lambda carry: carry[0])


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's greedy policy from its checkpoint (`scripts/evaluate.py`); final_return() redoes the run's
    last evaluation, on the same episodes."""
    env, env_params, num_actions = make_env(config)
    network = QNetwork(num_actions, config.hidden_size, config.num_layers, conv=config.network == "cnn",
                       norm=config.norm, norm_input=config.norm_input, obs_divisor=config.obs_divisor)
    variables = checkpoint["params"]
    q_values = lambda obs: network.apply(variables, obs)

    def final_return():
        return greedy_evaluation(env, env_params, q_values, runner.final_eval_key(config.seed),
                                 config.num_eval_envs, int(env_params.max_steps_in_episode))

    return runner.Policy(env, env_params, act=lambda memory, obs, key: (q_values(obs[None])[0].argmax(), memory),
                         final_return=final_return)


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    training = runner.train(NAME, config, make_train, sizes.num_updates * sizes.batch_size,
                            (sizes.sweep_name, sizes.sweep_values))
    summaries = [training.finish(run, final_return=run.metrics["eval_return"][:, -1],
                                 checkpoint={"params": run.state.params, "opt_state": run.state.opt_state})
                 for run in training.runs]
    loss = np.asarray(training.metrics["td_loss"]).reshape(-1, sizes.num_updates)
    if not np.isfinite(loss).all():
        learner, update = np.argwhere(~np.isfinite(loss))[0]
        raise SystemExit(
            f"td_loss became NaN/inf for learner {learner} (seed x swept value) at update {update}. Outputs so far "
            f"are in {training.run_dir}. Try a lower --lr, a lower --max-grad-norm or a smaller --reward-scale."
        )
    if not config.quiet:
        runner.report(training, summaries, "eval_return", "greedy return", final="final greedy return")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
