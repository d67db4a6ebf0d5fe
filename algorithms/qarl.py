"""QARL: quantal adversarial RL, a SAC protagonist against a SAC force adversary with a temperature curriculum.

Reddi et al., "Robust Adversarial Reinforcement Learning via Bounded Rationality Curricula" (ICLR 2024).
Robust control as a zero-sum game: the protagonist maximises the return while an adversary pushes bodies
of the system with bounded forces and receives the negated reward. Both are SAC agents. The adversary's
entropy temperature α_adv sets how rational it is: at high α it pushes almost at random, at α -> 0 it is
the fully rational (worst-case) adversary of RARL. Entropy regularization makes the solution a quantal
response equilibrium, and a curriculum lowers α_adv over training so that the protagonist first faces a
weak, noisy adversary and ends facing a rational one. α_adv is drawn per episode from the curriculum's
distribution and appended to both players' observations (0 at test time). Training alternates phases:
every env runs `phase_steps` steps in which only the adversary learns, then `phase_steps` in which only
the protagonist learns, each player with its own replay buffer. `--total-timesteps` counts the
protagonist's phases (plain SAC gets the same steps and updates); the adversary's phases come on top.

Curricula (`--curriculum`):
- self-paced (QARL): α_adv ~ Gamma(k, rate); every `curriculum_batch` protagonist episodes, k moves to
  the value closest in KL to the target Gamma(k_target, rate) such that KL(new || old) <= kl_bound and
  the importance-weighted return under the new distribution stays >= return_bound; k stays frozen until
  the episodes' mean return has reached the bound once (`self_paced_update`).
- linear: α_adv decreases linearly from the initial mean to the target mean over the run.
- none: α_adv = 0 from the start (a fully rational adversary, RARL-style).
`--adversary off` is plain SAC with the same networks and budget (the baseline of the paper's tables).

Run (from the repository root):
    python algorithms/qarl.py                                       # Pendulum-v1, minutes on a CPU
    python algorithms/qarl.py --adversary off                       # the SAC baseline, same budget
    python algorithms/qarl.py --curriculum none --num-seeds 4       # RARL-style baseline
    python algorithms/qarl.py --preset brax-hopper                  # the paper's setting (GPU)
    python algorithms/qarl.py --sweep return_bound=-600,-400,-200   # one vmapped program, one run dir per value
    python algorithms/qarl.py --resume runs/qarl_Pendulum-v1_...    # continue a run from its last checkpoint

Logged per iteration (metrics_seed<i>.csv): env_steps (the protagonist phases' steps: the budget, which
plain SAC gets as well), total_env_steps (both phases), episode_return (protagonist-phase episodes that
finished, NaN if none), adversary_phase_return (the protagonist's return in adversary-phase episodes),
temperature (mean α_adv of the envs' current episodes), curriculum_shape (k; NaN unless self-paced),
alpha (the protagonist's learned temperature), protagonist_critic_loss, adversary_critic_loss,
eval_return (deterministic protagonist, no adversary) and eval_return_vs_adversary (against the trained
adversary's deterministic pushes at α_adv = 0), every 1/num_evals of the run. At the end the protagonist
is evaluated without adversary on every point of a grid of models (`grid_set`, `grid_points` per axis):
grid.csv, grid.png, and summary.json's grid_worst / grid_average. final_return is the last eval_return.

Where this file differs from the authors' code (github AryamanReddi99/quantal-adversarial-rl; see
../shared/ALGORITHMS.md), not yet aligned (open issue 17), each changing results:
- the protagonist's α starts at 1 (log α = 0); theirs at 0.005 (log α = -5.30);
- `updates_per_step` 3 gradient updates per env step per env batch; theirs: one update every 3 env steps;
- the self-paced curriculum's data are undiscounted protagonist-phase returns, and k stays free once the bound
  was met; theirs uses the discounted returns of all 10 episodes of an iteration and updates only when the
  current batch meets the bound;
- a budget in env steps with `phase_steps` per phase; theirs: 200 iterations x 5 episodes per player, horizon
  500, 5 temperatures per iteration reused in both phases;
- both learners start at `learning_starts` with random actions before; theirs: critic from 3000, actor from
  5000 transitions, acting with the policy from the start;
- linear curriculum over the whole run; theirs reaches the target at 2/3 of training;
- `--curriculum none` keeps the temperature feature at 0 and α_adv = 0; their RARL is an ordinary SAC
  adversary with its own tuned α and no feature;
- deterministic evaluation on `num_eval_envs` envs and a grid of `grid_episodes` per cell on stand-in tasks
  (Pendulum, gymnax CartPole, brax); theirs: stochastic policies, 20 episodes, dm_control tasks, absolute body
  values, each axis alone and jointly, 1 episode per cell;
- one MLP trunk with μ and log σ heads, default init; theirs: separate μ and σ networks, Xavier init, actor before critic.

Choices where the paper and the reference sheet are silent:
- The temperature enters the observations as α_adv / E_0[α_adv] (1 at the initial mean, 0 at test time),
  so the networks see it at unit scale.
- The self-paced return constraint uses self-normalized importance weights (with negative returns, as
  on Pendulum, plain weights would make far-away distributions look feasible).
- Pendulum: its return bound (-400), the mass x length set and a curriculum update every iteration are this
  collection's; the paper's tasks are DMC/MuJoCo. CartPole: gymnax's CartPole-v1 with a continuous push
  (force_mag * (2u - 1), u in [0, 1]), since SAC needs continuous actions (the paper's DMC cartpole is
  continuous), and an adversary force of at most 0.5 (the sheet's 2.0 is for DMC's cartpole, which has no
  12-degree termination; with it the protagonist never learns to balance).
- Each player acts with uniform random actions until its own buffer holds learning_starts transitions.
- At a time limit the critic targets bootstrap from the true final observation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import digamma, gammaln

import envs
import runlog


@dataclass(frozen=True)
class Config:
    """QARL hyperparameters. Every field is a command-line flag (`--curriculum linear`)."""

    preset: Literal["pendulum", "cartpole", "brax-hopper", "brax-halfcheetah", "brax-walker2d"] = "pendulum"
    """Named settings; other flags override them."""
    env_id: str = "Pendulum-v1"
    """Pendulum-v1, CartPole-v1 (continuous push) or a brax id with a default adversary (hopper, ...)."""
    seed: int = 0
    """Base seed; run i uses fold_in(PRNGKey(seed), i), so run 0 is the same whatever --num-seeds."""
    num_seeds: int = 1
    """Independent runs, trained together as one vmapped program."""
    total_timesteps: int = 50_000
    """Environment steps of the protagonist's phases per seed (the budget plain SAC gets too); the
    adversary's phases add as many again."""
    adversary: Literal["on", "off"] = "on"
    """off: no adversary and no temperature (plain SAC with the same networks and budget)."""
    curriculum: Literal["self-paced", "linear", "none"] = "self-paced"
    """How α_adv is chosen: QARL's self-paced Gamma curriculum, a linear schedule, or 0 (RARL)."""
    num_envs: int = 5
    """Parallel envs; every episode draws its own α_adv (the paper: 5 temperatures per iteration)."""
    phase_steps: int = 200
    """Steps of every env per phase: adversary phase, then protagonist phase (one iteration)."""
    updates_per_step: int = 3
    """Gradient updates of the learning player after each step of all envs."""
    max_force: float | None = None
    """Bound of each force component; None: the env's default (reference sheet)."""
    buffer_size: int = 1_000_000
    """Replay capacity of each player (capped at what the run can fill)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 2_000
    """Transitions in a player's buffer before it learns (uniformly random actions until then)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actors."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the protagonist's log α (the adversary's α is the curriculum's)."""
    hidden_size: int = 256
    """Units per hidden layer (every network)."""
    num_layers: int = 3
    """Hidden layers (every network)."""
    temperature_rate: float = 1000.0
    """Rate β of the Gamma(k, β) temperature distribution."""
    initial_shape: float = 50.0
    """Initial k (mean α_adv = k / β = 0.05)."""
    target_shape: float = 1.0
    """Target k (mean 0.001)."""
    kl_bound: float = 0.5
    """Trust region of one self-paced update: KL(new || old) <= kl_bound."""
    return_bound: float = -400.0
    """Self-paced: the protagonist's return the new distribution must keep (importance-weighted)."""
    curriculum_batch: int = 30
    """(α_adv, return) pairs of protagonist episodes per self-paced update."""
    grid_set: str = "pendulum-2d"
    """Uncertainty set of the final robustness grid (envs.UNCERTAINTY_SETS), e.g. hopper-qarl."""
    grid_points: int = 11
    """Grid points per axis (the paper: 11 x 11)."""
    grid_episodes: int = 10
    """Episodes per grid point (their initial states are shared by all points)."""
    num_eval_envs: int = 8
    """Separate environments for the evaluations during training."""
    num_evals: int = 10
    """Evaluations during training (the last one, at the end, gives final_return)."""
    backend: str = "generalized"
    """Physics backend for brax ids (generalized or mjx: the ones that take forces)."""
    run_dir: str | None = None
    """Output directory; default runs/qarl_<env>_<time>."""
    quiet: bool = False
    """No progress lines."""
    tensorboard: bool = False
    """Also write TensorBoard logs (one series per seed)."""
    wandb: bool = False
    """Also log to Weights & Biases (WANDB_MODE=offline works)."""
    wandb_project: str = "jax-rl-collection"
    """wandb project name."""
    sweep: str = ""
    """Train every value of one hyperparameter in one vmapped program, e.g. critic_lr=1e-4,3e-4 (see SWEEPABLE)."""
    num_checkpoints: int = 10
    """Times the whole training state is saved during the run (RUN_DIR/resume.npz), for --resume."""
    resume: bool = False
    """Set by `--resume RUN_DIR`, which continues that run from its last saved state."""


# Hyperparameters that `--sweep` can vary inside one vmapped program (they enter the run as numbers).
SWEEPABLE = ("actor_lr", "critic_lr", "alpha_lr", "gamma", "tau", "kl_bound", "return_bound")


# The paper's SAC (3x256, actor 1e-4, critic 3e-4, batch 256, τ 0.005, an update per ~3 env steps: 5 envs,
# 3 updates per step of all of them, in the learning player's phase), curriculum Gamma(k, 1000) from k 50 to 1,
# KL trust region 0.5, return bounds hopper 1, cheetah 10, walker 10, cartpole 10; ~200 iterations of 5+5
# episodes for brax (1000-step episodes). Pendulum (ours): 2x64 networks so that it runs in minutes on a CPU,
# and a curriculum update every iteration (its 5 protagonist episodes): its budget is 250 episodes, not the
# paper's ~1000, and with 30 per update k only got from 50 to ~30 (of the 13 trust-region steps to the target
# 1), so the test-time feature 0 lay far outside the temperatures the protagonist had trained with.
# CartPole (ours, the same update rule): a push of at most 0.5 on the pole, not the sheet's 2.0, which is for
# DMC's cartpole. gymnax's episode ends at 12 degrees, and with 2.0 (or 1.0) the protagonist never learned to
# balance (episode returns 8-20, below a random policy's ~20); with 0.5 both seeds reach 500 (2 seeds, 1e5 steps).
PRESETS = {
    "pendulum": Config(hidden_size=64, num_layers=2, actor_lr=3e-4, curriculum_batch=5),
    "cartpole": Config(preset="cartpole", env_id="CartPole-v1", total_timesteps=100_000, phase_steps=500,
                       hidden_size=64, num_layers=2, actor_lr=3e-4, return_bound=10.0, grid_set="cartpole-2d",
                       curriculum_batch=5, max_force=0.5),
    "brax-hopper": Config(preset="brax-hopper", env_id="brax/hopper", total_timesteps=2_000_000, phase_steps=1000,
                          return_bound=1.0, learning_starts=10_000, grid_set="hopper-qarl", num_eval_envs=4,
                          grid_episodes=2),
    "brax-halfcheetah": Config(preset="brax-halfcheetah", env_id="brax/halfcheetah", total_timesteps=2_000_000,
                               phase_steps=1000, return_bound=10.0, learning_starts=10_000,
                               grid_set="halfcheetah-qarl", num_eval_envs=4, grid_episodes=2),
    "brax-walker2d": Config(preset="brax-walker2d", env_id="brax/walker2d", total_timesteps=2_000_000,
                            phase_steps=1000, return_bound=10.0, learning_starts=10_000, grid_set="walker-qarl",
                            num_eval_envs=4, grid_episodes=2),
}


class Sizes(NamedTuple):
    """Sizes derived from the config, computed (and checked) in one place."""

    num_iterations: int
    steps_per_iteration: int  # env transitions of one protagonist phase
    buffer_capacity: int
    eval_every: int  # iterations between evaluations
    sweep_name: str | None
    sweep_values: tuple[float, ...]


def derive_sizes(config: Config) -> Sizes:
    """Check the config and derive the loop sizes; raise before anything is compiled."""
    for name in ("num_seeds", "num_envs", "phase_steps", "updates_per_step", "batch_size", "hidden_size",
                 "num_layers", "curriculum_batch", "num_eval_envs", "num_evals", "grid_episodes"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}.")
    for name in ("gamma", "tau"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(config, name)}.")
    for name in ("temperature_rate", "initial_shape", "target_shape", "kl_bound"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}.")
    if config.grid_points < 2:
        raise ValueError(f"grid_points must be at least 2, got {config.grid_points}.")
    steps_per_iteration = config.phase_steps * config.num_envs
    num_iterations = config.total_timesteps // steps_per_iteration
    if num_iterations < 1:
        raise ValueError(
            f"total_timesteps ({config.total_timesteps}) must cover one protagonist phase: phase_steps "
            f"({config.phase_steps}) x num_envs ({config.num_envs}) = {steps_per_iteration} steps. Raise "
            f"--total-timesteps or lower --phase-steps."
        )
    capacity = min(config.buffer_size, num_iterations * steps_per_iteration)
    sweep_name, sweep_values = runlog.parse_sweep(config.sweep, SWEEPABLE)
    for value in sweep_values:  # every swept value must be a valid config on its own
        derive_sizes(dataclasses.replace(config, **{sweep_name: value}, sweep=""))
    return Sizes(num_iterations, steps_per_iteration, capacity, max(num_iterations // config.num_evals, 1),
                 sweep_name, sweep_values)


class EnvSpec(NamedTuple):
    obs_dim: int  # without the temperature feature
    action_dim: int
    action_low: jax.Array
    action_high: jax.Array
    adversary_dim: int
    max_force: float
    continuous_push: bool  # CartPole: the protagonist's action in [0, 1] is the push


def make_env(config: Config):
    """The two-player env (AdversarialForces, then EpisodeStatistics), its params and its EnvSpec."""
    kwargs = {"backend": config.backend} if config.env_id.startswith(envs.registry.BRAX_PREFIX) else {}
    env, env_params = envs.make(config.env_id, **kwargs)
    continuous_push = config.env_id == "CartPole-v1"
    if not continuous_push:
        envs.require_continuous_actions(env, env_params, config.env_id, "QARL (SAC players)",
                                        "CartPole-v1 (continuous push here) or a continuous-action env")
    uset = envs.uncertainty_set(config.grid_set)
    if uset.env_id != config.env_id:
        raise ValueError(f"--grid-set {config.grid_set} is for {uset.env_id}, not {config.env_id}: pick one of "
                         f"{', '.join(n for n, s in envs.UNCERTAINTY_SETS.items() if s.env_id == config.env_id)}.")
    if config.max_force is not None and config.max_force <= 0:
        raise ValueError(f"max_force must be positive, got {config.max_force}.")
    env = envs.AdversarialForces(env, max_force=config.max_force) if config.max_force else envs.AdversarialForces(env)
    if continuous_push:
        low, high, action_dim = jnp.zeros(1), jnp.ones(1), 1
    else:
        space = env.action_space(env_params)
        action_dim = int(np.prod(space.shape))
        low, high = jnp.broadcast_to(space.low, (action_dim,)), jnp.broadcast_to(space.high, (action_dim,))
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    spec = EnvSpec(obs_dim, action_dim, low, high, env.adversary_action_dim, env.max_force, continuous_push)
    return envs.EpisodeStatistics(env), env_params, spec


# ----------------------------------------------------------------------------------------------------
# NETWORKS (SAC's)


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
        return nn.Dense(self.action_dim)(x), jnp.clip(nn.Dense(self.action_dim)(x), -20.0, 2.0)


class Critic(nn.Module):
    """Q(s, a): an MLP on the concatenated observation and action."""

    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        for _ in range(self.num_layers):
            x = nn.relu(nn.Dense(self.hidden_size)(x))
        return nn.Dense(1)(x)[..., 0]


TwinCritic = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                     out_axes=0, axis_size=2)


def squashed_gaussian(mean: jax.Array, log_std: jax.Array) -> distrax.Distribution:
    """tanh(u), u ~ N(mean, σ²), with the stable tanh log-det."""
    return distrax.Transformed(distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)),
                               distrax.Block(distrax.Tanh(), ndims=1))


# ----------------------------------------------------------------------------------------------------
# SELF-PACED CURRICULUM (module level, so tests can check it)


def gamma_kl(shape_p, shape_q):
    """KL(Gamma(shape_p, β) || Gamma(shape_q, β)) for one shared rate β (it cancels)."""
    return (shape_p - shape_q) * digamma(shape_p) - gammaln(shape_p) + gammaln(shape_q)


def gamma_log_density(x, shape, rate):
    return shape * jnp.log(rate) - gammaln(shape) + (shape - 1.0) * jnp.log(x) - rate * x


def self_paced_update(shape, bound_met, temperatures, returns, rate: float, target_shape: float,
                      kl_bound: float, return_bound: float, initial_shape: float):
    """One self-paced step. `temperatures` were drawn from Gamma(shape, rate); `returns` are the
    protagonist's returns of those episodes. Returns (new shape, bound_met).

        k_new = argmin_k KL(Gamma(k) || Gamma(k_target))
                s.t. KL(Gamma(k) || Gamma(k_old)) <= kl_bound  and  Σ w_i R_i / Σ w_i >= return_bound,
        w_i = Gamma(α_i; k) / Gamma(α_i; k_old);   k stays put until mean(R) has reached the bound once.

    Solved exactly enough by checking 512 candidates between the target and the initial shape (and the
    current one, always feasible once the bound is met by the current returns).
    """
    bound_met = bound_met | (returns.mean() >= return_bound)
    low, high = min(target_shape, initial_shape), max(target_shape, initial_shape)
    candidates = jnp.concatenate([jnp.geomspace(low, high, 512), jnp.atleast_1d(shape)])
    log_weights = (gamma_log_density(temperatures[None], candidates[:, None], rate)
                   - gamma_log_density(temperatures[None], shape, rate))
    weights = jax.nn.softmax(log_weights, axis=-1)  # self-normalized importance weights
    expected_return = (weights * returns[None]).sum(-1)
    feasible = (gamma_kl(candidates, shape) <= kl_bound) & (expected_return >= return_bound)
    best = candidates[jnp.argmin(jnp.where(feasible, gamma_kl(candidates, target_shape), jnp.inf))]
    return jnp.where(bound_met & feasible.any(), best, shape), bound_met


# ----------------------------------------------------------------------------------------------------
# STATE


class Transition(NamedTuple):
    obs: jax.Array  # with the temperature feature
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
    log_alpha: jax.Array  # learned for the protagonist; unused by the adversary (its α is the curriculum's)
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any


class Curriculum(NamedTuple):
    shape: jax.Array  # k of Gamma(k, rate)
    bound_met: jax.Array
    temperatures: jax.Array  # [curriculum_batch] α_adv of finished protagonist episodes
    returns: jax.Array  # [curriculum_batch] their returns
    count: jax.Array


class RunState(NamedTuple):
    protagonist: Player
    adversary: Player
    protagonist_buffer: Buffer
    adversary_buffer: Buffer
    curriculum: Curriculum
    env_state: Any
    obs: jax.Array  # [num_envs, obs_dim], without the temperature feature
    temperature: jax.Array  # [num_envs] α_adv of each env's current episode
    steps: jax.Array  # env transitions so far


def buffer_add(buffer: Buffer, batch: Transition) -> Buffer:
    capacity, count = buffer.data.reward.shape[0], batch.reward.shape[0]
    index = (buffer.position + jnp.arange(count)) % capacity
    data = jax.tree.map(lambda stored, new: stored.at[index].set(new), buffer.data, batch)
    return Buffer(data, (buffer.position + count) % capacity, jnp.minimum(buffer.size + count, capacity))


def buffer_sample(buffer: Buffer, key: jax.Array, batch_size: int) -> Transition:
    index = jax.random.randint(key, (batch_size,), 0, buffer.size)
    return jax.tree.map(lambda stored: stored[index], buffer.data)


# ----------------------------------------------------------------------------------------------------
# TRAINING


def make_train(config: Config, progress: Callable | None = None) -> runlog.Program:
    """Build the whole run as a `runlog.Program`: `make_train(config)(key) -> (RunState, metrics)` runs it
    in one jittable scan; `runlog.run_program` runs it in checkpointed chunks (init, then `update` scanned).

    `hparams` of init overrides the SWEEPABLE values with (possibly traced) numbers, for `--sweep`.
    `progress`, if given, is called from inside the run (host callback) after every iteration.
    """
    sizes = derive_sizes(config)
    env, env_params, spec = make_env(config)
    protagonist_actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)
    adversary_actor = Actor(spec.adversary_dim, config.hidden_size, config.num_layers)
    critic = TwinCritic(config.hidden_size, config.num_layers)
    target_entropy = -float(spec.action_dim)
    initial_mean = config.initial_shape / config.temperature_rate
    target_mean = config.target_shape / config.temperature_rate
    adversary_on = config.adversary == "on"
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    eval_steps = int(env_params.max_steps_in_episode)
    total_steps = sizes.num_iterations * sizes.steps_per_iteration * (2 if adversary_on else 1)  # both phases

    def optimizers(hp):
        """Adam for an actor, its critics and log α, at the run's (possibly swept) learning rates."""
        return optax.adam(hp["actor_lr"]), optax.adam(hp["critic_lr"]), optax.adam(hp["alpha_lr"])

    def with_temperature(obs, temperature):
        """Append α_adv / E_0[α_adv] to the observation (0 at test time)."""
        return jnp.concatenate([obs, (temperature / initial_mean)[..., None]], axis=-1)

    def to_env_action(protagonist_action, adversary_action):
        """[-1, 1] actions -> the env's (protagonist action, adversary force)."""
        action = spec.action_low + 0.5 * (protagonist_action + 1.0) * (spec.action_high - spec.action_low)
        if spec.continuous_push:
            action = action[..., 0]
        return action, adversary_action * spec.max_force * adversary_on

    def sample_temperature(curriculum: Curriculum, key, steps):
        """α_adv for a new episode of each env."""
        if not adversary_on or config.curriculum == "none":
            return jnp.zeros(config.num_envs)
        if config.curriculum == "linear":
            fraction = jnp.clip(steps / total_steps, 0.0, 1.0)
            return jnp.full(config.num_envs, initial_mean + (target_mean - initial_mean) * fraction)
        return jax.random.gamma(key, curriculum.shape, (config.num_envs,)) / config.temperature_rate

    def gradient_update(hp, player: Player, actor: nn.Module, batch: Transition, key, learned_alpha: bool):
        """One SAC update of a player. The protagonist tunes its α; the adversary's α is each sample's
        α_adv (read back from the observation's temperature feature)."""
        actor_optimizer, critic_optimizer, alpha_optimizer = optimizers(hp)
        key_next, key_actor = jax.random.split(key)
        if learned_alpha:
            alpha = next_alpha = jnp.exp(player.log_alpha)
        else:
            alpha, next_alpha = batch.obs[:, -1] * initial_mean, batch.next_obs[:, -1] * initial_mean

        # CRITIC UPDATE
        dist = squashed_gaussian(*actor.apply(player.actor, batch.next_obs))
        next_action, next_log_prob = dist.sample_and_log_prob(seed=key_next)
        next_q = critic.apply(player.target_critic, batch.next_obs, next_action).min(0)
        targets = batch.reward + hp["gamma"] * (1.0 - batch.terminated) * (next_q - next_alpha * next_log_prob)

        def critic_loss_fn(params):
            return 0.5 * ((critic.apply(params, batch.obs, batch.action) - targets) ** 2).mean(-1).sum()

        critic_loss, grads = jax.value_and_grad(critic_loss_fn)(player.critic)
        updates, critic_opt = critic_optimizer.update(grads, player.critic_opt)
        critic_params = optax.apply_updates(player.critic, updates)

        # ACTOR UPDATE
        def actor_loss_fn(params):
            action, log_prob = squashed_gaussian(*actor.apply(params, batch.obs)).sample_and_log_prob(seed=key_actor)
            return (alpha * log_prob - critic.apply(critic_params, batch.obs, action).min(0)).mean(), log_prob

        (_, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(player.actor)
        updates, actor_opt = actor_optimizer.update(grads, player.actor_opt)
        actor_params = optax.apply_updates(player.actor, updates)

        # TEMPERATURE UPDATE (protagonist): J(α) = E[-α (log π + H_target)]
        log_alpha, alpha_opt = player.log_alpha, player.alpha_opt
        if learned_alpha:
            grad = jax.grad(lambda la: -(jnp.exp(la) * jax.lax.stop_gradient(log_prob + target_entropy)).mean())(
                player.log_alpha)
            updates, alpha_opt = alpha_optimizer.update(grad, player.alpha_opt)
            log_alpha = optax.apply_updates(player.log_alpha, updates)

        target_critic = optax.incremental_update(critic_params, player.target_critic, hp["tau"])
        return Player(actor_params, critic_params, target_critic, log_alpha, actor_opt, critic_opt, alpha_opt), \
            critic_loss

    def act(player: Player, actor: nn.Module, buffer: Buffer, obs, key, dim: int):
        """Policy sample, or uniform random actions while the player's buffer is short of learning_starts."""
        key_policy, key_random = jax.random.split(key)
        action = squashed_gaussian(*actor.apply(player.actor, obs)).sample(seed=key_policy)
        random_action = jax.random.uniform(key_random, (obs.shape[0], dim), minval=-1.0, maxval=1.0)
        return jnp.where(buffer.size < config.learning_starts, random_action, action)

    def run_phase(hp, state: RunState, key, learner: str):
        """phase_steps steps of every env; only `learner` ("protagonist" or "adversary") stores and learns."""
        learns_protagonist = learner == "protagonist"

        def step(state: RunState, key):
            key_pro, key_adv, key_env, key_temp, key_update = jax.random.split(key, 5)
            obs = with_temperature(state.obs, state.temperature)
            protagonist_action = act(state.protagonist, protagonist_actor, state.protagonist_buffer, obs, key_pro,
                                     spec.action_dim)
            adversary_action = act(state.adversary, adversary_actor, state.adversary_buffer, obs, key_adv,
                                   spec.adversary_dim)
            next_obs, env_state, reward, terminated, truncated, info = step_envs(
                jax.random.split(key_env, config.num_envs), state.env_state,
                to_env_action(protagonist_action, adversary_action), env_params)
            done = terminated | truncated
            true_next = jnp.where(done[:, None], info["final_observation"].reshape(config.num_envs, -1), next_obs)
            transition = Transition(
                obs, protagonist_action if learns_protagonist else adversary_action,
                reward if learns_protagonist else -reward, terminated.astype(jnp.float32),
                with_temperature(true_next, state.temperature))

            # STORE AND LEARN (the learning player only)
            player, actor, buffer_name = ((state.protagonist, protagonist_actor, "protagonist_buffer")
                                          if learns_protagonist else
                                          (state.adversary, adversary_actor, "adversary_buffer"))
            buffer = buffer_add(getattr(state, buffer_name), transition)

            def learn(player):
                def one_update(player, key):
                    key_sample, key_loss = jax.random.split(key)
                    batch = buffer_sample(buffer, key_sample, config.batch_size)
                    return gradient_update(hp, player, actor, batch, key_loss, learned_alpha=learns_protagonist)

                player, losses = jax.lax.scan(one_update, player, jax.random.split(key_update, config.updates_per_step))
                return player, losses.mean()

            player, critic_loss = jax.lax.cond(buffer.size >= config.learning_starts, learn,
                                               lambda p: (p, jnp.float32(jnp.nan)), player)

            # CURRICULUM RECORD: (α_adv, return) of protagonist-phase episodes that finished
            curriculum = state.curriculum
            if learns_protagonist:
                slot = curriculum.count + jnp.cumsum(done) - 1
                slot = jnp.where(done & (slot < config.curriculum_batch), slot, config.curriculum_batch)
                curriculum = curriculum._replace(
                    temperatures=curriculum.temperatures.at[slot].set(state.temperature, mode="drop"),
                    returns=curriculum.returns.at[slot].set(info["episode_return"], mode="drop"),
                    count=jnp.minimum(curriculum.count + done.sum(), config.curriculum_batch))

            temperature = jnp.where(done, sample_temperature(curriculum, key_temp, state.steps), state.temperature)
            state = state._replace(
                env_state=env_state, obs=next_obs, temperature=temperature, curriculum=curriculum,
                steps=state.steps + config.num_envs, **{buffer_name: buffer, learner: player})
            return state, (critic_loss, info["episode_done"], info["episode_return"])

        state, (critic_loss, done, returns) = jax.lax.scan(step, state, jax.random.split(key, config.phase_steps))
        return state, (jnp.nanmean(critic_loss), envs.mean_over_finished(returns, done))

    def evaluate(state: RunState, key, with_adversary: bool):
        """Mean return of the first episode of num_eval_envs fresh envs: deterministic protagonist
        (tanh of the mean), α_adv feature 0, the adversary's deterministic push or none."""
        key_reset, key_steps = jax.random.split(key)
        obs, env_state = reset_envs(jax.random.split(key_reset, config.num_eval_envs), env_params)

        def step(carry, key):
            obs, env_state, first_return, finished = carry
            obs_t = with_temperature(obs, jnp.zeros(config.num_eval_envs))
            protagonist_action = jnp.tanh(protagonist_actor.apply(state.protagonist.actor, obs_t)[0])
            adversary_action = jnp.tanh(adversary_actor.apply(state.adversary.actor, obs_t)[0]) * with_adversary
            obs, env_state, _, _, _, info = step_envs(jax.random.split(key, config.num_eval_envs), env_state,
                                                      to_env_action(protagonist_action, adversary_action), env_params)
            first_return = jnp.where(finished, first_return, info["episode_return"])
            return (obs, env_state, first_return, finished | info["episode_done"]), None

        carry = (obs, env_state, jnp.zeros(config.num_eval_envs), jnp.zeros(config.num_eval_envs, bool))
        (_, _, first_return, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, eval_steps))
        return first_return.mean()

    def init_player(hp, key, actor: nn.Module, action_dim: int) -> Player:
        actor_optimizer, critic_optimizer, alpha_optimizer = optimizers(hp)
        key_actor, key_critic = jax.random.split(key)
        obs, action = jnp.zeros((1, spec.obs_dim + 1)), jnp.zeros((1, action_dim))
        actor_params, critic_params = actor.init(key_actor, obs), critic.init(key_critic, obs, action)
        log_alpha = jnp.float32(0.0)  # α starts at 1, as in SAC
        return Player(actor_params, critic_params, critic_params, log_alpha, actor_optimizer.init(actor_params),
                      critic_optimizer.init(critic_params), alpha_optimizer.init(log_alpha))

    def empty_buffer(action_dim: int) -> Buffer:
        capacity, obs_dim = sizes.buffer_capacity, spec.obs_dim + 1
        return Buffer(Transition(jnp.zeros((capacity, obs_dim)), jnp.zeros((capacity, action_dim)),
                                 jnp.zeros(capacity), jnp.zeros(capacity), jnp.zeros((capacity, obs_dim))),
                      jnp.int32(0), jnp.int32(0))

    def init(key, hparams):
        hp = {name: jnp.float32(getattr(config, name)) for name in SWEEPABLE} | hparams
        key, key_pro, key_adv, key_reset, key_temp = jax.random.split(key, 5)
        obs, env_state = reset_envs(jax.random.split(key_reset, config.num_envs), env_params)
        curriculum = Curriculum(jnp.float32(config.initial_shape), jnp.bool_(False),
                                jnp.zeros(config.curriculum_batch), jnp.zeros(config.curriculum_batch), jnp.int32(0))
        state = RunState(init_player(hp, key_pro, protagonist_actor, spec.action_dim),
                         init_player(hp, key_adv, adversary_actor, spec.adversary_dim),
                         empty_buffer(spec.action_dim), empty_buffer(spec.adversary_dim), curriculum, env_state,
                         obs.reshape(config.num_envs, -1), sample_temperature(curriculum, key_temp, 0), jnp.int32(0))
        return hp, state, key

    def update(carry, index):
        """One iteration: an adversary phase, a protagonist phase, the curriculum, an evaluation if due."""
        hp, state, key = carry
        key, key_adv, key_pro, key_eval = jax.random.split(key, 4)
        # ADVERSARY PHASE (none with the adversary off: plain SAC gets the protagonist's budget)
        adversary_loss = adversary_phase_return = jnp.float32(jnp.nan)
        if adversary_on:
            state, (adversary_loss, adversary_phase_return) = run_phase(hp, state, key_adv, "adversary")
        # PROTAGONIST PHASE
        state, (protagonist_loss, episode_return) = run_phase(hp, state, key_pro, "protagonist")

        # CURRICULUM UPDATE (self-paced) once curriculum_batch protagonist episodes have finished
        curriculum = state.curriculum
        if adversary_on and config.curriculum == "self-paced":
            ready = curriculum.count >= config.curriculum_batch
            shape, bound_met = self_paced_update(
                curriculum.shape, curriculum.bound_met, curriculum.temperatures, curriculum.returns,
                config.temperature_rate, config.target_shape, hp["kl_bound"], hp["return_bound"],
                config.initial_shape)
            curriculum = curriculum._replace(shape=jnp.where(ready, shape, curriculum.shape),
                                             bound_met=jnp.where(ready, bound_met, curriculum.bound_met),
                                             count=jnp.where(ready, 0, curriculum.count))
            state = state._replace(curriculum=curriculum)

        # EVALUATE AND LOG
        is_eval = ((index + 1) % sizes.eval_every == 0) | (index == sizes.num_iterations - 1)
        key_nominal, key_adversary = jax.random.split(key_eval)
        eval_return, eval_vs_adversary = jax.lax.cond(
            is_eval,
            lambda: (evaluate(state, key_nominal, False), evaluate(state, key_adversary, adversary_on)),
            lambda: (jnp.float32(jnp.nan), jnp.float32(jnp.nan)))
        metrics = {
            "env_steps": (index + 1) * sizes.steps_per_iteration,  # the protagonist's phases
            "total_env_steps": state.steps,  # both phases
            "episode_return": episode_return,
            "adversary_phase_return": adversary_phase_return,
            "temperature": state.temperature.mean(),
            "curriculum_shape": curriculum.shape if config.curriculum == "self-paced" and adversary_on
            else jnp.float32(jnp.nan),
            "alpha": jnp.exp(state.protagonist.log_alpha),
            "protagonist_critic_loss": protagonist_loss,
            "adversary_critic_loss": adversary_loss,
            "eval_return": eval_return,
            "eval_return_vs_adversary": eval_vs_adversary,
        }
        if progress is not None:
            jax.debug.callback(lambda m: progress(**m), {k: metrics[k] for k in (
                "env_steps", "episode_return", "adversary_phase_return", "temperature", "eval_return")})
        return (hp, state, key), metrics

    return runlog.Program(init, update, sizes.num_iterations, result=lambda carry: carry[1])


# ----------------------------------------------------------------------------------------------------
# ROBUSTNESS GRID (after training, one vmapped call per seed)


def make_grid_evaluation(config: Config) -> tuple[envs.UncertaintySet, Callable]:
    """`evaluate(protagonist_actor_params, key) -> envs.GridEvaluation`: the deterministic protagonist
    without adversary (α_adv feature 0) on every model of the grid."""
    env, env_params, spec = make_env(config)
    uset = envs.uncertainty_set(config.grid_set)
    actor = Actor(spec.action_dim, config.hidden_size, config.num_layers)

    def policy(actor_params, obs):
        obs = jnp.append(obs.reshape(-1), 0.0)
        action = spec.action_low + 0.5 * (jnp.tanh(actor.apply(actor_params, obs)[0]) + 1.0) * (
            spec.action_high - spec.action_low)
        return (action[0] if spec.continuous_push else action), jnp.zeros(spec.adversary_dim)

    two_player = env._env  # AdversarialForces under EpisodeStatistics: zero force = the plain env
    evaluator = envs.make_grid_evaluator(two_player, env_params, uset, policy, config.grid_points,
                                         num_steps=int(env_params.max_steps_in_episode),
                                         num_episodes=config.grid_episodes)
    return uset, evaluator


def main(args: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Train, write the run directory (one per swept value); return its summary (a list for a sweep)."""
    config = runlog.parse_config(Config, PRESETS, args)
    sizes = derive_sizes(config)
    run_dir = runlog.run_path(config, "qarl")
    values = sizes.sweep_values or (None,)
    progress = runlog.Progress(run_dir, sizes.num_iterations * sizes.steps_per_iteration,
                               config.num_seeds * len(values), config.quiet, every_seconds=5.0)
    program = make_train(config, progress)  # raises on a bad config before compiling
    uset, grid_evaluation = make_grid_evaluation(config)
    run_configs = runlog.sweep_run_configs(run_dir, config, sizes.sweep_name, sizes.sweep_values)
    for directory, run_config in {run_dir: config, **run_configs}.items():
        runlog.start_run(directory, run_config, "qarl")
    keys = runlog.seed_keys(config.seed, config.num_seeds)
    if not config.quiet:
        mode = f"{config.curriculum} curriculum" if config.adversary == "on" else "no adversary (SAC)"
        grid = f" x {len(values)} values of {sizes.sweep_name}" if sizes.sweep_name else ""
        print(f"QARL on {config.env_id} ({config.preset} preset, {mode}), {config.num_seeds} seed(s){grid} x "
              f"{sizes.num_iterations * sizes.steps_per_iteration:,} steps -> {run_dir}", flush=True)
    state, metrics, compile_seconds, train_seconds = runlog.run_program(
        program, keys, run_dir, config.num_checkpoints, config.resume,
        sweep=(sizes.sweep_name, sizes.sweep_values) if sizes.sweep_name else None)

    summaries, curves = [], []
    for directory, run_config, run_state, run_metrics in runlog.sweep_runs(
            run_configs, state, metrics, sizes.sweep_name is not None):

        # ROBUSTNESS GRID: every seed's protagonist on every model, no adversary
        grids = [grid_evaluation(jax.tree.map(lambda x: x[seed], run_state.protagonist.actor),
                                 jax.random.PRNGKey(seed)) for seed in range(config.num_seeds)]
        grid_returns = np.stack([np.asarray(g.returns) for g in grids])
        swept = f", {directory.name}" if sizes.sweep_name else ""
        runlog.write_grid(directory, uset, np.asarray(grids[0].values), grid_returns,
                          f"QARL {config.adversary == 'on' and config.curriculum or 'off'} on {config.env_id}"
                          f"{swept}: {uset.name} ({config.num_seeds} seeds, "
                          f"{sizes.num_iterations * sizes.steps_per_iteration:,} steps)")
        summaries.append(runlog.finish_run(
            directory, run_config, "qarl", run_metrics, final_return=run_metrics["eval_return"][:, -1],
            checkpoint={"protagonist": run_state.protagonist._asdict(), "adversary": run_state.adversary._asdict(),
                        "curriculum": run_state.curriculum._asdict()},
            compile_seconds=compile_seconds, train_seconds=train_seconds / len(values),
            extra_summary={
                "return_vs_adversary": run_metrics["eval_return_vs_adversary"][:, -1].tolist(),
                "grid_set": uset.name, "grid_points": config.grid_points,
                "grid_worst": [float(g.worst) for g in grids], "grid_average": [float(g.average) for g in grids],
                "final_temperature_mean": run_metrics["temperature"][:, -1].tolist(),
            },
        ))
        curves.append(runlog.nanmean_quiet(run_metrics["eval_return"], axis=0))
    final_returns = np.array([summary["final_return"] for summary in summaries])
    if np.isinf(np.asarray(metrics["protagonist_critic_loss"])).any() or np.isnan(final_returns).any():
        raise SystemExit(f"Training diverged (an infinite critic loss or a NaN return). Outputs so far are in "
                         f"{run_dir}. Try lower learning rates (--critic-lr, --actor-lr).")
    if not config.quiet:
        for directory, summary, curve in zip(run_configs, summaries, curves):
            print(f"{directory}: evaluation return {runlog.sparkline(curve)}")
            print(f"  final return per seed: {[round(r, 1) for r in summary['final_return']]}; against the "
                  f"adversary: {[round(r, 1) for r in summary['return_vs_adversary']]}")
            print(f"  grid {uset.name}: worst {[round(r, 1) for r in summary['grid_worst']]}, average "
                  f"{[round(r, 1) for r in summary['grid_average']]}  -> {directory / 'grid.png'}")
        print(f"{summaries[0]['env_steps_per_second']:,.0f} env steps/s, compile {compile_seconds:.1f}s")
    return summaries if sizes.sweep_name else summaries[0]


if __name__ == "__main__":
    main()
