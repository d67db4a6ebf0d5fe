"""IWOCS: robust policies by incremental worst-case search over static dynamics models.

Zouitine, Geist, Rachelson, "Solving robust MDPs as a sequence of static RL problems"
(2024). A robust MDP with a static model chosen adversarially from an uncertainty set is solved as a
sequence of ordinary MDPs. Start from a domain-randomization (DR) SAC policy. Then repeat: search the
uncertainty set for the model T_{i+1} = argmin_T V^{π_i}_T(s0) where the current robust policy π_i does
worst (CMA-ES over the normalized parameter box, or a grid: IWOCS*), train a SAC agent on that one model,
and add it to the bank. Each agent's critic also learns an unregularized Q (no entropy bonus) and a
dynamics predictor T̂_j(s, a) -> s' (L1 loss). The robust Q is Q_i(s, a) = min_j Q_{T_j}(s, a) over the
models still *valid* at s_t (||T̂_j(s_{t-1}, a_{t-1}) - s_t||_1 <= ρ_j, else +inf; see --rho-units); the
robust policy acts with π_{j*}, j* = argmin_j Q_{T_j}(s, π_{T_j}(s)), and with the DR policy when no model is
valid. Stop when
|V^{π_i}_{T_{i+1}}(s0) - Q_i(s0, π_i(s0))| <= ε (the search finds nothing worse than the robust Q
predicts) or after M iterations.

Run (from the repository root):
    python algorithms/iwocs.py                                   # pendulum: mass x length, minutes on a CPU
    python algorithms/iwocs.py --search grid                     # IWOCS*: grid search instead of CMA-ES
    python algorithms/iwocs.py --preset brax-hopper-2d --num-seeds 4
    python algorithms/iwocs.py --sweep epsilon=1,5,20              # one vmapped program, RUN_DIR/epsilon=V
    python algorithms/iwocs.py --resume runs/iwocs_Pendulum-v1_... # continue from the last finished stage

The run is one program of stages (make_train: the DR policy, then M + 1 worst-case searches, the first M each
followed by a SAC run on the model found, then the two baselines), run by the harness like the other files:
seeds and swept values vmapped, the whole state saved after every stage (resume.npz, for --resume).
Outputs in the run directory: metrics_seed<i>.csv (one row per stage: env_steps across every SAC run, the
baselines' included; the stage's SAC training return and losses over its last tenth; at each search the
worst-case parameters found, their discounted value V(s0) and undiscounted return, the robust Q at s0 /
reward_scale, each model's Q_j(s0) and ρ_j, how often the DR fallback acted on the worst case, the gap,
stopped), iterations.json (the same per iteration, by seed), curve.png, results.json / results.md (worst-case
and average return over the 10-per-axis grid, eval_episodes episodes per point, for IWOCS, the DR policy and a
nominal SAC policy, each trained with the same total budget), heatmap.png, checkpoint.msgpack (every seed's
bank) and summary.json.

Choices where the paper is silent:
- total_timesteps is the budget per seed of the whole method: dr_fraction of it for the DR policy, the
  rest split evenly over the M iterations (the paper's 1.6M + 3 x 0.8M is dr_fraction 0.4). The DR and
  nominal baselines each get all of total_timesteps. A seed's iterations after its stopping rule held add
  nothing to its bank.
- The unregularized Q is trained on r + γ (1 - term) Q̄(s', tanh(μ(s'))), the deterministic action the
  robust policy takes (one head, as the paper's critic; `--twin-plain-q` uses two and their minimum,
  clipped double Q, which measurably did not narrow the stopping gap: docs/iwocs.md); the dynamics head predicts s' - s from (s, a) (obs
  normalized as the critic's).
- ρ (`rho_selection worst-case`, default): after each iteration one ρ for the whole bank, the one of
  `rho_choices` (10 values in [0.1, 1]) under which the robust policy's worst V(s0) over the models found
  so far is highest (all 10 evaluated in one call). `quantile`: per model, the 90th percentile of T̂_j's
  L1 error on its own last transitions, rounded up to the next choice. The quantile rule alone proved too
  tight on the pendulum: models a little off a trained one were judged invalid and the weak DR fallback
  acted (measured: IWOCS worst case -1419 vs DR SAC -1341 at 24k steps).
- At the first step of an episode there is no previous transition: every model is valid.
- IWOCS* (`--search grid`) searches 9 points per axis by default, a lattice that shares only the box's ends
  with the 10-per-axis evaluation grid, so that it is not searched on the models it is evaluated on.
- The stopping rule compares like with like: V(s0) is the discounted return of search episodes run to
  `search_horizon` steps (default: γ^H <= 0.01, at least the time limit; the time limit is lifted, since the
  critics bootstrap at time limits and so estimate the value without one), and the robust Q at s0 is divided by
  reward_scale (the critics learn scaled rewards). Both are in discounted return units, as ε is.
- The search minimizes that V(s0) (`search_episodes` episodes per candidate, the same initial states for
  all candidates); candidates outside [0, 1]^d are clipped. The robust Q at s0 is averaged over the same
  initial states. Evaluations use deterministic actions tanh(μ).
- Seeds run together (vmapped); a seed that has stopped keeps its bank and ρ (so its robust policy) from
  then on, although the vmapped program still trains a model for it. Every run has its M iterations' stages,
  even when every seed has stopped early (their SAC runs are then computed and left out).

Differences from the authors' code, and why: the authors' code could not be found (searched for IWOCS /
Zouitine; it is not public), so the reference is the paper itself. Known differences from the paper:
- Environments: brax's MuJoCo models (generalized backend) in place of gym's MuJoCo v2/v3, whose masses and
  contacts differ a little (envs/robust.py); ant-3d's third axis is M2TD3's body_mass[4] (the front-left
  lower leg), and front_left_leg stands for gym's body_mass[2], a capsule brax fuses into the torso.
- Parallelism: the brax presets step 128 envs at once (the paper: one env); with one update per env step
  that is 128 updates per iteration on fresh samples, the same ratio.
- Observation normalization in the brax presets (not in the paper), for brax's unscaled observations.
- ρ's units in the brax presets (`--rho-units std`): the predictor's error is the mean over observation
  dimensions of |error| in each dimension's running standard deviation, not the paper's raw L1 norm, whose
  [0.1, 1] means something else on every env (on brax's observations most models would be judged invalid).
  The pendulum preset keeps the raw L1 norm.
- The pendulum preset (this collection's CPU setting) has 1e3 random steps instead of 1e4, 128 units, 4 envs,
  0.5 updates per env step and ε 5; the paper's tasks are MuJoCo.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/
# runner first: on a multi-host launch it starts jax.distributed before gymnax touches the devices
import runner  # noqa: E402
import runlog  # noqa: E402
import envs  # noqa: E402

NAME = Path(__file__).stem  # the algorithm's name in run directories and summaries: a copy names itself


@dataclass(frozen=True)
class Config:
    """IWOCS hyperparameters. Every field is a command-line flag (`--max-iterations 5`)."""

    preset: Literal["pendulum", "brax-inverted-pendulum", "brax-hopper-2d", "brax-halfcheetah-2d",
                    "brax-walker-2d"] = "pendulum"
    """Named settings; other flags override them."""
    env_id: str = "Pendulum-v1"
    """Environment id (must be the uncertainty set's env)."""
    uncertainty_set: str = "pendulum-2d"
    """Name of the uncertainty set in envs (e.g. pendulum-2d, hopper-2d, walker-2d)."""
    seed: int = 0
    """Base seed; run i uses fold_in(PRNGKey(seed), i)."""
    num_seeds: int = 1
    """Independent runs, vmapped together."""
    total_timesteps: int = 40_000
    """Env steps per seed for the whole method (DR policy + all iterations); each baseline gets as many."""
    dr_fraction: float = 0.4
    """Share of total_timesteps for the domain-randomization policy; the rest is split over the iterations."""
    max_iterations: int = 3
    """M: most worst-case models trained."""
    epsilon: float = 5.0
    """Stop when |V(s0) of the found worst case - robust Q(s0)| <= epsilon (discounted return units)."""
    search: Literal["cmaes", "grid"] = "cmaes"
    """Worst-case search: CMA-ES on the normalized box, or a grid (IWOCS*)."""
    cmaes_generations: int = 6
    """CMA-ES generations."""
    cmaes_population: int = 100
    """CMA-ES candidates per generation (evaluated in one vmapped call)."""
    cmaes_mean: float = 0.5
    """Initial CMA-ES mean in the normalized box."""
    cmaes_std: float = 0.5
    """Initial CMA-ES step size in the normalized box."""
    search_episodes: int = 4
    """Initial states per candidate model in the search (the same ones for every candidate)."""
    search_horizon: int = 0
    """Steps of each search episode, the env's time limit lifted to it, so that V(s0) is the infinite-horizon
    discounted value the robust Q estimates (training bootstraps at time limits). 0: the smallest H with
    γ^H <= 0.01, and at least the env's time limit (pendulum: 459; brax: 1000)."""
    search_grid_per_axis: int = 9
    """Grid points per axis for --search grid: another lattice than the evaluation's 10 per axis (they share only
    the box's ends), so that IWOCS* is not searched on the very models it is then evaluated on."""
    eval_grid_per_axis: int = 10
    """Grid points per axis for the final evaluation table and heatmap."""
    eval_episodes: int = 30
    """Episodes (initial states) averaged at each grid point of the final evaluation (M2TD3's protocol: 30)."""
    baselines: bool = True
    """Also train and evaluate the DR and nominal SAC baselines (same total budget each)."""
    rho_selection: Literal["worst-case", "quantile"] = "worst-case"
    """How ρ is chosen from rho_choices: one ρ for the bank maximizing the robust policy's worst V(s0) over the
    models found so far (re-chosen every iteration while a seed runs), or per model the 90th percentile of its own
    L1 errors."""
    rho_choices: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.1, 1.0, 10))
    """Candidate validity thresholds ρ (error of the dynamics predictor, in --rho-units)."""
    rho_units: Literal["raw", "std"] = "raw"
    """Units of the predictor's error that ρ bounds: `raw`, the L1 norm over raw observation dimensions (the
    paper's ||T̂(s, a) - s'||_1); `std`, the mean over dimensions of |error| in running standard deviations of
    each dimension (the model's own observation statistics), so that ρ in [0.1, 1] means the same on every env
    (the brax presets: their observations mix positions and velocities of very different scales)."""
    num_envs: int = 4
    """Parallel training environments per SAC run."""
    buffer_size: int = 1_000_000
    """Replay capacity (capped at the run's steps)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 1_000
    """Random-action env steps at the start of every SAC run (the paper: 1e4 for MuJoCo)."""
    updates_per_env_step: float = 0.5
    """Gradient updates per env step (num_envs * this per iteration, a whole number)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics (0.995 averaging)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic heads (soft Q, unregularized Q, dynamics)."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α."""
    hidden_size: int = 128
    """Units per hidden layer."""
    num_layers: int = 2
    """Hidden layers."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (logged returns stay unscaled)."""
    twin_plain_q: bool = False
    """Two unregularized Q heads and their minimum, for targets and for the robust min (clipped double Q, as
    the soft Q); off: one head, as the paper describes its critic (docs/iwocs.md measures both)."""
    normalize_observations: bool = False
    """Normalize network inputs by running mean and std (per agent)."""
    backend: str = "generalized"
    """Physics backend for brax ids."""
    run_dir: str | None = None
    """Output directory; default runs/iwocs_<env>_<time>."""
    quiet: bool = False
    """No progress lines and no progress.csv (the compiled program then has no host callback, so JAX's
    persistent compilation cache can keep it)."""
    tensorboard: bool = False
    """Also write TensorBoard logs of the SAC runs."""
    wandb: bool = False
    """Also log to Weights & Biases."""
    wandb_project: str = "jax-rl-collection"
    """wandb project name."""
    sweep: str = ""
    """Train every value of one hyperparameter in one vmapped program, e.g. epsilon=1,5,20, each value's run into
    RUN_DIR/NAME=V (see SWEEPABLE)."""
    num_checkpoints: int = 64
    """Times the whole state is saved during the run (RUN_DIR/resume.npz), for --resume: the run's stages (the DR
    policy, each iteration, each baseline) are cut into the most equal chunks <= this that divide their number;
    the default saves after every stage."""
    resume: bool = False
    """Set by `--resume RUN_DIR`, which continues that run from its last saved state."""


# Hyperparameters that `--sweep` can vary inside one vmapped program (they enter the run as numbers). Not gamma:
# it sets the search episodes' length (search_steps); not dr_fraction: it sets the stages' lengths.
SWEEPABLE = ("epsilon", "tau", "actor_lr", "critic_lr", "alpha_lr", "reward_scale")


# Where each value comes from. The IWOCS paper: SAC actor lr 3e-4, critic lr 1e-3, batch 256,
# γ 0.99, Polyak 0.995 (τ 0.005), 1e4 random steps first; CMA-ES 6 generations x 100, mean 0.5, std 0.5; ρ from 10
# values in [0.1, 1]; budget 4M steps for the 2-D sets, DR 1.6M + 3 iterations x 0.8M (dr_fraction 0.4,
# max_iterations 3); grid 10 per axis with 30 episodes per point (M2TD3's evaluation, which IWOCS reports with).
# The SAC paper: 256x256 networks and one gradient update per env step. This collection's choices (the paper
# is silent): 128 parallel envs (GPU throughput), observation normalization, ρ in standard deviations, ε 20
# for the brax tasks (returns in the thousands) and 5 for the pendulum, 4 search episodes per candidate, and the
# pendulum preset's small budget (4e4 steps, 128 units, 4 envs, 0.5 updates per env step, 1e3 random steps) for a CPU.
_BRAX = dict(num_envs=128, updates_per_env_step=1.0, learning_starts=10_000, normalize_observations=True,
             rho_units="std", hidden_size=256, total_timesteps=4_000_000, backend="generalized", epsilon=20.0,
             eval_episodes=30)
PRESETS = {
    "pendulum": Config(),
    "brax-inverted-pendulum": Config(preset="brax-inverted-pendulum", env_id="brax/inverted_pendulum",
                                     uncertainty_set="inverted_pendulum-2d", **{**_BRAX, "total_timesteps": 200_000}),
    "brax-hopper-2d": Config(preset="brax-hopper-2d", env_id="brax/hopper", uncertainty_set="hopper-2d", **_BRAX),
    "brax-halfcheetah-2d": Config(preset="brax-halfcheetah-2d", env_id="brax/halfcheetah",
                                  uncertainty_set="halfcheetah-2d", **_BRAX),
    "brax-walker-2d": Config(preset="brax-walker-2d", env_id="brax/walker2d", uncertainty_set="walker-2d", **_BRAX),
}


class Sizes(NamedTuple):
    dr_steps: int  # env steps per seed of the DR policy
    iteration_steps: int  # env steps per seed of each worst-case SAC run
    updates_per_iteration: int
    num_stages: int  # the DR policy, M + 1 searches (the first M each followed by a SAC run), the baselines
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the budgets; raise before anything is compiled."""
    uset = envs.uncertainty_set(config.uncertainty_set)  # raises with the known names
    if uset.env_id != config.env_id:
        raise runner.ConfigError(f"Uncertainty set {uset.name!r} is for {uset.env_id!r}, not --env-id {config.env_id!r}: "
                         f"pass --env-id {uset.env_id} or another --uncertainty-set.")
    for name in ("num_seeds", "max_iterations", "num_envs", "batch_size", "hidden_size", "cmaes_generations",
                 "cmaes_population", "num_checkpoints"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    if config.search_grid_per_axis < 2 or config.eval_grid_per_axis < 2:
        raise runner.ConfigError("search_grid_per_axis and eval_grid_per_axis must be at least 2 (both ends of each axis).")
    if not 0.0 < config.dr_fraction < 1.0:
        raise runner.ConfigError(f"dr_fraction must be in (0, 1), got {config.dr_fraction}.")
    if not config.rho_choices or min(config.rho_choices) <= 0:
        raise runner.ConfigError(f"rho_choices must be positive thresholds, got {config.rho_choices}.")
    if config.epsilon < 0:
        raise runner.ConfigError(f"epsilon must be >= 0, got {config.epsilon}.")
    if not 0.0 < config.gamma < 1.0:
        raise runner.ConfigError(f"gamma must be in (0, 1) (the robust Q is an infinite-horizon discounted value), got "
                         f"{config.gamma}.")
    if not 0.0 <= config.tau <= 1.0:
        raise runner.ConfigError(f"tau must be in [0, 1], got {config.tau}.")
    for name in ("actor_lr", "critic_lr"):
        if not getattr(config, name) > 0:
            raise runner.ConfigError(f"{name} must be positive, got {getattr(config, name)}: e.g. "
                             f"--{name.replace('_', '-')} 3e-4.")
    if not config.alpha_lr >= 0:
        raise runner.ConfigError(f"alpha_lr must be at least 0 (0 keeps α at its initial value), got {config.alpha_lr}.")
    for name in ("search_episodes", "eval_episodes"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    if config.search_horizon < 0:
        raise runner.ConfigError(f"search_horizon must be >= 0 (0: automatic), got {config.search_horizon}.")
    updates = config.num_envs * config.updates_per_env_step
    if updates < 1 or abs(updates - round(updates)) > 1e-9:
        raise runner.ConfigError(f"num_envs * updates_per_env_step ({updates:g}) must be a whole number >= 1: "
                         f"change --updates-per-env-step.")
    dr_steps = int(config.total_timesteps * config.dr_fraction) // config.num_envs * config.num_envs
    iteration_steps = (config.total_timesteps - dr_steps) // config.max_iterations // config.num_envs * config.num_envs
    if min(dr_steps, iteration_steps) <= config.learning_starts:
        raise runner.ConfigError(f"Each SAC run must outlast learning_starts ({config.learning_starts}): the DR run gets "
                         f"{dr_steps} steps and each of the {config.max_iterations} iterations {iteration_steps}. "
                         f"Raise --total-timesteps or lower --learning-starts / --max-iterations.")
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    num_stages = 1 + config.max_iterations + 1 + (2 if config.baselines else 0)
    return Sizes(dr_steps, iteration_steps, int(round(updates)), num_stages, sweep_name, sweep_values)


def make_env(config: Config):
    """(env, env_params, uncertainty set, action_dim, action bounds); the env without statistics wrappers."""
    uset = envs.uncertainty_set(config.uncertainty_set)
    kwargs = {"backend": config.backend} if config.env_id.startswith(envs.registry.BRAX_PREFIX) else {}
    env, env_params = envs.make(config.env_id, **kwargs)
    action_dim = envs.require_continuous_actions(
        env, env_params, config.env_id, "IWOCS (SAC inside)",
        "--env-id Pendulum-v1 --uncertainty-set pendulum-2d (the cartpole sets are for QARL's continuous push)")
    space = env.action_space(env_params)
    bounds = (jnp.broadcast_to(space.low, (action_dim,)), jnp.broadcast_to(space.high, (action_dim,)))
    return envs.FlattenObservation(env), env_params, uset, action_dim, bounds


# ----------------------------------------------------------------------------------------------------
# NETWORKS


def mlp(x, hidden_size: int, num_layers: int):
    for _ in range(num_layers):
        x = nn.relu(nn.Dense(hidden_size)(x))
    return x


class Actor(nn.Module):
    """π(·|s): mean and log σ of a Gaussian squashed by tanh."""

    action_dim: int
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs):
        x = mlp(obs, self.hidden_size, self.num_layers)
        return nn.Dense(self.action_dim)(x), jnp.clip(nn.Dense(self.action_dim)(x), -20.0, 2.0)


class QNetwork(nn.Module):
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs, action):
        return nn.Dense(1)(mlp(jnp.concatenate([obs, action], -1), self.hidden_size, self.num_layers))[..., 0]


TwinQ = nn.vmap(QNetwork, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0,
                axis_size=2)


class Critic(nn.Module):
    """IWOCS's critic: twin soft Q (for SAC), the unregularized Q (for the robust min; one head, or twin heads
    whose minimum is used) and T̂(s, a) -> s'. Both Q outputs have a leading head axis."""

    obs_dim: int
    hidden_size: int
    num_layers: int
    twin_plain_q: bool = False

    @nn.compact
    def __call__(self, obs, action):
        soft_q = TwinQ(self.hidden_size, self.num_layers, name="soft_q")(obs, action)
        if self.twin_plain_q:
            plain_q = TwinQ(self.hidden_size, self.num_layers, name="plain_q")(obs, action)
        else:
            plain_q = QNetwork(self.hidden_size, self.num_layers, name="plain_q")(obs, action)[None]
        x = mlp(jnp.concatenate([obs, action], -1), self.hidden_size, self.num_layers)
        delta = nn.Dense(self.obs_dim, name="dynamics")(x)  # predicts s' - s in raw observation units
        return soft_q, plain_q, delta


def squashed_gaussian(mean, log_std):
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


# ----------------------------------------------------------------------------------------------------
# SAC PIECES (replay, normalizer, state)


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array  # in [-1, 1]^|A|
    reward: jax.Array
    terminated: jax.Array
    next_obs: jax.Array  # the true next observation (the final one at an episode end)


class RunningStats(NamedTuple):
    count: jax.Array
    mean: jax.Array
    var: jax.Array


def update_stats(stats: RunningStats, batch):
    count = batch.shape[0]
    total = stats.count + count
    delta = batch.mean(0) - stats.mean
    m2 = stats.var * stats.count + batch.var(0) * count + delta**2 * stats.count * count / total
    return RunningStats(total, stats.mean + delta * count / total, m2 / total)


class Agent(NamedTuple):
    """One SAC agent (also the layout of the model bank: then every leaf has a leading model axis)."""

    actor: Any
    critic: Any
    obs_stats: RunningStats
    rho: jax.Array  # validity threshold of the dynamics predictor


class TrainState(NamedTuple):
    actor: Any
    critic: Any
    target_critic: Any
    log_alpha: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    obs_stats: RunningStats


def prediction_error(stats: RunningStats, predicted, observed, units: str):
    """The dynamics predictor's error (last axis: observation dimensions), the quantity ρ bounds: the L1 norm
    (`raw`) or the mean of |error| / σ over dimensions, σ from the model's running statistics (`std`)."""
    error = jnp.abs(predicted - observed)
    return error.sum(-1) if units == "raw" else (error / jnp.sqrt(stats.var + 1e-6)).mean(-1)


def choose_rho(errors, rho_choices):
    """The smallest ρ in `rho_choices` at or above the 90th percentile of the predictor's errors."""
    choices = jnp.sort(jnp.asarray(rho_choices, jnp.float32))
    needed = jnp.quantile(errors, 0.9)
    return jnp.where(choices >= needed, choices, jnp.inf).min().clip(max=choices[-1])


# ----------------------------------------------------------------------------------------------------
# ROBUST POLICY: min over valid models, fallback to the DR policy


class Bank(NamedTuple):
    models: Agent  # leaves stacked on a leading axis of size max_iterations
    active: jax.Array  # (M,) which slots hold a trained model
    fallback: Agent  # the domain-randomization agent


class Memory(NamedTuple):
    prev_obs: jax.Array
    prev_action: jax.Array  # in [-1, 1]^|A|
    has_prev: jax.Array


def make_robust_policy(actor_net: Actor, critic_net: Critic, action_dim: int, normalize_on: bool,
                       rho_units: str = "raw"):
    """(robust_q_values, act, init): the IWOCS policy as pure functions of the bank; `act` and `init`
    follow the evaluators' memory protocol (policy(params, obs, carry) -> (action, carry))."""

    def normalize(stats, obs):
        return (obs - stats.mean) / jnp.sqrt(stats.var + 1e-8) if normalize_on else obs

    def model_view(model: Agent, obs, memory: Memory):
        """One model's greedy action, its unregularized Q there, and whether it explains the last step."""
        action = jnp.tanh(actor_net.apply(model.actor, normalize(model.obs_stats, obs))[0])
        q = critic_net.apply(model.critic, normalize(model.obs_stats, obs), action)[1].min(0)
        _, _, delta = critic_net.apply(model.critic, normalize(model.obs_stats, memory.prev_obs), memory.prev_action)
        error = prediction_error(model.obs_stats, memory.prev_obs + delta, obs, rho_units)  # T̂_j(s_{t-1}, a_{t-1}), s_t
        return action, q, error <= model.rho

    def robust_q_values(bank: Bank, obs, memory: Memory):
        """Per model: its action, Q_{T_j}(s, π_j(s)) (+inf where invalid or not trained yet), validity."""
        actions, q, valid = jax.vmap(model_view, in_axes=(0, None, None))(bank.models, obs, memory)
        valid = bank.active & (valid | ~memory.has_prev)
        return actions, jnp.where(valid, q, jnp.inf), valid

    def act(bank: Bank, obs, memory: Memory):
        """a = π_{j*}(s), j* = argmin_j Q_{T_j}(s, π_j(s)) over valid models; the DR policy if none is valid."""
        actions, q, valid = robust_q_values(bank, obs, memory)
        fallback = jnp.tanh(actor_net.apply(bank.fallback.actor, normalize(bank.fallback.obs_stats, obs))[0])
        action = jnp.where(valid.any(), actions[jnp.argmin(q)], fallback)
        return action, Memory(obs, action, jnp.bool_(True))

    def init(bank: Bank, obs):
        return Memory(jnp.zeros_like(obs), jnp.zeros(action_dim), jnp.bool_(False))

    return robust_q_values, act, init


def should_stop(worst_value, robust_q, epsilon: float):
    """IWOCS's stopping rule: the found worst case agrees with the robust Q at s0 within ε. Like with like: both
    are infinite-horizon discounted values in return units (see search_steps and robust_q_at_start)."""
    return jnp.abs(worst_value - robust_q) <= epsilon


def critic_targets(batch: Transition, next_soft_q_min, next_log_prob, next_plain_q, alpha, gamma: float,
                   reward_scale: float):
    """The soft (SAC) and unregularized targets of a batch, from the critics at batch.next_obs (the true next
    observation: the final one where an episode ended). At a time limit they bootstrap; only termination cuts:
        soft:  r + γ (1 - term) (min_i Q_i(s', a') - α log π(a'|s')),   a' ~ π(·|s')
        plain: r + γ (1 - term) Q(s', tanh(μ(s')))"""
    not_done = 1.0 - batch.terminated.astype(jnp.float32)
    reward = reward_scale * batch.reward
    soft_target = reward + gamma * not_done * (next_soft_q_min - alpha * next_log_prob)
    plain_target = reward + gamma * not_done * next_plain_q
    return soft_target, plain_target


def search_steps(config: Config, episode_steps: int) -> int:
    """Steps of a search episode: config.search_horizon, or the smallest H with γ^H <= 0.01 and at least the env's
    time limit. The robust Q bootstraps at time limits, so it estimates Σ_t γ^t r_t without one: a rollout cut at
    the time limit would miss γ^T of it (pendulum: T = 200, γ^T = 0.13, tens of return units)."""
    if config.search_horizon:
        return config.search_horizon
    return max(episode_steps, int(np.ceil(np.log(0.01) / np.log(config.gamma))))


# ----------------------------------------------------------------------------------------------------
# SAC ON ONE MODEL (or on domain randomization), with the extra critic heads


def make_sac(config: Config, num_steps: int, randomize: bool, progress: Callable | None = None) -> Callable:
    """`train(key, model_values, step_offset) -> (Agent, metrics)`: SAC on the model `model_values` (physical
    units, traced: one compile serves every iteration), or on domain randomization when `randomize`."""
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    base, env_params, uset, action_dim, (action_low, action_high) = make_env(config)
    env = envs.EpisodeStatistics(envs.DomainRandomization(base, uset) if randomize else base)
    obs_dim = base.observation_space(env_params).shape[0]
    actor_net = Actor(action_dim, config.hidden_size, config.num_layers)
    critic_net = Critic(obs_dim, config.hidden_size, config.num_layers, config.twin_plain_q)
    actor_optimizer, critic_optimizer, alpha_optimizer = (optax.adam(config.actor_lr), optax.adam(config.critic_lr),
                                                          optax.adam(config.alpha_lr))
    target_entropy = -float(action_dim)
    iterations = num_steps // config.num_envs
    random_iterations = config.learning_starts // config.num_envs
    per_row = max(iterations // 50, 1)
    num_rows = iterations // per_row
    capacity = min(config.buffer_size, num_rows * per_row * config.num_envs)

    def normalize(stats, obs):
        return (obs - stats.mean) / jnp.sqrt(stats.var + 1e-8) if config.normalize_observations else obs

    def sample_action(actor_params, obs, key):
        return squashed_gaussian(*actor_net.apply(actor_params, obs)).sample_and_log_prob(seed=key)

    def gradient_update(state: TrainState, batch: Transition, key):
        key_next, key_actor = jax.random.split(key)
        obs, next_obs = normalize(state.obs_stats, batch.obs), normalize(state.obs_stats, batch.next_obs)
        alpha = jnp.exp(state.log_alpha)

        # CRITIC TARGETS: soft (SAC) and unregularized (greedy action, no entropy term) Q
        next_action, next_log_prob = sample_action(state.actor, next_obs, key_next)
        next_soft_q, _, _ = critic_net.apply(state.target_critic, next_obs, next_action)
        greedy_next = jnp.tanh(actor_net.apply(state.actor, next_obs)[0])
        _, next_plain_q, _ = critic_net.apply(state.target_critic, next_obs, greedy_next)
        soft_target, plain_target = critic_targets(batch, next_soft_q.min(0), next_log_prob, next_plain_q.min(0),
                                                   alpha, config.gamma, config.reward_scale)

        # UPDATE CRITIC HEADS: squared TD errors, and the L1 loss of the dynamics predictor
        def critic_loss_fn(params):
            soft_q, plain_q, delta = critic_net.apply(params, obs, batch.action)
            soft_loss = 0.5 * ((soft_q - soft_target) ** 2).mean(-1).sum()
            plain_loss = 0.5 * ((plain_q - plain_target) ** 2).mean(-1).sum()
            dynamics_loss = jnp.abs(batch.obs + delta - batch.next_obs).sum(-1).mean()
            return soft_loss + plain_loss + dynamics_loss, (soft_loss, plain_loss, dynamics_loss)

        (_, (soft_loss, plain_loss, dynamics_loss)), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
            state.critic)
        updates, critic_opt = critic_optimizer.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)

        # UPDATE ACTOR (against the new soft critics), then TEMPERATURE
        def actor_loss_fn(params):
            action, log_prob = sample_action(params, obs, key_actor)
            soft_q, _, _ = critic_net.apply(critic_params, obs, action)
            return (alpha * log_prob - soft_q.min(0)).mean(), log_prob

        (_, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(state.actor)
        updates, actor_opt = actor_optimizer.update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)
        alpha_grad = jax.grad(lambda la: -(jnp.exp(la) * jax.lax.stop_gradient(log_prob + target_entropy)).mean())(
            state.log_alpha)
        updates, alpha_opt = alpha_optimizer.update(alpha_grad, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        target_critic = optax.incremental_update(critic_params, state.target_critic, config.tau)
        state = TrainState(actor_params, critic_params, target_critic, log_alpha, actor_opt, critic_opt,
                           alpha_opt, state.obs_stats)
        return state, {"soft_q_loss": soft_loss, "plain_q_loss": plain_loss, "dynamics_loss": dynamics_loss}

    def train(key, model_values, step_offset):
        env_params_model = env_params if randomize else uset.apply(base, env_params, model_values)
        key, key_actor, key_critic, key_reset = jax.random.split(key, 4)
        dummy_obs, dummy_action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        actor_params = actor_net.init(key_actor, dummy_obs)
        critic_params = critic_net.init(key_critic, dummy_obs, dummy_action)
        log_alpha = jnp.float32(0.0)
        state = TrainState(actor_params, critic_params, critic_params, log_alpha, actor_optimizer.init(actor_params),
                           critic_optimizer.init(critic_params), alpha_optimizer.init(log_alpha),
                           RunningStats(jnp.float32(1e-4), jnp.zeros(obs_dim), jnp.ones(obs_dim)))
        buffer = Transition(jnp.zeros((capacity, obs_dim)), jnp.zeros((capacity, action_dim)), jnp.zeros(capacity),
                            jnp.zeros(capacity, bool), jnp.zeros((capacity, obs_dim)))
        reset = jax.vmap(env.reset, in_axes=(0, None))
        step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
        obs, env_state = reset(jax.random.split(key_reset, config.num_envs), env_params_model)
        no_losses = {k: jnp.float32(jnp.nan) for k in ("soft_q_loss", "plain_q_loss", "dynamics_loss")}

        def iteration(carry, index):
            state, buffer, env_state, obs, key = carry
            key, key_action, key_random, key_step, key_update = jax.random.split(key, 5)
            # COLLECT
            policy_action, _ = sample_action(state.actor, normalize(state.obs_stats, obs), key_action)
            random_action = jax.random.uniform(key_random, policy_action.shape, minval=-1.0, maxval=1.0)
            action = jnp.where(index < random_iterations, random_action, policy_action)
            env_action = action_low + 0.5 * (action + 1.0) * (action_high - action_low)
            next_obs, env_state, reward, terminated, truncated, info = step(
                jax.random.split(key_step, config.num_envs), env_state, env_action, env_params_model)
            true_next = jnp.where((terminated | truncated)[:, None], info["final_observation"], next_obs)
            slots = (index * config.num_envs + jnp.arange(config.num_envs)) % capacity
            buffer = jax.tree.map(lambda stored, new: stored.at[slots].set(new), buffer,
                                  Transition(obs, action, reward, terminated, true_next))
            if config.normalize_observations or config.rho_units == "std":  # (std: ρ's units need them)
                state = state._replace(obs_stats=update_stats(state.obs_stats, true_next))
            filled = jnp.minimum((index + 1) * config.num_envs, capacity)

            # UPDATE NETWORKS
            def learn(state):
                def one(state, key):
                    key_sample, key_loss = jax.random.split(key)
                    rows = jax.random.randint(key_sample, (config.batch_size,), 0, filled)
                    return gradient_update(state, jax.tree.map(lambda x: x[rows], buffer), key_loss)

                state, losses = jax.lax.scan(one, state, jax.random.split(key_update, sizes.updates_per_iteration))
                return state, jax.tree.map(jnp.mean, losses)

            state, losses = jax.lax.cond(index >= random_iterations, learn, lambda s: (s, no_losses), state)
            return (state, buffer, env_state, next_obs, key), (losses, info["episode_done"], info["episode_return"])

        def row(carry, row_index):
            carry, (losses, done, returns) = jax.lax.scan(iteration, carry, row_index * per_row + jnp.arange(per_row))
            env_steps = step_offset + (row_index + 1) * per_row * config.num_envs
            metrics = {"env_steps": env_steps, "episode_return": envs.mean_over_finished(returns, done),
                       **{k: jnp.nanmean(v) for k, v in losses.items()}}
            if progress is not None:
                jax.debug.callback(lambda m: progress(**m), {k: metrics[k] for k in ("env_steps", "episode_return")})
            return carry, metrics

        carry, metrics = jax.lax.scan(row, (state, buffer, env_state, obs, key), jnp.arange(num_rows))
        state, buffer = carry[0], carry[1]
        # ρ from the predictor's errors on the most recent transitions of its own model
        recent = jax.tree.map(lambda x: x[-min(capacity, 4096):], buffer)
        _, _, delta = critic_net.apply(state.critic, normalize(state.obs_stats, recent.obs), recent.action)
        errors = prediction_error(state.obs_stats, recent.obs + delta, recent.next_obs, config.rho_units)
        rho = choose_rho(errors, config.rho_choices)
        return Agent(state.actor, state.critic, state.obs_stats, rho), metrics

    return train


# ----------------------------------------------------------------------------------------------------
# WORST-CASE SEARCH (all candidates of a generation / the whole grid in one vmapped evaluation)


def cmaes_search(evaluate: Callable, uset, key, config: Config):
    """CMA-ES (evosax) over z in [0, 1]^d minimizing evaluate(values (P, d)) -> (P,); returns (values, value).
    `evaluate` has its initial states fixed (common random numbers): every generation sees the same ones."""
    from evosax.algorithms import CMA_ES

    strategy = CMA_ES(population_size=config.cmaes_population, solution=jnp.zeros(uset.dim))
    params = strategy.default_params.replace(std_init=jnp.float32(config.cmaes_std))
    key, key_init = jax.random.split(key)
    state = strategy.init(key_init, jnp.full(uset.dim, config.cmaes_mean), params)

    def generation(carry, key):
        state, best_z, best_value = carry
        key_ask, key_tell = jax.random.split(key)
        z, state = strategy.ask(key_ask, state, params)
        z = jnp.clip(z, 0.0, 1.0)  # evaluate (and tell) the clipped candidates: the set is the box
        fitness = evaluate(uset.from_normalized(z))
        state, _ = strategy.tell(key_tell, z, fitness, state, params)
        i = jnp.argmin(fitness)
        better = fitness[i] < best_value
        return (state, jnp.where(better, z[i], best_z), jnp.where(better, fitness[i], best_value)), None

    carry = (state, jnp.full(uset.dim, config.cmaes_mean), jnp.float32(jnp.inf))
    (_, best_z, best_value), _ = jax.lax.scan(generation, carry, jax.random.split(key, config.cmaes_generations))
    return uset.from_normalized(best_z), best_value


def grid_search(evaluate: Callable, uset, key, config: Config):
    """IWOCS*: every point of the grid in one call; returns (values, value) of the worst."""
    flat = uset.grid(config.search_grid_per_axis).reshape(-1, uset.dim)
    returns = evaluate(flat)
    return flat[jnp.argmin(returns)], returns.min()


# ----------------------------------------------------------------------------------------------------
# IWOCS: the pieces a stage calls (one seed's bank; `batched`: jitted with a leading seed axis, for the final
# evaluation and the tests)


class Pieces(NamedTuple):
    search: Callable  # (bank, key) -> (worst values (d,), V(s0) there)
    robust_q_at_start: Callable  # (bank, values (d,), key) -> robust Q / reward_scale at the search's starts
    model_q_at_start: Callable  # (bank, values (d,), key) -> each model's Q_j(s0) / reward_scale there (M,)
    fallback_rate: Callable  # (bank, values (d,), key) -> fraction of steps the DR fallback acts there
    model_value: Callable  # (bank, values (d,), key) -> V(s0) of the robust policy, as the search sees it
    model_return: Callable  # (bank, values (d,), key) -> undiscounted return of the robust policy
    select_rho: Callable  # (bank, found values (M, d), found mask (M,), key) -> (ρ, scores (R,))
    grid_robust: Callable  # (bank, key) -> GridEvaluation
    grid_plain: Callable  # (agent, key) -> GridEvaluation


def make_pieces(config: Config, batched: bool = True) -> Pieces:
    base, env_params, uset, action_dim, (low, high) = make_env(config)
    obs_dim = base.observation_space(env_params).shape[0]
    actor_net = Actor(action_dim, config.hidden_size, config.num_layers)
    critic_net = Critic(obs_dim, config.hidden_size, config.num_layers, config.twin_plain_q)
    robust_q_values, act, init = make_robust_policy(actor_net, critic_net, action_dim, config.normalize_observations,
                                                    config.rho_units)
    episode_steps = int(env_params.max_steps_in_episode)

    def to_env(action):
        return low + 0.5 * (action + 1.0) * (high - low)

    def robust_policy(bank, obs, memory):
        action, memory = act(bank, obs, memory)
        return to_env(action), memory

    def plain_policy(agent, obs):
        stats = agent.obs_stats
        obs = (obs - stats.mean) / jnp.sqrt(stats.var + 1e-8) if config.normalize_observations else obs
        return to_env(jnp.tanh(actor_net.apply(agent.actor, obs)[0]))

    values_discounted = envs.make_model_evaluator(envs.DiscountedReward(base, config.gamma), env_params, uset,
                                                  robust_policy, search_steps(config, episode_steps),
                                                  config.search_episodes, init)
    returns_undiscounted = envs.make_model_evaluator(base, env_params, uset, robust_policy, episode_steps,
                                                     config.search_episodes, init)
    searcher = cmaes_search if config.search == "cmaes" else grid_search

    def search(bank, key):
        key_search, key_states = jax.random.split(key)  # key_states: the initial states, as in robust_q_at_start
        return searcher(lambda values: values_discounted(bank, values, key_states), uset, key_search, config)

    def q_at_starts(bank, values, key):
        """Every model's Q_j(s0, π_j(s0)) / reward_scale (+inf: not trained yet) at each initial state the
        evaluator used for this key (envs/robust.py draws episode e's reset key as split(split(key, E)[e])[0]):
        (search_episodes, M). The critics learn scaled rewards; this is in return units, as V(s0)."""
        key = jax.random.split(key)[1]  # the search's key_states
        params = uset.apply(base, env_params, values)
        starts = jax.vmap(lambda k: base.reset(jax.random.split(k)[0], params)[0])(
            jax.random.split(key, config.search_episodes))
        return jax.vmap(lambda obs: robust_q_values(bank, obs, init(bank, obs))[1])(starts) / config.reward_scale

    def robust_q_at_start(bank, values, key):
        """The robust Q_i(s0, π_i(s0)) = min_j Q_j at each initial state, averaged over them."""
        return q_at_starts(bank, values, key).min(1).mean()

    def model_q_at_start(bank, values, key):
        """Each model's own Q_j(s0, π_j(s0)), averaged over the same initial states."""
        return q_at_starts(bank, values, key).mean(0)

    def fallback_rate(bank, values, key):
        """The fraction of the steps of search_episodes episodes (one time limit each) on the model `values` at
        which no model of the bank is valid, so that the DR fallback acts."""
        params = uset.apply(base, env_params, values)

        def episode(key):
            key_reset, key_steps = jax.random.split(key)
            obs, env_state = base.reset(key_reset, params)

            def step(carry, key):
                obs, env_state, memory = carry
                none_valid = ~robust_q_values(bank, obs, memory)[2].any()
                action, memory = robust_policy(bank, obs, memory)
                obs, env_state, *_ = base.step(key, env_state, action, params)
                return (obs, env_state, memory), none_valid

            carry = (obs, env_state, init(bank, obs))
            return jax.lax.scan(step, carry, jax.random.split(key_steps, episode_steps))[1].mean()

        return jax.vmap(episode)(jax.random.split(key, config.search_episodes)).mean()

    def model_value(bank, values, key):
        return values_discounted(bank, values[None], jax.random.split(key)[1])[0]

    def model_return(bank, values, key):
        return returns_undiscounted(bank, values[None], jax.random.split(key)[1])[0]

    def select_rho(bank, found_values, found, key):
        """ρ in rho_choices maximizing min over the found worst models of the robust policy's V(s0) there."""
        choices = jnp.asarray(config.rho_choices, jnp.float32)

        def score(rho):
            trial = bank._replace(models=bank.models._replace(rho=jnp.full_like(bank.models.rho, rho)))
            values = values_discounted(trial, found_values, jax.random.split(key)[1])
            return jnp.where(found, values, jnp.inf).min()

        scores = jax.lax.map(score, choices)
        return choices[jnp.argmax(scores)], scores

    grid_robust = envs.make_grid_evaluator(base, env_params, uset, robust_policy, config.eval_grid_per_axis,
                                           episode_steps, config.eval_episodes, init)
    grid_plain = envs.make_grid_evaluator(base, env_params, uset, plain_policy, config.eval_grid_per_axis,
                                          episode_steps, config.eval_episodes)

    pieces = Pieces(search, robust_q_at_start, model_q_at_start, fallback_rate, model_value, model_return, select_rho,
                    grid_robust, grid_plain)
    if not batched:
        return pieces
    return Pieces(*(jax.jit(jax.vmap(f, in_axes=(0, None) if f in (grid_robust, grid_plain) else 0)) for f in pieces))


def add_model(bank: Bank, agent: Agent, slot, keep) -> Bank:
    """Put the new agent in `slot` of the bank if `keep` (the seed has not stopped); a stopped seed's bank stays as
    it was, bit for bit, so its robust policy is the one the stopping rule accepted."""
    models = jax.tree.map(lambda stored, new: stored.at[slot].set(jnp.where(keep, new, stored[slot])),
                          bank.models, agent)
    return bank._replace(models=models, active=bank.active.at[slot].set(keep | bank.active[slot]))


def set_bank_rho(bank: Bank, rho, keep) -> Bank:
    """One ρ for every model of the bank, if `keep`; a stopped seed keeps its ρ."""
    return bank._replace(models=bank.models._replace(rho=jnp.where(keep, rho, bank.models.rho)))


# ----------------------------------------------------------------------------------------------------
# THE RUN: its stages as one program (the DR policy, the iterations, the baselines), run by the harness


BASELINES = ("DR SAC", "nominal SAC")  # trained with the same total budget as IWOCS, each from its own key


class RunState(NamedTuple):
    """What one seed's run keeps between stages (the harness adds the seed axis and saves it after every stage)."""

    bank: Bank  # the models trained so far and the DR fallback (from stage 0 on)
    stopped: jax.Array  # the stopping rule has held: the bank and ρ stay as they were then
    found: jax.Array  # (M, d) the worst cases the bank's models were trained on
    baselines: Agent  # leaves stacked on a leading axis of 2: DR SAC, nominal SAC (zeros without --baselines)
    env_steps: jax.Array  # env steps of every SAC run so far, the baselines' included
    key: jax.Array


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build the whole run as a `runner.Program`: `make_train(config)(key) -> (RunState, metrics)` runs it in one
    jittable scan over its stages; `runner.run_program` runs it in chunks, with the state saved after each.

    Stage 0 trains the DR policy (the fallback); stage 1 + i searches for the worst model against the robust
    policy of the i models trained so far, applies the stopping rule and, for i < M, trains a SAC agent on that
    model and adds it to the bank; the last two stages train the baselines. Each stage logs one row of metrics.
    Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the swept field traced.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    base, env_params, uset, action_dim, _ = make_env(config)
    obs_dim = base.observation_space(env_params).shape[0]
    actor_net = Actor(action_dim, config.hidden_size, config.num_layers)
    critic_net = Critic(obs_dim, config.hidden_size, config.num_layers, config.twin_plain_q)
    num_models = config.max_iterations
    iwocs_steps = sizes.dr_steps + num_models * sizes.iteration_steps  # also each baseline's budget
    train_dr = make_sac(config, sizes.dr_steps, True, progress)
    train_model = make_sac(config, sizes.iteration_steps, False, progress)
    train_baselines = [make_sac(config, iwocs_steps, randomize, progress) for randomize in (True, False)]
    pieces = make_pieces(config, batched=False)
    nominal = jnp.asarray(uset.nominal, jnp.float32)
    nan = jnp.float32(jnp.nan)

    def untrained_agent(key) -> Agent:
        """An agent of the shapes SAC returns (placeholder of a bank slot, the fallback and the baselines)."""
        key_actor, key_critic = jax.random.split(key)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        return Agent(actor_net.init(key_actor, obs), critic_net.init(key_critic, obs, action),
                     RunningStats(jnp.float32(1e-4), jnp.zeros(obs_dim), jnp.ones(obs_dim)), jnp.float32(0.0))

    def init(key):
        agent = untrained_agent(key)
        zeros = lambda n: jax.tree.map(lambda x: jnp.zeros((n,) + x.shape, x.dtype), agent)
        bank = Bank(zeros(num_models), jnp.zeros(num_models, bool), agent)
        return RunState(bank, jnp.bool_(False), jnp.zeros((num_models, uset.dim), jnp.float32), zeros(2),
                        jnp.int32(0), key)

    def row(state: RunState, stage: int, sac_metrics=None, measured=None):
        """The stage's metrics row: the SAC run's training return and losses over its last tenth (NaN for a stage
        without one), the search's measures (NaN outside iterations), env steps and whether the seed stopped."""
        if sac_metrics is None:
            sac = {k: nan for k in ("episode_return", "soft_q_loss", "plain_q_loss", "dynamics_loss")}
        else:
            tail = max(jax.tree.leaves(sac_metrics)[0].shape[0] // 10, 1)
            sac = {k: jnp.nanmean(sac_metrics[k][-tail:]) for k in ("episode_return", "soft_q_loss", "plain_q_loss",
                                                                     "dynamics_loss")}
        names = ("worst_value_v_s0", "worst_return", "robust_q_s0", "gap", "fallback_rate")
        measured = measured or {**{k: nan for k in names}, **{f"worst_{n}": nan for n in uset.names},
                                **{f"model_q_s0_{j}": nan for j in range(num_models)},
                                **{f"rho_{j}": nan for j in range(num_models)}}
        return {"env_steps": state.env_steps, "stage": jnp.int32(stage), "stopped": state.stopped.astype(jnp.float32),
                "models": state.bank.active.sum().astype(jnp.int32), **sac, **measured}

    # DOMAIN-RANDOMIZATION POLICY (the fallback)
    def dr_stage(state: RunState, index):
        fallback, metrics = train_dr(jax.random.fold_in(state.key, 0), nominal, 0)
        state = state._replace(bank=state.bank._replace(fallback=fallback), env_steps=jnp.int32(sizes.dr_steps))
        return state, row(state, 0, metrics)

    def iteration_stage(state: RunState, index):
        i = index - 1  # models in the bank
        key = jax.random.fold_in(state.key, 1000 + i)
        bank = state.bank
        # WORST-CASE SEARCH against the current robust policy (the DR policy alone at i = 0)
        worst_values, worst_value = pieces.search(bank, key)
        robust_q = pieces.robust_q_at_start(bank, worst_values, key)
        model_q = pieces.model_q_at_start(bank, worst_values, key)
        measured = {"worst_value_v_s0": worst_value, "worst_return": pieces.model_return(bank, worst_values, key),
                    "robust_q_s0": robust_q, "gap": jnp.abs(worst_value - robust_q),
                    "fallback_rate": pieces.fallback_rate(bank, worst_values, key),
                    **{f"worst_{n}": worst_values[d] for d, n in enumerate(uset.names)},
                    **{f"model_q_s0_{j}": model_q[j] for j in range(num_models)},
                    **{f"rho_{j}": bank.models.rho[j] for j in range(num_models)}}
        # STOPPING RULE (a robust Q exists from the first trained model on)
        state = state._replace(stopped=state.stopped | ((i > 0) & should_stop(worst_value, robust_q, config.epsilon)))

        def solve(state: RunState):
            """SOLVE THE STATIC MDP of the worst case, add the agent to the bank (a stopped seed's agent is trained,
            inside the same vmapped program, and left out)."""
            agent, metrics = train_model(jax.random.fold_in(state.key, i + 1), worst_values, state.env_steps)
            running = ~state.stopped
            bank = add_model(state.bank, agent, i, running)
            found = state.found.at[i].set(jnp.where(running, worst_values, state.found[i]))
            if config.rho_selection == "worst-case":  # one ρ for the bank, checked on every worst case found so far
                rho, _ = pieces.select_rho(bank, found, bank.active, key)
                bank = set_bank_rho(bank, rho, running)
            state = state._replace(bank=bank, found=found, env_steps=state.env_steps + sizes.iteration_steps)
            return state, row(state, 1, metrics, measured)

        # after the last search there is nothing to train (i = M)
        return jax.lax.cond(i < num_models, solve, lambda state: (state, row(state, 1, None, measured)), state)

    # BASELINES: DR and nominal SAC with the same total budget
    def baseline_stage(b: int):
        def stage(state: RunState, index):
            agent, metrics = train_baselines[b](jax.random.fold_in(state.key, 500 + b), nominal, state.env_steps)
            baselines = jax.tree.map(lambda stored, new: stored.at[b].set(new), state.baselines, agent)
            state = state._replace(baselines=baselines, env_steps=state.env_steps + iwocs_steps)
            return state, row(state, 2, metrics)
        return stage

    stages = [dr_stage, iteration_stage] + ([baseline_stage(0), baseline_stage(1)] if config.baselines else [])

    def update(state: RunState, index):
        branch = jnp.where(index == 0, 0, jnp.where(index <= num_models + 1, 1, index - num_models))
        return jax.lax.switch(branch, stages, state, index)

    def train(key):
        return jax.lax.scan(update, init(key), jnp.arange(sizes.num_stages))

    return runner.Program(init, update, sizes.num_stages, train)


# ----------------------------------------------------------------------------------------------------
# OUTPUT


def agent_from_dict(d: dict) -> Agent:
    """An Agent from its saved dict (checkpoints keep NamedTuples as dicts)."""
    return Agent(d["actor"], d["critic"], RunningStats(**d["obs_stats"]), d["rho"])


def bank_from_dict(d: dict) -> Bank:
    return jax.tree.map(jnp.asarray, Bank(agent_from_dict(d["models"]), d["active"], agent_from_dict(d["fallback"])))


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's robust policy (its bank of models, each with its Q-network and dynamics check, and the DR
    fallback) from its checkpoint (`scripts/evaluate.py`); final_return() redoes the run's final evaluation (the
    worst case over the grid, the same episodes)."""
    env, env_params, _, action_dim, (low, high) = make_env(config)
    actor_net = Actor(action_dim, config.hidden_size, config.num_layers)
    obs_dim = env.observation_space(env_params).shape[0]
    critic_net = Critic(obs_dim, config.hidden_size, config.num_layers, config.twin_plain_q)
    _, act, init = make_robust_policy(actor_net, critic_net, action_dim, config.normalize_observations,
                                      config.rho_units)
    bank = bank_from_dict(checkpoint)

    def robust_act(memory, obs, key):
        action, memory = act(bank, obs, memory)
        return low + 0.5 * (action + 1.0) * (high - low), memory

    def final_return():
        grid = make_pieces(config).grid_robust(jax.tree.map(lambda x: x[None], bank), runner.final_eval_key(config.seed))
        return grid.worst[0]

    return runner.Policy(env, env_params, act=robust_act, start=lambda obs: init(bank, obs), final_return=final_return)


def iteration_records(metrics: dict[str, np.ndarray], config: Config, sizes: Sizes, uset) -> list[dict[str, Any]]:
    """iterations.json: per iteration i (the search against the bank of i models), every seed's worst case found,
    its V(s0) and return, the robust Q(s0), each model's Q_j(s0) and ρ_j, the fallback rate, the gap and whether
    the seed had stopped (infinite values as null)."""

    def column(name, row):
        return np.asarray(metrics[name][:, row], float)

    def finite(values):
        return [float(v) if np.isfinite(v) else None for v in values]

    records = []
    for i in range(config.max_iterations + 1):
        row = 1 + i
        records.append({
            "iteration": i, "env_steps": sizes.dr_steps + i * sizes.iteration_steps, "models": i,
            "worst_values": np.stack([column(f"worst_{n}", row) for n in uset.names], 1).tolist(),
            "worst_value_v_s0": column("worst_value_v_s0", row).tolist(),
            "worst_return": column("worst_return", row).tolist(),
            "robust_q_s0": finite(column("robust_q_s0", row)), "gap": finite(column("gap", row)),
            "stopped": (column("stopped", row) > 0).tolist(),
            "model_q_s0": np.stack([column(f"model_q_s0_{j}", row) for j in range(i)], 1).tolist() if i else
            [[] for _ in range(config.num_seeds)],
            "fallback_rate": column("fallback_rate", row).tolist(),
            "rho": np.stack([column(f"rho_{j}", row) for j in range(i)], 1).tolist() if i else
            [[] for _ in range(config.num_seeds)],
        })
    return records


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, evaluate over the grid, write the run directory (one per swept value); return its summary (a list
    for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    uset = envs.uncertainty_set(config.uncertainty_set)
    iwocs_steps = sizes.dr_steps + config.max_iterations * sizes.iteration_steps
    training = runner.train(
        NAME, config, make_train, iwocs_steps * (1 + len(BASELINES) * config.baselines),
        (sizes.sweep_name, sizes.sweep_values), every_seconds=5.0, budget=True,
        detail=f"{uset.name}: {' x '.join(uset.names)}; DR {sizes.dr_steps:,} steps + {config.max_iterations} x "
               f"{sizes.iteration_steps:,}, search {config.search}"
               f"{', baselines DR and nominal SAC with as many' if config.baselines else ''}")
    # EVALUATION over the grid: IWOCS, its DR fallback and the baselines, on the episodes of --seed. The grid
    # evaluators read no swept field, so one set serves every swept value.
    pieces = make_pieces(config)
    eval_key = runner.final_eval_key(config.seed)
    iwocs_name = "IWOCS*" if config.search == "grid" else "IWOCS"
    summaries = []
    for run in training.runs:
        state: RunState = run.state
        grids = {iwocs_name: pieces.grid_robust(state.bank, eval_key),
                 "DR (IWOCS's fallback)": pieces.grid_plain(state.bank.fallback, eval_key)}
        if config.baselines:
            grids |= {name: pieces.grid_plain(jax.tree.map(lambda x: x[:, b], state.baselines), eval_key)
                      for b, name in enumerate(BASELINES)}
        grids = dict(zip(grids, runlog.gather(list(grids.values()))))  # (a dict's pytree would come back key-sorted)
        table = envs.write_method_grids(run.directory, uset, grids)
        records = iteration_records(runlog.gather(run.metrics), config, sizes, uset)
        if jax.process_index() == 0:
            runlog.write_json(run.directory / "iterations.json", records)
        summaries.append(training.finish(
            run, final_return=np.asarray(grids[iwocs_name].worst), checkpoint=state.bank._asdict(),
            eval_key="worst_return", curve_label="training return (last tenth of each stage's SAC run)",
            extra_summary={"final_return_is": "worst-case return over the evaluation grid",
                           "iwocs_env_steps": iwocs_steps,
                           "iterations_trained": np.asarray(runlog.gather(state.bank.active)).sum(1).tolist(),
                           "stopped": np.asarray(runlog.gather(state.stopped)).tolist(), "results": table}))
    if not config.quiet and jax.process_index() == 0:
        for run in training.runs:
            print((run.directory / "results.md").read_text())
        runner.report(training, summaries, "episode_return", "training return per stage",
                      final="worst case over the grid",
                      extra=lambda s: f"; models trained {s['iterations_trained']}, stopped {s['stopped']}")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
