"""QARL: quantal adversarial RL, a SAC protagonist against a SAC force adversary with a temperature curriculum.

Reddi et al., "Robust Adversarial Reinforcement Learning via Bounded Rationality Curricula" (ICLR 2024).
Robust control as a zero-sum game: the protagonist maximises the return while an adversary pushes bodies
of the system with bounded forces and receives the negated reward. Both are SAC agents. The adversary's
entropy temperature α_adv sets how rational it is: at high α it pushes almost at random, at α -> 0 it is
the fully rational (worst-case) adversary of RARL. Entropy regularization makes the solution a quantal
response equilibrium, and a curriculum lowers α_adv over training so that the protagonist first faces a
weak, noisy adversary and ends facing a rational one. α_adv is appended to both players' observations
(0 at test time). One iteration, as in the authors' code: draw one α_adv per env (`num_envs` = 5 episodes
per player), run one episode of `phase_steps` steps (the horizon) in every env where only the adversary
learns, then one where only the protagonist learns, with the same temperatures; each player has its own
replay buffer and makes one gradient update every `update_every` (3) of its phase's transitions.
`--total-timesteps` counts the protagonist's phases (plain SAC gets the same steps and updates); the
adversary's phases come on top.

Curricula (`--curriculum`):
- self-paced (QARL): α_adv ~ Gamma(k, rate). The (α_adv, discounted return) pairs of all episodes of both
  phases are collected; once there are `curriculum_batch` of them, and only if their mean return meets
  `return_bound`, k moves to the value closest in KL to the target Gamma(k_target, rate) such that
  KL(new || old) <= kl_bound and the importance-weighted return under the new distribution stays >=
  return_bound (`self_paced_update`); a batch below the bound leaves k where it is.
- linear: α_adv falls linearly from the initial mean to the target mean over the first 2/3 of the
  iterations, then stays at the target (`linear_temperature`).
- rarl: RARL as the authors ran it: the adversary is an ordinary SAC agent that tunes its own α, and
  neither player sees a temperature feature.
- none: α_adv = 0 from the start with the temperature feature at 0 (a fully rational adversary that
  keeps QARL's machinery; an ablation, not the authors' RARL).
`--adversary off` is plain SAC with the same networks and budget (the baseline of the paper's tables).

Run (from the repository root):
    python algorithms/qarl.py                                       # Pendulum-v1, minutes on a CPU
    python algorithms/qarl.py --adversary off                       # the SAC baseline, same budget
    python algorithms/qarl.py --curriculum rarl --num-seeds 4       # the RARL baseline
    python algorithms/qarl.py --preset dmc-cartpole                 # the paper's cartpole balance (hours on a CPU)
    python algorithms/qarl.py --sweep return_bound=-300,-200,-100   # one vmapped program, one run dir per value
    python algorithms/qarl.py --resume runs/qarl_Pendulum-v1_...    # continue a run from its last checkpoint

Logged per iteration (metrics_seed<i>.csv): env_steps (the protagonist phases' steps: the budget, which
plain SAC gets as well), total_env_steps (both phases), episode_return (undiscounted, protagonist phase),
adversary_phase_return (the protagonist's return in the adversary phase), curriculum_return (mean
discounted return of the iteration's episodes, the curriculum's data), temperature (mean α_adv of the
iteration), curriculum_shape (k; NaN unless self-paced), alpha and adversary_alpha (learned SAC
temperatures; the adversary's only under rarl), protagonist_critic_loss, adversary_critic_loss,
protagonist_updates (gradient updates so far), and every 1/num_evals of the run, as the authors evaluate
during training: eval_return (stochastic protagonist, no adversary) and eval_return_vs_adversary (both
stochastic), `num_eval_envs` episodes each at the curriculum's mean temperature, plus
eval_return_deterministic (ours: the deterministic protagonist, feature 0, no adversary). After training,
as the authors evaluate (feature 0, stochastic policies, `final_eval_episodes` episodes): final_return
(no adversary), return_vs_adversary (against the trained adversary), final_return_deterministic (ours), and
the robustness grid without adversary, 1 episode per model (`grid_episodes`), its episodes (and the final
evaluation's) drawn from --seed alike for every seed (runner.final_eval_key): each axis of `grid_set` alone
(`grid_points` values, the other axes at their nominal values) and all axes jointly: grid.csv, grid.png
(joint grid), summary.json's grid_worst / grid_average (joint grid) and grid_axis_returns.

Where this file differs from the authors' code (github AryamanReddi99/quantal-adversarial-rl):
- the tasks: the `dmc-*` presets are their dm_control tasks as MuJoCo Playground ports them (MJX physics with
  dm_control's models, rewards and control timesteps; envs/dmc_adapter.py), not dm_control on MuJoCo's C
  engine; their adversary bodies, force bounds and grids are set as in their *_two_players.py. Their pendulum
  grid is pole mass x bob mass; Playground's pendulum has one body (pole and bob), so dmc-pendulum's grid is
  that body's mass over their bob axis, 0.5-1.5 (envs/robust.py). The default presets (gymnax Pendulum and
  CartPole) and the brax ones are stand-ins that are not in the paper;
- options of ours, off by default (the defaults are theirs): `--grid-common-random-numbers` gives every
  model of the robustness grid the same initial states and noise (theirs: one episode per model), and
  `--temperature-feature scaled` feeds α_adv / E_0[α_adv] instead of the raw α_adv (docs/qarl.md measures it);
- the self-paced return constraint uses self-normalized importance weights; theirs the plain mean of
  w_i R_i. With negative returns (Pendulum) plain weights make far-away distributions look feasible (the
  weighted mean tends to 0 >= bound); on their [0, 1]-reward tasks the two agree near the current k. The
  update is solved on a grid of 512 shapes, not by scipy's trust-constr (their teacher's threshold
  KL(current || target) < 0.01 only drops its bound on the concentration; the grid has no such bound);
- network biases start at 0 (flax), theirs at torch's uniform default; weights are Xavier-uniform like theirs;
- the envs of a phase run in parallel, so the update cadence counts the phase's transitions of all envs
  (one update per 3), where theirs counts the steps of one env at a time; the phase's 5 episodes are the
  same number of transitions;
- no separately trained worst-case adversary after training (their `n_total_iterations_worst_adversary`
  defaults to 0, so their reported runs have none either): return_vs_adversary is against the trained one;
- the pendulum and cartpole presets' sizes (networks, budget, return bound) are this collection's, so they
  run on a CPU in minutes.

Choices where the paper and the authors' code are silent:
- Pendulum: its return bound (-250, on discounted returns) and mass x length set are this collection's.
  CartPole: gymnax's CartPole-v1 with a continuous push (force_mag * (2u - 1), u in [0, 1]), since SAC needs
  continuous actions (the paper's DMC cartpole is continuous), and an adversary force of at most 0.5 (the
  authors' 2.0 is for DMC's cartpole, which has no 12-degree termination; with it the protagonist never
  learns to balance).
- An episode that terminates before the horizon leaves its env idle for the rest of the phase (its later
  steps are not stored and do not count toward updates).
- At the horizon the critic targets bootstrap from the true final observation (a truncation).
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
import optax
from jax.scipy.special import digamma, gammaln

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py and envs/
# runner first: on a multi-host launch it starts jax.distributed before gymnax touches the devices
import runner  # noqa: E402
import envs  # noqa: E402

NAME = Path(__file__).stem  # the algorithm's name in run directories and summaries: a copy names itself


@dataclass(frozen=True)
class Config:
    """QARL hyperparameters. Every field is a command-line flag (`--curriculum linear`). The defaults are the
    authors' values (main.py, abstract_experiment.py, setup_sac_agent.py); presets shrink them for a CPU."""

    preset: Literal["pendulum", "cartpole", "dmc-cartpole", "dmc-pendulum", "dmc-cheetah", "dmc-hopper", "dmc-walker",
                    "brax-hopper", "brax-halfcheetah", "brax-walker2d"] = "pendulum"
    """Named settings; other flags override them."""
    env_id: str = "Pendulum-v1"
    """Pendulum-v1, CartPole-v1 (continuous push), or a dmc or brax id with a default adversary (dmc/CheetahRun,
    brax/hopper, ...)."""
    seed: int = 0
    """Base seed; run i uses the key fold_in(PRNGKey(seed), i), the same whatever --num-seeds (a batch of one and
    of several seeds are different float programs: run 0's numbers agree up to rounding that learning can grow)."""
    num_seeds: int = 1
    """Independent runs, trained together as one vmapped program."""
    total_timesteps: int = 500_000
    """Environment steps of the protagonist's phases per seed (the budget plain SAC gets too): iterations x
    num_envs x phase_steps (the authors: 200 x 5 x 500); the adversary's phases add as many again."""
    adversary: Literal["on", "off"] = "on"
    """off: no adversary and no temperature (plain SAC with the same networks and budget)."""
    curriculum: Literal["self-paced", "linear", "rarl", "none"] = "self-paced"
    """How α_adv is chosen: QARL's self-paced Gamma curriculum, a linear schedule, rarl (an ordinary SAC
    adversary with a learned α and no temperature feature) or none (α_adv = 0 with the feature)."""
    num_envs: int = 5
    """Episodes per player per iteration, run in parallel, each with its own α_adv (the authors: 5)."""
    phase_steps: int = 500
    """The horizon: steps of every env in one phase, which is one episode (cut here; the authors: 500)."""
    update_every: int = 3
    """Transitions of the learning player's phase per gradient update (the authors: one per 3 steps)."""
    max_force: float | None = None
    """Bound of each force component; None: the env's default (the authors' values, envs/adversary.py)."""
    buffer_size: int = 1_000_000
    """Replay capacity of each player (capped at what the run can fill)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 3_000
    """Transitions in a player's buffer before its critic learns (the authors: 3000). Both players act with
    their policies from the start."""
    actor_starts: int = 5_000
    """Transitions in a player's buffer before its actor and α learn (the authors: 5000)."""
    gamma: float = 0.99
    """Discount factor (also of the curriculum's returns)."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actors."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the learned log α (protagonist; the rarl adversary)."""
    initial_alpha: float = 0.005
    """Learned α at the start (the authors: log α = -5.30, α = 0.005)."""
    hidden_size: int = 256
    """Units per hidden layer (every network)."""
    num_layers: int = 3
    """Hidden layers (every network)."""
    temperature_rate: float = 1000.0
    """Rate β of the Gamma(k, β) temperature distribution."""
    initial_shape: float = 50.0
    """Initial k (mean α_adv = k / β = 0.05); the linear schedule starts at this mean too."""
    target_shape: float = 1.0
    """Target k (mean 0.001); the linear schedule ends at this mean."""
    temperature_feature: Literal["raw", "scaled"] = "raw"
    """The α_adv the players see: scaled, α_adv / (initial_shape / temperature_rate) (about 1 at the start, like
    the other inputs); raw, α_adv itself (0.001-0.05), as the authors' networks see it."""
    kl_bound: float = 0.5
    """Trust region of one self-paced update: KL(new || old) <= kl_bound."""
    return_bound: float = 10.0
    """Self-paced: the discounted return the batch must meet and the new distribution must keep."""
    curriculum_batch: int = 30
    """(α_adv, return) pairs per self-paced update: both phases' episodes of whole iterations (30: every 3)."""
    grid_set: str = "pendulum-2d"
    """Uncertainty set of the final robustness grid (envs.UNCERTAINTY_SETS), e.g. hopper-qarl."""
    grid_points: int = 11
    """Values per axis, alone and jointly (the authors: 11, and 11 x 11)."""
    grid_episodes: int = 1
    """Episodes per model of the grid (the authors: 1)."""
    grid_common_random_numbers: bool = False
    """Every model of the grid gets the same initial states and policy noise (differences are the model's
    alone); off, each model gets its own episode, as the authors draw one per cell."""
    num_eval_envs: int = 2
    """Episodes of each evaluation during training, run in parallel (the authors: 2)."""
    final_eval_episodes: int = 20
    """Episodes of the evaluations after training (the authors: 20)."""
    num_evals: int = 200
    """Evaluations during training (the authors: one per iteration)."""
    backend: str = "generalized"
    """Physics backend for brax ids (generalized or mjx: the ones that take forces)."""
    run_dir: str | None = None
    """Output directory; default runs/qarl_<env>_<time>."""
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
SWEEPABLE = ("actor_lr", "critic_lr", "alpha_lr", "gamma", "tau", "kl_bound", "return_bound")


# The defaults are the authors' (3x256, actor 1e-4, critic 3e-4, batch 256, τ 0.005, one update per 3 steps,
# critic from 3000 and actor from 5000 transitions, α from 0.005, 200 iterations of 5 + 5 episodes of 500
# steps, Gamma(k, 1000) from k 50 to 1, KL trust region 0.5, a curriculum update per 30 episodes). Their
# return bounds: hopper 1, cheetah 10, walker 10, cartpole 10.
# Pendulum (ours): 2x64 networks and 50 iterations of Pendulum's 200-step episodes, so that it runs in minutes
# on a CPU, and a curriculum update every iteration (its 10 episodes): with 30 per update the 50 iterations
# leave too few updates to bring k from 50 near the target 1, and the test-time feature 0 would lie far outside
# the temperatures the protagonist trained with. Its bound -250 is on discounted returns (γ 0.99): a random
# policy gets about -600, a swung-up one about -150.
# CartPole (ours, the same update rule): a push of at most 0.5 on the pole, not the authors' 2.0, which is for
# DMC's cartpole. gymnax's episode ends at 12 degrees, and with 2.0 (or 1.0) the protagonist never learned to
# balance; with 0.5 it does.
PRESETS = {
    "pendulum": Config(total_timesteps=50_000, phase_steps=200, hidden_size=64, num_layers=2, actor_lr=3e-4,
                       curriculum_batch=10, return_bound=-250.0, num_evals=50),
    "cartpole": Config(preset="cartpole", env_id="CartPole-v1", total_timesteps=100_000, phase_steps=500,
                       hidden_size=64, num_layers=2, actor_lr=3e-4, return_bound=10.0, grid_set="cartpole-2d",
                       curriculum_batch=10, max_force=0.5, num_evals=40),
    # The paper's dm_control tasks with the authors' values (main.py's horizon 500, 200 iterations, their bounds
    # and forces; pendulum has no bound of its own in their code, so it keeps their default 10) and grids.
    "dmc-cartpole": Config(preset="dmc-cartpole", env_id="dmc/CartpoleBalance", return_bound=10.0,
                           grid_set="dmc-cartpole-balance-qarl"),
    "dmc-pendulum": Config(preset="dmc-pendulum", env_id="dmc/PendulumSwingup", return_bound=10.0,
                           grid_set="dmc-pendulum-qarl"),
    "dmc-cheetah": Config(preset="dmc-cheetah", env_id="dmc/CheetahRun", return_bound=10.0, grid_set="dmc-cheetah-qarl"),
    "dmc-hopper": Config(preset="dmc-hopper", env_id="dmc/HopperHop", return_bound=1.0, grid_set="dmc-hopper-qarl"),
    "dmc-walker": Config(preset="dmc-walker", env_id="dmc/WalkerWalk", return_bound=10.0, grid_set="dmc-walker-qarl"),
    # brax stand-ins (gym-style: healthy bonus and termination; see the docstring).
    "brax-hopper": Config(preset="brax-hopper", env_id="brax/hopper", return_bound=1.0, grid_set="hopper-qarl"),
    "brax-halfcheetah": Config(preset="brax-halfcheetah", env_id="brax/halfcheetah", return_bound=10.0,
                               grid_set="halfcheetah-qarl"),
    "brax-walker2d": Config(preset="brax-walker2d", env_id="brax/walker2d", return_bound=10.0,
                            grid_set="walker-qarl"),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    num_iterations: int
    steps_per_iteration: int  # env transitions of one protagonist phase
    buffer_capacity: int
    eval_every: int  # iterations between evaluations
    curriculum_capacity: int  # (α, return) pairs per self-paced update: whole iterations' worth
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    for name in ("num_seeds", "num_envs", "phase_steps", "update_every", "batch_size", "hidden_size",
                 "num_layers", "curriculum_batch", "num_eval_envs", "final_eval_episodes", "num_evals",
                 "grid_episodes"):
        if getattr(config, name) < 1:
            raise runner.ConfigError(f"{name} must be at least 1, got {getattr(config, name)}.")
    for name in ("learning_starts", "actor_starts", "alpha_lr"):  # alpha_lr 0: α stays at --initial-alpha
        if not getattr(config, name) >= 0:
            raise runner.ConfigError(f"{name} must be at least 0, got {getattr(config, name)}.")
    for name in ("gamma", "tau"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise runner.ConfigError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    for name in ("temperature_rate", "initial_shape", "target_shape", "kl_bound", "initial_alpha", "actor_lr",
                 "critic_lr"):
        if not getattr(config, name) > 0:
            raise runner.ConfigError(f"{name} must be positive, got {getattr(config, name)}.")
    if config.grid_points < 2:
        raise runner.ConfigError(f"grid_points must be at least 2, got {config.grid_points}.")
    steps_per_iteration = config.phase_steps * config.num_envs
    num_iterations = config.total_timesteps // steps_per_iteration
    if num_iterations < 1:
        raise runner.ConfigError(
            f"total_timesteps ({config.total_timesteps}) must cover one protagonist phase: phase_steps "
            f"({config.phase_steps}) x num_envs ({config.num_envs}) = {steps_per_iteration} steps. Raise "
            f"--total-timesteps or lower --phase-steps."
        )
    capacity = min(config.buffer_size, num_iterations * steps_per_iteration)
    episodes_per_iteration = 2 * config.num_envs  # both phases
    curriculum_capacity = math.ceil(config.curriculum_batch / episodes_per_iteration) * episodes_per_iteration
    sweep_name, sweep_values = runner.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(num_iterations, steps_per_iteration, capacity, max(num_iterations // config.num_evals, 1),
                 curriculum_capacity, sweep_name, sweep_values)


class EnvSpec(NamedTuple):
    obs_dim: int  # without the temperature feature
    action_dim: int
    action_low: jax.Array
    action_high: jax.Array
    adversary_dim: int
    max_force: float
    continuous_push: bool  # CartPole: the protagonist's action in [0, 1] is the push


def make_env(config: Config):
    """The two-player env (AdversarialForces, then EpisodeStatistics), its params with episodes cut at the
    horizon `phase_steps`, and its EnvSpec."""
    kwargs = {"backend": config.backend} if config.env_id.startswith(envs.registry.BRAX_PREFIX) else {}
    env, env_params = envs.make(config.env_id, **kwargs)
    continuous_push = config.env_id == "CartPole-v1"
    if not continuous_push:
        envs.require_continuous_actions(env, env_params, config.env_id, "QARL (SAC players)",
                                        "CartPole-v1 (continuous push here) or a continuous-action env")
    uset = envs.uncertainty_set(config.grid_set)
    if uset.env_id != config.env_id:
        raise runner.ConfigError(f"--grid-set {config.grid_set} is for {uset.env_id}, not {config.env_id}: pick one of "
                         f"{', '.join(n for n, s in envs.UNCERTAINTY_SETS.items() if s.env_id == config.env_id)}.")
    if config.max_force is not None and config.max_force <= 0:
        raise runner.ConfigError(f"max_force must be positive, got {config.max_force}.")
    env = envs.AdversarialForces(env, max_force=config.max_force) if config.max_force else envs.AdversarialForces(env)
    env_params = env_params.replace(max_steps_in_episode=config.phase_steps)
    if continuous_push:
        low, high, action_dim = jnp.zeros(1), jnp.ones(1), 1
    else:
        space = env.action_space(env_params)
        action_dim = int(np.prod(space.shape))
        low, high = jnp.broadcast_to(space.low, (action_dim,)), jnp.broadcast_to(space.high, (action_dim,))
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    spec = EnvSpec(obs_dim, action_dim, low, high, env.adversary_action_dim, env.max_force, continuous_push)
    return envs.EpisodeStatistics(env), env_params, spec


def uses_temperature(config: Config) -> bool:
    """Whether the players see α_adv: not for plain SAC, not for the authors' RARL."""
    return config.adversary == "on" and config.curriculum != "rarl"


def feature_scale(config: Config) -> float:
    """The temperature feature is α_adv / feature_scale: E_0[α_adv] (scaled) or 1 (raw, the authors')."""
    return config.initial_shape / config.temperature_rate if config.temperature_feature == "scaled" else 1.0


def observe(config: Config, obs: jax.Array, temperature: jax.Array) -> jax.Array:
    """The players' input: the observation, with the temperature feature appended when the players see it."""
    if not uses_temperature(config):
        return obs
    return jnp.concatenate([obs, (temperature / feature_scale(config))[..., None]], axis=-1)


def to_env_action(config: Config, spec: EnvSpec, protagonist_action, adversary_action):
    """[-1, 1] actions -> the env's (protagonist action, adversary force)."""
    action = spec.action_low + 0.5 * (protagonist_action + 1.0) * (spec.action_high - spec.action_low)
    if spec.continuous_push:
        action = action[..., 0]
    return action, adversary_action * spec.max_force * (config.adversary == "on")


def linear_temperature(iteration, num_iterations: int, initial_mean: float, target_mean: float):
    """The linear curriculum's α_adv at an iteration: from the initial mean at iteration 0 to the target mean
    at 2/3 of the iterations, flat after (the authors' descent_end_fraction 2/3)."""
    fraction = jnp.clip(iteration / (2.0 / 3.0 * num_iterations), 0.0, 1.0)
    return initial_mean + (target_mean - initial_mean) * fraction


# ----------------------------------------------------------------------------------------------------
# NETWORKS (SAC's, initialized as the authors': Xavier-uniform, ReLU gain on hidden layers)


def mlp(x: jax.Array, hidden_size: int, num_layers: int, out_size: int) -> jax.Array:
    relu_init = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")  # Xavier with gain sqrt(2)
    for _ in range(num_layers):
        x = nn.relu(nn.Dense(hidden_size, kernel_init=relu_init)(x))
    return nn.Dense(out_size, kernel_init=nn.initializers.xavier_uniform())(x)


class Actor(nn.Module):
    """π(·|s): separate MLPs for the mean and the log σ of a Gaussian, squashed by tanh."""

    action_dim: int
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean = mlp(obs, self.hidden_size, self.num_layers, self.action_dim)
        log_std = mlp(obs, self.hidden_size, self.num_layers, self.action_dim)
        return mean, jnp.clip(log_std, -20.0, 2.0)


class Critic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action."""

    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return mlp(jnp.concatenate([obs, action], axis=-1), self.hidden_size, self.num_layers, 1)[..., 0]


TwinCritic = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                     out_axes=0, axis_size=2)


def squashed_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """tanh(u), u ~ N(mean, σ²), with the stable tanh log-det."""
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


def policy_action(actor: nn.Module, params, obs: jax.Array, key, deterministic: bool = False) -> jax.Array:
    """An action in [-1, 1]: a sample of the squashed Gaussian, or tanh of its mean."""
    mean, log_std = actor.apply(params, obs)
    return jnp.tanh(mean) if deterministic else squashed_gaussian(mean, log_std).sample(seed=key)


# ----------------------------------------------------------------------------------------------------
# SELF-PACED CURRICULUM (module level, so tests can check it)


def gamma_kl(shape_p, shape_q):
    """KL(Gamma(shape_p, β) || Gamma(shape_q, β)) for one shared rate β (it cancels)."""
    return (shape_p - shape_q) * digamma(shape_p) - gammaln(shape_p) + gammaln(shape_q)


def gamma_log_density(x, shape, rate):
    return shape * jnp.log(rate) - gammaln(shape) + (shape - 1.0) * jnp.log(x) - rate * x


def self_paced_update(shape, temperatures, returns, rate: float, target_shape: float, kl_bound: float,
                      return_bound: float, initial_shape: float):
    """One self-paced step. `temperatures` were drawn from Gamma(shape, rate); `returns` are the
    protagonist's discounted returns of those episodes. Returns the new shape:

        k_new = argmin_k KL(Gamma(k) || Gamma(k_target))
                s.t. KL(Gamma(k) || Gamma(k_old)) <= kl_bound  and  Σ w_i R_i / Σ w_i >= return_bound,
        w_i = Gamma(α_i; k) / Gamma(α_i; k_old),

    and k stays put when this batch's mean return is below the bound (as in the authors' teacher, whatever
    earlier batches did). Solved by checking 512 candidates between the target and the initial shape (and
    the current one, feasible whenever the batch meets the bound).
    """
    low, high = min(target_shape, initial_shape), max(target_shape, initial_shape)
    candidates = jnp.concatenate([jnp.geomspace(low, high, 512), jnp.atleast_1d(shape)])
    log_weights = (gamma_log_density(temperatures[None], candidates[:, None], rate)
                   - gamma_log_density(temperatures[None], shape, rate))
    weights = jax.nn.softmax(log_weights, axis=-1)  # self-normalized importance weights
    expected_return = (weights * returns[None]).sum(-1)
    feasible = (gamma_kl(candidates, shape) <= kl_bound) & (expected_return >= return_bound)
    best = candidates[jnp.argmin(jnp.where(feasible, gamma_kl(candidates, target_shape), jnp.inf))]
    return jnp.where((returns.mean() >= return_bound) & feasible.any(), best, shape)


# ----------------------------------------------------------------------------------------------------
# STATE


class Transition(NamedTuple):
    obs: jax.Array  # with the temperature feature where the players see it
    action: jax.Array  # the learning player's, in [-1, 1]
    reward: jax.Array  # the learning player's (the adversary's is the negated protagonist reward)
    terminated: jax.Array
    next_obs: jax.Array  # the true next observation, with the episode's temperature feature


class Buffer(NamedTuple):
    data: Transition
    position: jax.Array
    size: jax.Array


class Player(NamedTuple):
    actor: Any
    critic: Any
    target_critic: Any
    log_alpha: jax.Array  # learned (protagonist; rarl adversary); else unused (α_adv is the curriculum's)
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    critic_updates: jax.Array  # gradient updates of the critic so far
    actor_updates: jax.Array  # ... and of the actor (and α)


class Curriculum(NamedTuple):
    shape: jax.Array  # k of Gamma(k, rate)
    temperatures: jax.Array  # [curriculum_capacity] α_adv of both phases' episodes since the last update
    returns: jax.Array  # [curriculum_capacity] their discounted protagonist returns
    count: jax.Array


class RunState(NamedTuple):
    protagonist: Player
    adversary: Player
    protagonist_buffer: Buffer
    adversary_buffer: Buffer
    curriculum: Curriculum
    temperature: jax.Array  # [num_envs] α_adv of the last iteration's episodes
    steps: jax.Array  # env transitions so far, both phases


def critic_targets(reward, terminated, next_q_min, next_entropy_term, gamma):
    """y = r + γ (1 - term) [min_i Q̄_i(s', a') - α' log π(a'|s')], s' the true next state: at the horizon (a
    time limit) s' is the final observation and the target bootstraps; only termination cuts it. α' is the
    learned α, or the next sample's α_adv (the adversary's entropy term reads the temperature feature)."""
    return reward + gamma * (1.0 - terminated) * (next_q_min - next_entropy_term)


def buffer_add(buffer: Buffer, batch: Transition, valid: jax.Array) -> Buffer:
    """Store the rows of `batch` where `valid` (envs whose episode is still running)."""
    capacity = buffer.data.reward.shape[0]
    index = jnp.where(valid, (buffer.position + jnp.cumsum(valid) - 1) % capacity, capacity)  # capacity: dropped
    data = jax.tree.map(lambda stored, new: stored.at[index].set(new, mode="drop"), buffer.data, batch)
    count = valid.sum()
    return Buffer(data, (buffer.position + count) % capacity, jnp.minimum(buffer.size + count, capacity))


def buffer_sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Transition:
    index = jax.random.randint(key, (batch_size,), 0, buffer.size)
    return jax.tree.map(lambda stored: stored[index], buffer.data)


# ----------------------------------------------------------------------------------------------------
# EVALUATION (during training inside the program; after training from main)


def make_evaluation(config: Config) -> Callable:
    """`evaluate(protagonist_params, adversary_params, key, temperature, with_adversary, deterministic,
    num_episodes) -> mean return`: `num_episodes` parallel episodes of the horizon, the protagonist (and the
    adversary, if `with_adversary`) acting on observations with the temperature feature `temperature`;
    stochastic policies unless `deterministic` (the protagonist's tanh of the mean; the adversary stays
    stochastic, as the authors evaluate it). Without the adversary the force is zero (their constant agent)."""
    env, env_params, spec = make_env(config)
    protagonist_actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)
    adversary_actor = Actor(spec.adversary_dim, config.hidden_size, config.num_layers)
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def evaluate(protagonist_params, adversary_params, key, temperature, with_adversary: bool,
                 deterministic: bool, num_episodes: int):
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = reset_envs(jax.random.split(key_reset, num_episodes), env_params)
        temperatures = jnp.full(num_episodes, temperature)

        def step(carry, key):
            obs, env_state, total, running = carry
            key_pro, key_adv, key_env = jax.random.split(key, 3)
            obs_t = observe(config, obs.reshape(num_episodes, -1), temperatures)
            protagonist_action = policy_action(protagonist_actor, protagonist_params, obs_t, key_pro, deterministic)
            adversary_action = policy_action(adversary_actor, adversary_params, obs_t, key_adv) * with_adversary
            obs, env_state, reward, terminated, truncated, _ = step_envs(
                jax.random.split(key_env, num_episodes), env_state,
                to_env_action(config, spec, protagonist_action, adversary_action), env_params)
            total = total + jnp.where(running, reward, 0.0)
            return (obs, env_state, total, running & ~(terminated | truncated)), None

        carry = (obs, env_state, jnp.zeros(num_episodes), jnp.ones(num_episodes, bool))
        (_, _, total, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, config.phase_steps))
        return total.mean()

    return evaluate


def make_final_evaluation(config: Config) -> Callable:
    """`final(protagonist_params, adversary_params, key) -> dict` after training, as the authors evaluate:
    temperature feature 0, stochastic policies, `final_eval_episodes` episodes each, without the adversary
    and against the trained one; plus the deterministic protagonist without adversary (ours)."""
    evaluate = make_evaluation(config)
    episodes = config.final_eval_episodes

    @jax.jit
    def final(protagonist_params, adversary_params, key):
        keys = jax.random.split(key, 3)
        return {
            "final_return": evaluate(protagonist_params, adversary_params, keys[0], 0.0, False, False, episodes),
            "return_vs_adversary": evaluate(protagonist_params, adversary_params, keys[1], 0.0,
                                            config.adversary == "on", False, episodes),
            "final_return_deterministic": evaluate(protagonist_params, adversary_params, keys[2], 0.0, False, True,
                                                   episodes),
        }

    return final


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runner.Program:
    """Build the whole run as a `runner.Program`: `make_train(config)(key) -> (RunState, metrics)` runs it
    in one jittable scan; `runner.run_program` runs it in checkpointed chunks (init, then `update` scanned).

    Every hyperparameter is read from `config`; under `--sweep`, the runner calls this with the swept field traced.
    `progress`, if given, is called from inside the run (host callback) after every iteration.
    """
    sizes = derive_sizes(runner.untraced(config))  # checks compare plain numbers
    env, env_params, spec = make_env(config)
    evaluate = make_evaluation(config)
    protagonist_actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)
    adversary_actor = Actor(spec.adversary_dim, config.hidden_size, config.num_layers)
    critic = TwinCritic(config.hidden_size, config.num_layers)
    initial_mean = config.initial_shape / config.temperature_rate
    target_mean = config.target_shape / config.temperature_rate
    adversary_on = config.adversary == "on"
    adversary_learns_alpha = config.curriculum == "rarl"  # the authors' RARL: an ordinary SAC adversary
    obs_dim = spec.obs_dim + uses_temperature(config)
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    num_envs = config.num_envs

    # Adam for the actor, the twin critics and log α of each player.
    actor_optimizer, critic_optimizer, alpha_optimizer = (optax.adam(config.actor_lr), optax.adam(config.critic_lr),
                                                          optax.adam(config.alpha_lr))

    def sample_temperatures(curriculum: Curriculum, key, iteration):
        """α_adv of this iteration's episodes, one per env, used in both phases."""
        if not adversary_on or config.curriculum in ("none", "rarl"):
            return jnp.zeros(num_envs)
        if config.curriculum == "linear":
            return jnp.full(num_envs, linear_temperature(iteration, sizes.num_iterations, initial_mean, target_mean))
        return jax.random.gamma(key, curriculum.shape, (num_envs,)) / config.temperature_rate

    def gradient_update(player: Player, actor: nn.Module, batch: Transition, key, learned_alpha: bool,
                        target_entropy: float, actor_learns):
        """One SAC update of a player, actor first as in the authors' code. A learned α is tuned to the
        target entropy; otherwise α is each sample's α_adv (read back from the temperature feature).
        `actor_learns` (traced) keeps the actor and α as they are until the buffer holds actor_starts."""
        key_actor, key_next = jax.random.split(key)
        if learned_alpha:
            alpha = jnp.exp(player.log_alpha)
        else:
            alpha = batch.obs[:, -1] * feature_scale(config)

        # ACTOR UPDATE
        def actor_loss_fn(params):
            action, log_prob = squashed_gaussian(*actor.apply(params, batch.obs)).sample_and_log_prob(seed=key_actor)
            return (alpha * log_prob - critic.apply(player.critic, batch.obs, action).min(0)).mean(), log_prob

        (_, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(player.actor)
        updates, actor_opt = actor_optimizer.update(grads, player.actor_opt)
        actor_params = optax.apply_updates(player.actor, updates)

        # TEMPERATURE UPDATE (learned α): J = E[-log α (log π + H_target)], the authors' form
        log_alpha, alpha_opt = player.log_alpha, player.alpha_opt
        if learned_alpha:
            grad = jax.grad(lambda la: -(la * jax.lax.stop_gradient(log_prob + target_entropy)).mean())(log_alpha)
            updates, alpha_opt = alpha_optimizer.update(grad, player.alpha_opt)
            log_alpha = optax.apply_updates(player.log_alpha, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(actor_learns, n, o), new, old)  # noqa: E731
        actor_params, actor_opt = keep(actor_params, player.actor), keep(actor_opt, player.actor_opt)
        log_alpha, alpha_opt = keep(log_alpha, player.log_alpha), keep(alpha_opt, player.alpha_opt)

        # CRITIC UPDATE (with the updated actor and α)
        next_alpha = jnp.exp(log_alpha) if learned_alpha else batch.next_obs[:, -1] * feature_scale(config)
        next_action, next_log_prob = squashed_gaussian(*actor.apply(actor_params, batch.next_obs)).sample_and_log_prob(
            seed=key_next)
        next_q = critic.apply(player.target_critic, batch.next_obs, next_action).min(0)
        targets = critic_targets(batch.reward, batch.terminated, next_q, next_alpha * next_log_prob, config.gamma)

        def critic_loss_fn(params):
            return 0.5 * ((critic.apply(params, batch.obs, batch.action) - targets) ** 2).mean(-1).sum()

        critic_loss, grads = jax.value_and_grad(critic_loss_fn)(player.critic)
        updates, critic_opt = critic_optimizer.update(grads, player.critic_opt)
        critic_params = optax.apply_updates(player.critic, updates)
        target_critic = optax.incremental_update(critic_params, player.target_critic, config.tau)
        return Player(actor_params, critic_params, target_critic, log_alpha, actor_opt, critic_opt, alpha_opt,
                      player.critic_updates + 1, player.actor_updates + actor_learns), critic_loss

    def learn(player: Player, actor: nn.Module, buffer: Buffer, key, num_updates, learned_alpha: bool,
              target_entropy: float):
        """`num_updates` gradient updates (0 while the buffer is short of learning_starts)."""
        num_updates = jnp.where(buffer.size >= config.learning_starts, num_updates, 0)

        def one_update(i, carry):
            player, loss_sum = carry
            key_sample, key_loss = jax.random.split(jax.random.fold_in(key, i))
            batch = buffer_sample(buffer, key_sample, config.batch_size)
            player, loss = gradient_update(player, actor, batch, key_loss, learned_alpha, target_entropy,
                                           buffer.size >= config.actor_starts)
            return player, loss_sum + loss

        player, loss_sum = jax.lax.fori_loop(0, num_updates, one_update, (player, jnp.float32(0.0)))
        return player, loss_sum, num_updates

    def run_phase(state: RunState, temperatures, key, learner: str):
        """One episode of phase_steps steps in every env; only `learner` ("protagonist" or "adversary")
        stores its transitions and learns, one update per update_every of them."""
        learns_protagonist = learner == "protagonist"
        buffer_name = f"{learner}_buffer"
        actor = protagonist_actor if learns_protagonist else adversary_actor
        learned_alpha = learns_protagonist or adversary_learns_alpha
        target_entropy = -float(spec.action_dim if learns_protagonist else spec.adversary_dim)
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = reset_envs(jax.random.split(key_reset, num_envs), env_params)

        def step(carry, key):
            state, obs, env_state, running, undiscounted, discounted, discount, stored = carry
            key_pro, key_adv, key_env, key_update = jax.random.split(key, 4)
            obs_t = observe(config, obs.reshape(num_envs, -1), temperatures)
            protagonist_action = policy_action(protagonist_actor, state.protagonist.actor, obs_t, key_pro)
            adversary_action = policy_action(adversary_actor, state.adversary.actor, obs_t, key_adv)
            next_obs, env_state, reward, terminated, truncated, info = step_envs(
                jax.random.split(key_env, num_envs), env_state,
                to_env_action(config, spec, protagonist_action, adversary_action), env_params)
            done = terminated | truncated
            true_next = jnp.where(done[:, None], info["final_observation"].reshape(num_envs, -1),
                                  next_obs.reshape(num_envs, -1))
            transition = Transition(
                obs_t, protagonist_action if learns_protagonist else adversary_action,
                reward if learns_protagonist else -reward, terminated.astype(jnp.float32),
                observe(config, true_next, temperatures))

            # STORE AND LEARN (the learning player only): one update per update_every stored transitions
            buffer = buffer_add(getattr(state, buffer_name), transition, running)
            stored_after = stored + running.sum()
            due = stored_after // config.update_every - stored // config.update_every
            player, loss_sum, num_updates = learn(getattr(state, learner), actor, buffer, key_update, due,
                                                  learned_alpha, target_entropy)

            undiscounted = undiscounted + jnp.where(running, reward, 0.0)
            discounted = discounted + jnp.where(running, discount * reward, 0.0)
            state = state._replace(steps=state.steps + running.sum(), **{buffer_name: buffer, learner: player})
            carry = (state, next_obs, env_state, running & ~done, undiscounted, discounted,
                     discount * config.gamma, stored_after)
            return carry, (loss_sum, num_updates)

        carry = (state, obs, env_state, jnp.ones(num_envs, bool), jnp.zeros(num_envs), jnp.zeros(num_envs),
                 jnp.float32(1.0), jnp.int32(0))
        (state, _, _, _, undiscounted, discounted, _, _), (loss_sum, num_updates) = jax.lax.scan(
            step, carry, jax.random.split(key_steps, config.phase_steps))
        critic_loss = loss_sum.sum() / jnp.where(num_updates.sum() > 0, num_updates.sum(), jnp.nan)
        return state, undiscounted, discounted, critic_loss

    def init_player(key, actor: nn.Module, action_dim: int) -> Player:
        key_actor, key_critic = jax.random.split(key)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        actor_params, critic_params = actor.init(key_actor, obs), critic.init(key_critic, obs, action)
        log_alpha = jnp.log(jnp.float32(config.initial_alpha))  # the authors' -5.30
        return Player(actor_params, critic_params, critic_params, log_alpha, actor_optimizer.init(actor_params),
                      critic_optimizer.init(critic_params), alpha_optimizer.init(log_alpha), jnp.int32(0),
                      jnp.int32(0))

    def empty_buffer(action_dim: int) -> Buffer:
        capacity = sizes.buffer_capacity
        return Buffer(Transition(jnp.zeros((capacity, obs_dim)), jnp.zeros((capacity, action_dim)),
                                 jnp.zeros(capacity), jnp.zeros(capacity), jnp.zeros((capacity, obs_dim))),
                      jnp.int32(0), jnp.int32(0))

    def init(key):
        key, key_pro, key_adv = jax.random.split(key, 3)
        capacity = sizes.curriculum_capacity
        curriculum = Curriculum(jnp.float32(config.initial_shape), jnp.zeros(capacity), jnp.zeros(capacity),
                                jnp.int32(0))
        state = RunState(init_player(key_pro, protagonist_actor, spec.action_dim),
                         init_player(key_adv, adversary_actor, spec.adversary_dim),
                         empty_buffer(spec.action_dim), empty_buffer(spec.adversary_dim), curriculum,
                         jnp.zeros(num_envs), jnp.int32(0))
        return state, key

    def update(carry, index):
        """One iteration: temperatures, an adversary phase, a protagonist phase, the curriculum, an evaluation
        if due."""
        state, key = carry
        key, key_temp, key_adv, key_pro, key_eval = jax.random.split(key, 5)
        temperatures = sample_temperatures(state.curriculum, key_temp, index)
        # ADVERSARY PHASE (none with the adversary off: plain SAC gets the protagonist's budget)
        adversary_loss = adversary_phase_return = jnp.float32(jnp.nan)
        if adversary_on:
            state, adversary_returns, adversary_discounted, adversary_loss = run_phase(
                state, temperatures, key_adv, "adversary")
            adversary_phase_return = adversary_returns.mean()
        # PROTAGONIST PHASE (the same temperatures)
        state, protagonist_returns, protagonist_discounted, protagonist_loss = run_phase(
            state, temperatures, key_pro, "protagonist")
        state = state._replace(temperature=temperatures)

        # CURRICULUM UPDATE (self-paced): both phases' (α_adv, discounted return) pairs; every
        # curriculum_capacity of them, k moves if this batch meets the bound
        curriculum = state.curriculum
        curriculum_return = jnp.float32(jnp.nan)
        if adversary_on and config.curriculum == "self-paced":
            slots = curriculum.count + jnp.arange(2 * num_envs)
            curriculum = curriculum._replace(
                temperatures=curriculum.temperatures.at[slots].set(jnp.concatenate([temperatures, temperatures])),
                returns=curriculum.returns.at[slots].set(jnp.concatenate([adversary_discounted,
                                                                          protagonist_discounted])),
                count=curriculum.count + 2 * num_envs)
            curriculum_return = jnp.concatenate([adversary_discounted, protagonist_discounted]).mean()
            ready = curriculum.count >= sizes.curriculum_capacity
            shape = self_paced_update(curriculum.shape, curriculum.temperatures, curriculum.returns,
                                      config.temperature_rate, config.target_shape, config.kl_bound,
                                      config.return_bound, config.initial_shape)
            curriculum = curriculum._replace(shape=jnp.where(ready, shape, curriculum.shape),
                                             count=jnp.where(ready, 0, curriculum.count))
            state = state._replace(curriculum=curriculum)

        # EVALUATE (the authors': stochastic, at the curriculum's mean temperature) AND LOG
        if config.curriculum == "self-paced":
            eval_temperature = curriculum.shape / config.temperature_rate
        else:
            eval_temperature = temperatures.mean()
        is_eval = ((index + 1) % sizes.eval_every == 0) | (index == sizes.num_iterations - 1)
        keys = jax.random.split(key_eval, 3)
        pro, adv, n = state.protagonist.actor, state.adversary.actor, config.num_eval_envs
        eval_return, eval_vs_adversary, eval_deterministic = jax.lax.cond(
            is_eval,
            lambda: (evaluate(pro, adv, keys[0], eval_temperature, False, False, n),
                     evaluate(pro, adv, keys[1], eval_temperature, adversary_on, False, n),
                     evaluate(pro, adv, keys[2], 0.0, False, True, n)),
            lambda: (jnp.float32(jnp.nan),) * 3)
        metrics = {
            "env_steps": (index + 1) * sizes.steps_per_iteration,  # the protagonist's phases
            "total_env_steps": state.steps,  # both phases
            "episode_return": protagonist_returns.mean(),
            "adversary_phase_return": adversary_phase_return,
            "curriculum_return": curriculum_return,
            "temperature": temperatures.mean(),
            "curriculum_shape": curriculum.shape if config.curriculum == "self-paced" and adversary_on
            else jnp.float32(jnp.nan),
            "alpha": jnp.exp(state.protagonist.log_alpha),
            "adversary_alpha": jnp.exp(state.adversary.log_alpha) if adversary_on and adversary_learns_alpha
            else jnp.float32(jnp.nan),
            "protagonist_critic_loss": protagonist_loss,
            "adversary_critic_loss": adversary_loss,
            "protagonist_updates": state.protagonist.critic_updates,
            "eval_return": eval_return,
            "eval_return_vs_adversary": eval_vs_adversary,
            "eval_return_deterministic": eval_deterministic,
        }
        if progress is not None:
            jax.debug.callback(lambda m: progress(**m), {k: metrics[k] for k in (
                "env_steps", "episode_return", "adversary_phase_return", "temperature", "eval_return")})
        return (state, key), metrics

    def train(key):
        """The whole run, one jittable function of a key: `jax.jit(jax.vmap(make_train(config)))(keys)`."""
        carry, metrics = jax.lax.scan(update, init(key), jnp.arange(sizes.num_iterations))
        return carry[0], metrics

    return runner.Program(init, update, sizes.num_iterations, train, result=lambda carry: carry[0])


# ----------------------------------------------------------------------------------------------------
# ROBUSTNESS GRID (after training, one vmapped call per seed)


class GridResult(NamedTuple):
    axis_values: jax.Array  # [d, grid_points] the values of each axis alone (the others at nominal)
    axis_returns: jax.Array  # [d, grid_points]
    values: jax.Array  # (grid_points,) * d + (d,) the joint grid
    returns: jax.Array  # (grid_points,) * d
    worst: jax.Array  # over the joint grid
    average: jax.Array


def make_grid_evaluation(config: Config) -> tuple[envs.UncertaintySet, Callable]:
    """`evaluate(protagonist_actor_params, key) -> GridResult`: the stochastic protagonist (feature 0) without
    adversary, `grid_episodes` episodes per model, on each axis alone and on the joint grid."""
    env, env_params, spec = make_env(config)
    uset = envs.uncertainty_set(config.grid_set)
    actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)
    # The authors' robustness models (absolute values): each axis alone, the others nominal, then the joint grid
    lines, grid = uset.axis_lines(config.grid_points), np.asarray(uset.grid(config.grid_points))
    models = np.concatenate([lines.reshape(-1, uset.dim), grid.reshape(-1, uset.dim)])

    def policy_init(params, first_obs):
        """The policy's noise key: the run's, folded with the episode's first observation (so episodes differ
        and every model of the grid sees the same noise for the same start)."""
        _, key = params
        return jax.random.fold_in(key, jax.lax.bitcast_convert_type(first_obs.astype(jnp.float32),
                                                                    jnp.uint32).sum())

    def policy(params, obs, key):
        actor_params, _ = params
        key, key_action = jax.random.split(key)
        obs_t = observe(config, obs.reshape(-1), jnp.float32(0.0))
        action, _ = to_env_action(config, spec, policy_action(actor, actor_params, obs_t, key_action),
                                  jnp.zeros(spec.adversary_dim))
        return (action, jnp.zeros(spec.adversary_dim)), key

    two_player = env._env  # AdversarialForces under EpisodeStatistics: zero force = the plain env
    evaluate_models = envs.make_model_evaluator(two_player, env_params, uset, policy, num_steps=config.phase_steps,
                                                num_episodes=config.grid_episodes, policy_init=policy_init,
                                                common_random_numbers=config.grid_common_random_numbers)

    def evaluate(actor_params, key):
        key_policy, key_env = jax.random.split(key)
        returns = evaluate_models((actor_params, key_policy), models, key_env)
        axis_returns, joint = returns[: lines.size // uset.dim], returns[lines.size // uset.dim:]
        return GridResult(jnp.asarray(uset.axis_values(config.grid_points)),
                          axis_returns.reshape(uset.dim, config.grid_points), jnp.asarray(grid),
                          joint.reshape(grid.shape[:-1]), joint.min(), joint.mean())

    return uset, evaluate


def trained_policy(config: Config, checkpoint: dict, seed_index: int = 0) -> runner.Policy:
    """One seed's protagonist (temperature feature 0, tanh of its mean, no adversary force) from its checkpoint
    (`scripts/evaluate.py`); final_return() redoes the run's final evaluation as the authors evaluate
    (stochastic protagonist, `final_eval_episodes` episodes, the same keys)."""
    env, env_params, spec = make_env(config)
    actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)
    protagonist, adversary = checkpoint["protagonist"]["actor"], checkpoint["adversary"]["actor"]

    def act(memory, obs, key):
        obs_t = observe(config, obs.reshape(-1), jnp.float32(0.0))
        action = policy_action(actor, protagonist, obs_t, key, deterministic=True)
        return to_env_action(config, spec, action, jnp.zeros(spec.adversary_dim)), memory

    final = make_final_evaluation(config)
    return runner.Policy(env, env_params, act=act, final_return=lambda: final(
        protagonist, adversary, runner.final_eval_key(config.seed))["final_return"])


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runner.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    uset, grid_evaluation = make_grid_evaluation(config)
    final_evaluation = make_final_evaluation(config)
    mode = f"{config.curriculum} curriculum" if config.adversary == "on" else "no adversary (SAC)"
    training = runner.train(NAME, config, make_train, sizes.num_iterations * sizes.steps_per_iteration,
                            (sizes.sweep_name, sizes.sweep_values), every_seconds=5.0,
                            detail=f"{mode}, {sizes.num_iterations} iterations")
    summaries = []
    for run in training.runs:
        # FINAL EVALUATION AND ROBUSTNESS GRID: every seed's protagonist, feature 0, stochastic
        seed_players = [(jax.tree.map(lambda x: x[seed], run.state.protagonist.actor),
                         jax.tree.map(lambda x: x[seed], run.state.adversary.actor)) for seed in range(config.num_seeds)]
        # The episodes come from --seed (runner.final_eval_key), the same for every seed of the run, as in PQN and SAC
        eval_key = runner.final_eval_key(config.seed)
        finals = [jax.tree.map(float, final_evaluation(pro, adv, eval_key)) for pro, adv in seed_players]
        grids = [grid_evaluation(pro, eval_key) for pro, _ in seed_players]
        grid_returns = np.stack([np.asarray(g.returns) for g in grids])
        swept = f", {run.directory.name}" if sizes.sweep_name else ""
        envs.write_grid(run.directory, uset, np.asarray(grids[0].values), grid_returns,
                          f"QARL {config.adversary == 'on' and config.curriculum or 'off'} on {config.env_id}"
                          f"{swept}: {uset.name} ({config.num_seeds} seeds, "
                          f"{sizes.num_iterations * sizes.steps_per_iteration:,} steps)")
        summaries.append(training.finish(
            run, final_return=np.array([f["final_return"] for f in finals]),
            checkpoint={"protagonist": run.state.protagonist._asdict(), "adversary": run.state.adversary._asdict(),
                        "curriculum": run.state.curriculum._asdict()},
            extra_summary={
                "return_vs_adversary": [f["return_vs_adversary"] for f in finals],
                "final_return_deterministic": [f["final_return_deterministic"] for f in finals],
                "final_eval_episodes": config.final_eval_episodes,
                "grid_set": uset.name, "grid_points": config.grid_points,
                "grid_worst": [float(g.worst) for g in grids], "grid_average": [float(g.average) for g in grids],
                "grid_axis_names": list(uset.names),
                "grid_axis_values": np.asarray(grids[0].axis_values).tolist(),
                "grid_axis_returns": [np.asarray(g.axis_returns).tolist() for g in grids],
                "final_temperature_mean": run.metrics["temperature"][:, -1].tolist(),
            },
        ))
    final_returns = np.array([summary["final_return"] for summary in summaries])
    if np.isinf(np.asarray(training.metrics["protagonist_critic_loss"])).any() or np.isnan(final_returns).any():
        raise SystemExit(f"Training diverged (an infinite critic loss or a NaN return). Outputs so far are in "
                         f"{training.run_dir}. Try lower learning rates (--critic-lr, --actor-lr).")
    if not config.quiet:
        runner.report(
            training, summaries, "eval_return", "evaluation return",
            final=f"final return ({config.final_eval_episodes} stochastic episodes)",
            extra=lambda s: f"; against the adversary {[round(r, 1) for r in s['return_vs_adversary']]}; grid "
                            f"{uset.name}: worst {[round(r, 1) for r in s['grid_worst']]}, average "
                            f"{[round(r, 1) for r in s['grid_average']]}")
    return training.returned(summaries)


if __name__ == "__main__":
    runner.cli(main)
