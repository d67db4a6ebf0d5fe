"""SQIRL: explore uniformly at random, regress, act greedily after k steps of fitted-Q iteration.

Laidlaw, Zhu, Russell, Dragan, "The Effective Horizon Explains Deep RL Performance in Stochastic
Environments" (2023). SQIRL separates exploration from learning. It learns one greedy policy per timestep
of a finite horizon H. Iteration i collects m episodes that act with the frozen policies π_0 .. π_{i-1} for
t < i and uniformly at random from t = i on; it stores the t >= i transitions with their Monte-Carlo
return-to-go (the random policy's return) and regresses a Q-network with k heads on them:
    head 1:  Q_1(s_t, a_t) <- Σ_{t' >= t} γ^(t'-t) r_t'                          (Q of the random policy)
    head j:  Q_j(s_t, a_t) <- r_t + γ (1 - done_t) max_a Q_{j-1}(s_{t+1}, a)      (one step of value iteration)
each head's squared error divided by a running average of itself, so that all k heads weigh alike. A copy
of the network is then frozen as π_i(s) = argmax_a Q_k(s, a). When greedy on Q_k is optimal for some
k (the environment's effective horizon), this succeeds with sample complexity exponential only in k.

Run (from the repository root):
    python algorithms/sqirl.py                                  # CombinationLock-H4, k = 4: opens the lock
    python algorithms/sqirl.py --num-heads 3                    # k below the lock's horizon: walks away
    python algorithms/sqirl.py --env-id CombinationLock-H6      # the horizon follows the lock (H = 6)
    python algorithms/sqirl.py --preset cartpole                # CartPole-v1 capped at 200 steps
    python algorithms/sqirl.py --preset minatar --env-id Asterix-MinAtar
    python algorithms/sqirl.py --preset cartpole --sweep lr=3e-4,1e-3,3e-3  # one program, a run dir per value
    python algorithms/sqirl.py --resume runs/sqirl_CartPole-v1_...          # continue a run from its last checkpoint

Logged per iteration (metrics_seed<i>.csv): env_steps (the steps the episodes took, per seed: the budget),
iteration (= the timestep whose policy was frozen), collected (1 if the budget allowed the iteration),
episode_return / episode_length (the m training episodes: greedy prefix, random tail; raw reward), loss
(the normalized total), loss_head<j> (each head's mean squared error), q_mean (head k), gradient_steps,
new_transitions, eval_return (greedy return of the per-timestep policies on separate envs, after every
iteration by default, or every 1/num_evals of them with NaN between). summary.json: final_return (greedy
return of the final policy) and steps_to_solve, the paper's metric: per seed, the env steps spent when the
greedy return first reached solve_threshold (a lock's optimum unless set; the cartpole preset's 200), null
if it never did. Progress lines count simulated env steps (m x H per iteration, padding included).

What matches the authors' code (github.com/cassidylaidlaw/effective-horizon, effective_horizon/sb3/
algorithms/sqirl.py with the SQIRL algo_args of sb3/train.py): gradient steps per iteration =
ceil(every env step of the iteration, greedy prefix included, x epochs / batch size), so an iteration
that adds no transition still trains on the buffer; no bootstrapping at any episode end (their buffer has
handle_timeout_termination False and BRIDGE's Atari envs set terminated at the horizon), so the
Monte-Carlo return and the backups both stop there; one network with k heads, not re-initialized between
iterations, whose current parameters give the backups (no target network); each head's MSE divided by
its running average (decay 0.99, updated with the batch first); Adam, global-norm clip 10, batch 128,
uniform sampling with replacement; act with argmax of head k, and timesteps without a frozen policy act
with the latest network (their `predict`); rewards scaled by reward_scale for learning only.

What differs, and why:
- The last evaluation (final_return) draws its episodes from --seed alone (runner.final_eval_key), the same
  episodes for every seed of the run, so that scripts/evaluate.py can redo it from the checkpoint.
- Iterations: exactly H, or fewer if total_timesteps is spent first (checked before each iteration, as
  theirs). Their loop runs until the budget, an evaluation at stop_on_eval_reward, or 11 iterations in a
  row with no random step; iterations past H freeze policies for timesteps no episode reaches, so they
  only spend env steps.
- No early stop: theirs stops training when an evaluation reaches stop_on_eval_reward (the paper's
  sample complexity is the env steps spent then); this run goes on, so final_return is measured too, and
  steps_to_solve records that count. Their EvalCallback runs 1 episode every 1000 env steps, in the
  middle of an iteration; the policies change only when an iteration ends, so evaluating after each
  iteration finds the same policy up to 1000 steps earlier. Here the mean of num_eval_envs episodes must
  reach the threshold: stricter than 1 episode where the env is stochastic (sticky actions).
- Replay: a ring of replay_iterations iterations' [H, m] transitions, which iterations adding nothing
  leave as it is. 0 (the default, the lock preset) keeps every iteration, as their 1e6-transition buffer
  does in all settings here; the cartpole (8) and minatar (4) presets keep fewer (tuned so; MinAtar's
  full buffer would take 100 x 100 x 32 slots x 400 B = 128 MB a seed). Theirs never samples the
  buffer's write position (a quirk of SB3's memory-optimized buffer); here every stored transition can be.
- Running loss averages are floored at 1e-8 before dividing (theirs divides by the raw average, which
  is 0 once a head fits its batch exactly).
- Networks: flax's initialization (lecun-normal weights, zero biases) rather than PyTorch's, and for
  MinAtar a Conv(16, 3x3) -> Dense(128) in place of their NatureCNN, whose 8x8 stride-4 first layer needs
  far larger images than MinAtar's 10x10.
- Options that their defaults leave off are not implemented: Huber loss, distributional heads, one
  network per head, an EMA of the parameters, intra-iteration lr decay, priority decay of old data, an
  exploration-only phase.
- The m episodes run in parallel here; theirs runs them on min(8, m) envs in turn (same distribution).
- Preset values other than theirs (lr, epochs, m, k, reward scale, replay) are cited at PRESETS.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/
# runner first: on a multi-host launch it starts jax.distributed before gymnax touches the devices
import runner  # noqa: E402
import runlog  # noqa: E402
import envs  # noqa: E402

NAME = Path(__file__).stem  # the algorithm's name in run directories and summaries: a copy names itself
from envs.combination_lock import LOCK_PREFIX


@dataclass(frozen=True)
class Config:
    """SQIRL hyperparameters. Every field is a command-line flag (`--num-heads 3`)."""

    preset: Literal["lock", "cartpole", "minatar"] = "lock"
    """Named settings; other flags override them."""
    env_id: str = "CombinationLock-H4"
    """Environment id: any discrete-action id, e.g. CombinationLock-H<n>, CartPole-v1, Breakout-MinAtar."""
    seed: int = 0
    """Base seed; run i uses the key fold_in(PRNGKey(seed), i), the same whatever --num-seeds (a batch of one and
    of several seeds are different float programs: run 0's numbers agree up to rounding that learning can grow)."""
    num_seeds: int = 1
    """Independent runs, trained together as one vmapped program."""
    total_timesteps: int = 100_000
    """Environment-step budget per seed; no new iteration starts once it is spent."""
    horizon: int | None = None
    """H: episodes are cut at H steps; one policy per timestep, learned in one iteration each. Default: the
    env's own length (CombinationLock-H<n>: n; <id>/horizon<H>: H); other envs need it (the presets set it)."""
    episodes_per_iteration: int = 1024
    """m: episodes collected (in parallel) per iteration."""
    num_heads: int = 4
    """k: Q heads; head 1 regresses the random policy's return, head j backs up head j-1; act with head k."""
    num_epochs: int = 20
    """Regression budget: gradient steps per iteration = ceil(num_epochs * env steps of the iteration /
    batch_size), every step of the m episodes counted, greedy prefix included (the authors' rule)."""
    batch_size: int = 128
    """Transitions per gradient step."""
    replay_iterations: int = 0
    """Iterations of data kept for the regression (a ring; iterations that add no transition leave it as it
    is); 0 = all of them, as the authors' buffer (1e6 transitions) holds in their settings; 1 = the newest."""
    lr: float = 1e-3
    """Adam learning rate."""
    max_grad_norm: float = 10.0
    """Global-norm gradient clipping."""
    gamma: float = 1.0
    """Discount factor of the returns and backups."""
    normalize_losses: bool = True
    """Divide each head's loss by a running average of itself."""
    loss_smoothing: float = 0.99
    """Decay of the running loss averages."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (logged returns stay unscaled)."""
    network: Literal["mlp", "cnn"] = "mlp"
    """mlp: [Dense -> ReLU] x num_layers; cnn: Conv(16, 3x3) -> ReLU first (MinAtar)."""
    hidden_size: int = 64
    """Units per hidden layer."""
    num_layers: int = 2
    """Hidden Dense layers (after the conv layer for cnn)."""
    sticky_action_prob: float = 0.0
    """Probability of repeating the previous action (Machado et al. sticky actions; the paper uses 0.25)."""
    num_eval_envs: int = 16
    """Separate environments for greedy evaluation."""
    num_evals: int = 0
    """Greedy evaluations, evenly spaced over the iterations (the last, at the end, gives final_return);
    0 = after every iteration, which makes steps_to_solve exact (fewer evaluations round it up)."""
    solve_threshold: float | None = None
    """steps_to_solve = env steps until the greedy return (mean over the eval envs) first reaches this.
    Default: a lock's optimal return (the paper's metric); other envs log null unless it is set."""
    run_dir: str | None = None
    """Output directory; default runs/sqirl_<env>_<time>."""
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
SWEEPABLE = ("lr", "gamma", "max_grad_norm", "reward_scale", "loss_smoothing")


# Where each preset value comes from. "train.py": the SQIRL algo_args of the authors' sb3/train.py (batch 128,
# clip 10, loss scaling with smoothing 0.99, handle_timeout_termination False, γ = 1 for BRIDGE envs and 0.99
# otherwise; lr 1e-4 and 10 epochs, which this file does not use, see below). m and k: the paper tunes them
# per environment (their README: `algo_args.episodes_per_timestep=$M algo_args.planning_depth=$K`).
# - lock: k = 4, the lock's effective horizon (envs/combination_lock.py); m = 1024 >= ~A^(n-1) episodes, so
#   that some reach the last digit (README's lock table); γ = 1 (finite horizon, as BRIDGE); the horizon
#   follows the lock; replay of every iteration (as their buffer). lr 1e-3 and 20 epochs: measured here;
#   with train.py's lr 1e-4 and 10 epochs CombinationLock-H4, k = 4 opened in 1 of 4 seeds (final greedy
#   return -0.1, 0.7, 0, 0), with these in 4 of 4.
# - cartpole: H = 200 (CartPole-v0's limit), γ 0.99 (train.py, non-BRIDGE); m = 16, k = 2, lr 1e-3, 50
#   epochs, returns x 0.1, replay 8: tuned here. With train.py's lr 1e-4 and 10 epochs (returns unscaled,
#   every iteration replayed) the first timesteps' Q is unfitted when frozen: final greedy return 9.0 and
#   11.2 (2 seeds), never 200. solve_threshold 200: the capped optimum.
# - minatar: sticky actions 0.25 (the paper's); H = 100, m = 32, k = 2, lr 1e-3, 20 epochs, replay 4 and the
#   small CNN: chosen here for a CPU-sized run (MinAtar is not among the paper's environments).
PRESETS = {
    "lock": Config(),
    "cartpole": Config(
        preset="cartpole", env_id="CartPole-v1", total_timesteps=500_000, horizon=200, episodes_per_iteration=16,
        num_heads=2, num_epochs=50, replay_iterations=8, lr=1e-3, gamma=0.99, reward_scale=0.1,
        solve_threshold=200.0,
    ),
    "minatar": Config(
        preset="minatar", env_id="Breakout-MinAtar", total_timesteps=1_000_000, horizon=100,
        episodes_per_iteration=32, num_heads=2, num_epochs=20, replay_iterations=4, lr=1e-3, gamma=0.99,
        network="cnn", hidden_size=128, num_layers=1, sticky_action_prob=0.25,
    ),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    horizon: int  # H: --horizon, or the env's own length
    num_iterations: int  # = H: one frozen policy per timestep
    replay_iterations: int  # ring slots, each one iteration's [H, m] transitions (all H when 0)
    buffer_slots: int  # replay_iterations * H * episodes_per_iteration
    eval_every: int
    solve_threshold: float | None  # greedy return that counts as solved (steps_to_solve), None: not measured
    progress_every: int
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    if config.num_heads < 1:
        raise runner.ConfigError(
            f"num_heads (k) must be at least 1, got {config.num_heads}: head 1 regresses the random policy's "
            f"return and acting uses head k. Use --num-heads 1 for greedy on the random policy's Q."
        )
    for name in ("num_seeds", "total_timesteps", "episodes_per_iteration", "num_epochs", "batch_size",
                 "hidden_size", "num_eval_envs"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}: pass --{name.replace('_', '-')} 1 or more.")
    for name in ("num_layers", "replay_iterations", "num_evals"):
        if getattr(config, name) < 0:
            raise runner.ConfigError(f"{name} must be at least 0, got {getattr(config, name)}.")
    for name in ("gamma", "sticky_action_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise runner.ConfigError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    if not 0.0 <= config.loss_smoothing < 1.0:
        raise runner.ConfigError(f"loss_smoothing must be in [0, 1), got {config.loss_smoothing}.")
    if not config.lr > 0:
        raise runner.ConfigError(f"lr must be positive, got {config.lr}: e.g. --lr 1e-3.")
    horizon = episode_horizon(config)
    replay_iterations = config.replay_iterations or horizon
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(
        horizon=horizon,
        num_iterations=horizon,
        replay_iterations=replay_iterations,
        buffer_slots=replay_iterations * horizon * config.episodes_per_iteration,
        eval_every=max(horizon // config.num_evals, 1) if config.num_evals else 1,
        solve_threshold=solve_threshold(config),
        progress_every=max(horizon // 100, 1),
        sweep_name=sweep_name,
        sweep_values=sweep_values,
    )


# The replay ring is updated and gathered inside the jitted scan, which holds several copies of it at once:
# on the CPU a 1.1 GiB ring (minigrid/Empty-5x5, H 100, m 64, every iteration kept) raised the peak memory by
# 5.5 GiB. So a ring of more than a sixth of the device's memory is refused.
REPLAY_MEMORY_FRACTION = 1 / 6


def check_replay_memory(config: Config, sizes: Sizes, obs_size: int, memory: int | None) -> None:
    """Raise, before compiling, if the replay rings of all seeds (and swept values) would not fit the device."""
    runs = config.num_seeds * max(len(sizes.sweep_values), 1)
    per_iteration = sizes.horizon * config.episodes_per_iteration * (4 * obs_size + 16) * runs  # obs + 4 scalars
    needed = per_iteration * sizes.replay_iterations
    if memory is None or needed <= REPLAY_MEMORY_FRACTION * memory:
        return
    fits = int(REPLAY_MEMORY_FRACTION * memory // per_iteration)
    fix = (f"pass --replay-iterations {fits} or fewer" if fits >= 1 else
           "pass fewer --episodes-per-iteration or --num-seeds")
    raise runner.ConfigError(
        f"SQIRL's replay would take {needed / 2**30:.1f} GiB ({sizes.replay_iterations} iterations x H "
        f"{sizes.horizon} x m {config.episodes_per_iteration} x {obs_size} floats x {runs} runs), more than a sixth "
        f"of this device's {memory / 2**30:.0f} GiB (the jitted update holds several copies): {fix}.")


def own_length(env_id: str) -> int | None:
    """The longest episode an env id allows by itself: n for CombinationLock-H<n>, H for <id>/horizon<H>."""
    envs.check_env_id(env_id)
    base, capped = envs.registry.split_horizon(env_id)
    lock = int(base[len(LOCK_PREFIX):]) if base.startswith(LOCK_PREFIX) else None
    lengths = [n for n in (capped, lock) if n is not None]
    return min(lengths) if lengths else None


def episode_horizon(config: Config) -> int:
    """H: --horizon (or the preset's), else the env's own length (never a default cut at another length)."""
    own = own_length(config.env_id)
    if config.horizon is None:
        if own is None:
            base_env(config)  # a continuous-action env gets that error, which names the algorithm to use
            raise runner.ConfigError(f"{config.env_id} has no horizon of its own: pass --horizon H (episodes are cut at "
                             f"H steps, one policy per timestep) or use the id {config.env_id}/horizon<H>.")
        return own
    if config.horizon < 1:
        raise runner.ConfigError(f"horizon must be at least 1, got {config.horizon}: pass --horizon 1 or more, or leave it "
                         f"out to follow the env's own length.")
    return config.horizon


def solve_threshold(config: Config) -> float | None:
    """--solve-threshold, else a lock's optimal (undiscounted, unscaled) return, else None."""
    if config.solve_threshold is not None:
        return float(config.solve_threshold)
    base, _ = envs.registry.split_horizon(config.env_id)
    if base.startswith(LOCK_PREFIX):
        env, env_params = envs.make(base)
        return float(env.optimal_return(env_params))
    return None


# Float32 sums of at most H rewards round by far less than this, and the thresholds are sums of rewards.
SOLVE_TOLERANCE = 1e-4


def steps_to_solve(eval_return: np.ndarray, env_steps: np.ndarray, threshold: float | None) -> list[int | None]:
    """Per seed ([seed, iteration] arrays): env steps spent when an evaluation first reached `threshold`
    (the paper's sample-complexity metric; the authors stop training there), None if none did."""
    if threshold is None:
        return [None] * len(eval_return)
    reached = np.asarray(eval_return) >= threshold - SOLVE_TOLERANCE * max(1.0, abs(threshold))  # NaN: False
    first = reached.argmax(axis=1)
    return [int(steps[i]) if hit[i] else None for hit, steps, i in zip(reached, np.asarray(env_steps), first)]


def base_env(config: Config):
    """The env as envs.make builds it, its params and |A|; an error for continuous actions."""
    env, env_params = envs.make(config.env_id)
    num_actions = envs.require_discrete_actions(
        env, env_params, config.env_id, "SQIRL", "SAC (algorithms/sac.py) for continuous actions"
    )
    return env, env_params, num_actions


def make_env(config: Config):
    """The env with its wrappers (sticky actions, flattening, the horizon cap outermost), params, |A|."""
    env, env_params, num_actions = base_env(config)
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
    return envs.HorizonCap(env, episode_horizon(config)), env_params, num_actions


# ----------------------------------------------------------------------------------------------------
# NETWORK


class MultiHeadQNetwork(nn.Module):
    """Q_1 .. Q_k on one torso: obs -> [..., num_heads, num_actions]."""

    num_actions: int
    num_heads: int
    hidden_size: int
    num_layers: int
    conv: bool

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs.astype(jnp.float32)
        if self.conv:
            # A 3x3 VALID convolution with 16 filters, written as 3x3 patches times a Dense layer: the same
            # function, and on CPU XLA computes its weight gradient several times faster than lax.conv's.
            height, width = x.shape[-3] - 2, x.shape[-2] - 2
            patches = jnp.concatenate([x[..., i:i + height, j:j + width, :] for i in range(3) for j in range(3)], -1)
            x = nn.relu(nn.Dense(16)(patches))
            x = x.reshape(*x.shape[:-3], -1)
        for _ in range(self.num_layers):
            x = nn.relu(nn.Dense(self.hidden_size)(x))
        q = nn.Dense(self.num_heads * self.num_actions)(x)
        return q.reshape(*q.shape[:-1], self.num_heads, self.num_actions)


class Transition(NamedTuple):
    """One slot of the replay ring, laid out [iteration slot, timestep, episode]."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array  # scaled by reward_scale
    done: jax.Array  # the episode ended at this step: no return or backup past it
    mc_return: jax.Array  # Σ γ^(t'-t) r_t' to the episode's end (the random policy's return from t >= i)
    valid: jax.Array  # inside the episode's first run and t >= i: a regression sample


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    loss_average: jax.Array  # [num_heads] running average of each head's loss (NaN before the first)


# ----------------------------------------------------------------------------------------------------
# TARGETS AND LOSS


def monte_carlo_returns(rewards: jax.Array, dones: jax.Array, gamma: float) -> jax.Array:
    """Returns-to-go G_t = r_t + γ (1 - done_t) G_{t+1} over [time, ...] arrays (G after the last step = 0)."""

    def backward(next_return, step):
        reward, done = step
        g = reward + gamma * (1.0 - done) * next_return
        return g, g

    _, returns = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (rewards, dones.astype(jnp.float32)),
                              reverse=True)
    return returns


def head_targets(next_q: jax.Array, reward: jax.Array, done: jax.Array, mc_return: jax.Array,
                 gamma: float) -> jax.Array:
    """Regression targets [batch, k]: the Monte-Carlo return for head 1, and for head j >= 2 the backup
    r + γ (1 - done) max_a Q_{j-1}(s', a) of the previous head (`next_q`: [batch, k, |A|] at s')."""
    backups = reward[:, None] + gamma * (1.0 - done[:, None].astype(jnp.float32)) * next_q[:, :-1].max(-1)
    return jax.lax.stop_gradient(jnp.concatenate([mc_return[:, None], backups], axis=1))


def normalized_head_loss(q_taken: jax.Array, targets: jax.Array, loss_average: jax.Array, smoothing: float,
                         normalize: bool = True):
    """mean_j MSE_j / avg_j, where avg_j is the running average of head j's MSE, updated with this batch's
    value first (held constant in the gradient). Returns (loss, per-head MSE, new averages)."""
    per_head = jnp.mean((q_taken - targets) ** 2, axis=0)
    observed = jax.lax.stop_gradient(per_head)
    loss_average = jnp.where(jnp.isnan(loss_average), observed,
                             smoothing * loss_average + (1.0 - smoothing) * observed)
    loss = jnp.mean(per_head / jnp.maximum(loss_average, 1e-8)) if normalize else jnp.mean(per_head)
    return loss, per_head, loss_average


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build the whole run as a `runner.Program`: `make_train(config)(key) -> (TrainState, per-timestep policy
    snapshots, metrics)` runs it in one jittable scan over iterations; `runner.run_program` runs it in
    checkpointed chunks (init, then `update`, one iteration, scanned).

    The snapshots are the frozen parameters of every timestep's policy as one stacked pytree (leading
    axis = timestep). Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the
    swept field traced. `progress`, if given, is called from inside the run every ~1% of the iterations.
    Bad configs raise here, before anything is compiled.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    env, env_params, num_actions = make_env(config)
    network = MultiHeadQNetwork(num_actions, config.num_heads, config.hidden_size, config.num_layers,
                                conv=config.network == "cnn")

    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr))

    horizon, num_episodes, batch_size = sizes.horizon, config.episodes_per_iteration, config.batch_size
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    obs_shape = env.observation_space(env_params).shape
    check_replay_memory(runner.untraced(config), sizes, int(np.prod(obs_shape)), runlog.device_memory())
    timesteps = jnp.arange(horizon)

    def policy_params(t, num_frozen, snapshots, params):
        """π_t's parameters: the snapshot frozen for timestep t, or the latest network if none was."""
        return jax.tree.map(lambda s, p: jnp.where(t < num_frozen, s[t], p), snapshots, params)

    def greedy_action(params, obs):
        return network.apply(params, obs)[..., -1, :].argmax(-1)  # act with head k

    def run_episodes(key, num_envs, choose_action):
        """One episode in each of num_envs fresh envs, H steps; returns [H, num_envs] arrays."""
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = reset_envs(jax.random.split(key_reset, num_envs), env_params)

        def step(carry, inputs):
            obs, env_state, alive = carry
            t, key = inputs
            key_action, key_step = jax.random.split(key)
            action = choose_action(t, obs, key_action)
            next_obs, env_state, reward, terminated, truncated, _ = step_envs(
                jax.random.split(key_step, num_envs), env_state, action, env_params
            )
            done = terminated | truncated
            return (next_obs, env_state, alive & ~done), (obs, action, reward, done, alive)

        carry = (obs, env_state, jnp.ones(num_envs, bool))
        _, episodes = jax.lax.scan(step, carry, (timesteps, jax.random.split(key_steps, horizon)))
        return episodes  # the horizon cap ends every episode by step H, so `alive` marks all of it

    def greedy_evaluation(key, num_frozen, snapshots, params):
        """Mean return of one episode per eval env, acting with π_t at timestep t."""
        def choose(t, obs, _):
            return greedy_action(policy_params(t, num_frozen, snapshots, params), obs)

        _, _, reward, _, alive = run_episodes(key, config.num_eval_envs, choose)
        return jnp.where(alive, reward, 0.0).sum(0).mean()

    def loss_fn(params, obs, action, targets, loss_average, loss_smoothing):
        q = network.apply(params, obs)  # [batch, k, |A|]
        q_taken = (q * jax.nn.one_hot(action, num_actions)[:, None, :]).sum(-1)
        loss, per_head, loss_average = normalized_head_loss(
            q_taken, targets, loss_average, loss_smoothing, config.normalize_losses)
        return loss, (per_head, loss_average, q_taken[:, -1].mean())

    def init(key):
        key, key_params = jax.random.split(key)
        params = network.init(key_params, jnp.zeros((1, *obs_shape)))
        state = TrainState(params, optimizer.init(params), jnp.full(config.num_heads, jnp.nan))
        snapshots = jax.tree.map(lambda p: jnp.zeros((horizon, *p.shape), p.dtype), params)
        slots = (sizes.replay_iterations, horizon, num_episodes)
        buffer = Transition(
            obs=jnp.zeros((*slots, *obs_shape), jnp.float32), action=jnp.zeros(slots, jnp.int32),
            reward=jnp.zeros(slots), done=jnp.zeros(slots, bool), mc_return=jnp.zeros(slots),
            valid=jnp.zeros(slots, bool),
        )
        num_stored = jnp.int32(0)  # iterations that added transitions to the ring
        return state, snapshots, buffer, num_stored, jnp.int32(0), jnp.int32(0), jnp.float32(jnp.nan), key

    def collect_and_learn(i, state, snapshots, buffer, num_stored, key):
        key_rollout, key_learn = jax.random.split(key)

        # COLLECT EPISODES: frozen greedy policies for t < i, uniformly random from t = i on
        def choose(t, obs, key):
            greedy = jax.lax.cond(
                t < i, lambda: greedy_action(jax.tree.map(lambda s: s[t], snapshots), obs),
                lambda: jnp.zeros(num_episodes, jnp.int32))
            return jnp.where(t < i, greedy, jax.random.randint(key, (num_episodes,), 0, num_actions))

        obs, action, reward, done, alive = run_episodes(key_rollout, num_episodes, choose)

        # MONTE-CARLO RETURNS-TO-GO (of the random policy, from every t >= i)
        scaled_reward = config.reward_scale * reward
        mc_return = monte_carlo_returns(scaled_reward, done, config.gamma)
        valid = alive & (timesteps[:, None] >= i)
        new = Transition(obs.astype(jnp.float32), action, scaled_reward, done, mc_return, valid)
        num_new = valid.sum()
        slot = num_stored % sizes.replay_iterations  # an iteration that adds nothing evicts nothing
        buffer = jax.tree.map(lambda b, x: b.at[slot].set(jnp.where(num_new > 0, x, b[slot])), buffer, new)
        num_stored = num_stored + (num_new > 0)

        # REGRESS THE K HEADS: uniform minibatches from the ring's valid slots
        flat = jax.tree.map(lambda x: x.reshape(sizes.buffer_slots, *x.shape[3:]), buffer)
        valid_count = jnp.cumsum(flat.valid)
        # The authors' budget: every env step of the iteration (greedy prefix too) x epochs / batch, so an
        # iteration that adds no transition still trains on the buffer (never empty: iteration 0 stores all).
        env_steps_taken = alive.sum()
        num_gradient_steps = (env_steps_taken * config.num_epochs + batch_size - 1) // batch_size

        def gradient_step(step, carry):
            state, sums = carry
            draw = jax.random.randint(jax.random.fold_in(key_learn, step), (batch_size,), 0,
                                      jnp.maximum(valid_count[-1], 1))
            index = jnp.searchsorted(valid_count, draw, side="right")  # the draw-th valid slot
            timestep = (index // num_episodes) % horizon
            next_index = jnp.where(timestep < horizon - 1, index + num_episodes, index)  # s_{t+1}
            batch = jax.tree.map(lambda x: x[index], flat)
            next_q = network.apply(state.params, flat.obs[next_index])
            targets = head_targets(next_q, batch.reward, batch.done, batch.mc_return, config.gamma)
            (loss, (per_head, loss_average, q_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, batch.obs, batch.action, targets, state.loss_average, config.loss_smoothing)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            state = TrainState(optax.apply_updates(state.params, updates), opt_state, loss_average)
            return state, jax.tree.map(jnp.add, sums, (loss, per_head, q_mean))

        zeros = (jnp.float32(0), jnp.zeros(config.num_heads), jnp.float32(0))
        state, sums = jax.lax.fori_loop(0, num_gradient_steps, gradient_step, (state, zeros))
        loss, per_head, q_mean = jax.tree.map(
            lambda s: jnp.where(num_gradient_steps > 0, s / jnp.maximum(num_gradient_steps, 1), jnp.nan), sums)

        # FREEZE THE POLICY FOR TIMESTEP i
        snapshots = jax.tree.map(lambda s, p: s.at[i].set(p), snapshots, state.params)
        stats = {
            "env_steps_taken": env_steps_taken,
            "collected": jnp.int32(1),
            "episode_return": jnp.where(alive, reward, 0.0).sum(0).mean(),
            "episode_length": alive.sum(0).mean(),
            "loss": loss,
            **{f"loss_head{j + 1}": per_head[j] for j in range(config.num_heads)},
            "q_mean": q_mean,
            "gradient_steps": num_gradient_steps,
            "new_transitions": num_new,
        }
        return state, snapshots, buffer, num_stored, stats

    def skip(i, state, snapshots, buffer, num_stored, key):
        nan = jnp.float32(jnp.nan)
        stats = {"env_steps_taken": jnp.int32(0), "collected": jnp.int32(0), "episode_return": nan,
                 "episode_length": nan, "loss": nan, **{f"loss_head{j + 1}": nan for j in range(config.num_heads)},
                 "q_mean": nan, "gradient_steps": jnp.int32(0), "new_transitions": jnp.int32(0)}
        return state, snapshots, buffer, num_stored, stats

    def update(carry, i):  # one iteration: learn and freeze the policy of timestep i
        state, snapshots, buffer, num_stored, env_steps, num_frozen, latest_eval_return, key = carry
        key, key_iteration, key_eval = jax.random.split(key, 3)
        in_budget = env_steps < config.total_timesteps
        state, snapshots, buffer, num_stored, stats = jax.lax.cond(
            in_budget, collect_and_learn, skip, i, state, snapshots, buffer, num_stored, key_iteration)
        env_steps = env_steps + stats.pop("env_steps_taken")
        num_frozen = num_frozen + stats["collected"]

        # EVALUATE AND LOG
        is_eval = ((i + 1) % sizes.eval_every == 0) | (i == horizon - 1)
        # The final evaluation's episodes come from the seed (runner.final_eval_key): scripts/evaluate.py redoes it.
        key_eval = jnp.where(i == horizon - 1, runner.final_eval_key(config.seed), key_eval)
        eval_return = jax.lax.cond(
            is_eval, lambda: greedy_evaluation(key_eval, num_frozen, snapshots, state.params),
            lambda: jnp.float32(jnp.nan))
        latest_eval_return = jnp.where(is_eval, eval_return, latest_eval_return)
        metrics = {"env_steps": env_steps, "iteration": i, **stats, "eval_return": eval_return}
        if progress is not None:
            jax.lax.cond(
                (i + 1) % sizes.progress_every == 0,
                lambda: jax.debug.callback(
                    lambda m: progress(**m),
                    {"env_steps": (i + 1) * num_episodes * horizon, "budget_used": env_steps,
                     "loss": stats["loss"], "eval_return": latest_eval_return},
                ),
                lambda: None,
            )
        return (state, snapshots, buffer, num_stored, env_steps, num_frozen, latest_eval_return, key), metrics

    def train(key):
        """The whole run, one jittable function of a key: `jax.jit(jax.vmap(make_train(config)))(keys)`
        -> (TrainState, per-timestep policy snapshots, metrics)."""
        carry, metrics = jax.lax.scan(update, init(key), jnp.arange(sizes.num_iterations))
        return carry[0], carry[1], metrics

    return runner.Program(init, update, sizes.num_iterations, train, result=lambda carry: (carry[0], carry[1]),
                          act=greedy_action, evaluate=greedy_evaluation)


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's non-stationary greedy policy (π_t, the snapshot frozen for timestep t, or the last network
    for timesteps never reached) from its checkpoint (`scripts/evaluate.py`); final_return() redoes the run's
    last evaluation, on the same episodes."""
    program = make_train(config)
    env, env_params, _ = make_env(config)
    snapshots, params, num_frozen = checkpoint["policy_snapshots"], checkpoint["params"], checkpoint["num_frozen"]

    def act(t, obs, key):
        policy_t = jax.tree.map(lambda s, p: jnp.where(t < num_frozen, s[jnp.minimum(t, len(s) - 1)], p),
                                snapshots, params)
        return program.act(policy_t, obs[None])[0], t + 1

    return runner.Policy(env, env_params, act=act, start=lambda obs: jnp.int32(0),
                         final_return=lambda: program.evaluate(runner.final_eval_key(config.seed), num_frozen,
                                                               snapshots, params))


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    training = runner.train(
        NAME, config, make_train, sizes.num_iterations * config.episodes_per_iteration * sizes.horizon,
        (sizes.sweep_name, sizes.sweep_values), budget=True,
        detail=f"horizon {sizes.horizon}, k = {config.num_heads}, m = {config.episodes_per_iteration}, budget "
               f"{config.total_timesteps:,} steps")
    summaries = []
    for run in training.runs:
        run_state, run_snapshots = run.state
        iterations_run = run.metrics["collected"].sum(axis=1)
        summaries.append(training.finish(
            run, final_return=run.metrics["eval_return"][:, -1],
            checkpoint={"params": run_state.params, "opt_state": run_state.opt_state,
                        "policy_snapshots": run_snapshots, "num_frozen": iterations_run},
            extra_summary={"iterations_run": iterations_run.tolist(), "num_heads": config.num_heads,
                           "horizon": sizes.horizon, "solve_threshold": sizes.solve_threshold,
                           "steps_to_solve": steps_to_solve(run.metrics["eval_return"], run.metrics["env_steps"],
                                                            sizes.solve_threshold)},
        ))
    metrics = training.metrics
    bad = (np.asarray(metrics["collected"]) > 0) & ~np.isfinite(np.asarray(metrics["loss"])) \
        & (np.asarray(metrics["gradient_steps"]) > 0)
    if bad.any():
        *value_index, seed, iteration = np.argwhere(bad)[0]
        swept = f" ({sizes.sweep_name}={sizes.sweep_values[value_index[0]]:g})" if sizes.sweep_name else ""
        raise SystemExit(
            f"The loss became NaN/inf for seed {seed}{swept} at iteration {iteration}. Outputs so far are in "
            f"{training.run_dir}. Try a lower --lr, a lower --max-grad-norm or a smaller --reward-scale."
        )
    if not config.quiet:
        runner.report(training, summaries, "eval_return", "greedy return", final="final greedy return",
                      extra=lambda s: f"; env steps to reach {s['solve_threshold']}: {s['steps_to_solve']} "
                                      f"({s['env_steps']:,} env steps in {min(s['iterations_run'])} iterations)")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
