"""Run brax's own SAC and ours on the same setting in one process, and print one JSON object.

    python scripts/compare_brax_sac.py                          # 50k env steps each
    python scripts/compare_brax_sac.py --total-timesteps 20000

Setting (our `brax-inverted-pendulum` preset): brax/inverted_pendulum (generalized backend), episodes of
1000 steps, 64 envs, batch 256, 0.5 gradient updates per env step (brax: grad_updates_per_step=32 per
batch of 64 env steps), 256x256 actor and critics, lr 3e-4, γ 0.99, τ 0.005, reward scale 1, no observation
normalization, 2048 warm-up steps, a replay buffer that holds the whole run, seed 0, 5 evaluations of the
deterministic policy on 8 envs (the last one is final_return).

Timing. Ours: runner.compile_and_run (compile excluded, the in-run evaluations included). Brax compiles
and runs in one call, so its rate is taken between progress_fn calls: from the call after the first
training epoch (everything compiled by then) to the last call; that window holds the later epochs and
their evaluations (see "brax_timing" in the output); training_only_env_steps_per_second leaves the
evaluations out, using brax's own epoch timers. Differences left in the algorithms themselves (not
settable in brax's train): brax's entropy target is -|A|/2 (ours -|A|), its warm-up acts with the initial
policy (ours uniformly at random), it drops time-limit transitions from the critic loss (ours bootstraps),
and its σ is softplus(x) + 0.001 (ours exp of a clipped log σ).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/, algorithms/

import runner  # noqa: E402
from algorithms import sac  # noqa: E402


def restore_device_put_replicated() -> None:
    """brax's training agents call jax.device_put_replicated, removed in recent JAX. Put back what it did:
    stack len(devices) copies on a new leading axis, one slice per device (the layout jax.pmap expects).
    It is the only removed API that brax's SAC reaches (it uses jax.tree_util.tree_map, not jax.tree_map)."""
    if hasattr(jax, "device_put_replicated"):
        return

    def device_put_replicated(tree, devices):
        sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("d",)),
                                              jax.sharding.PartitionSpec("d"))
        return jax.tree.map(lambda x: jax.device_put(jnp.stack([jnp.asarray(x)] * len(devices)), sharding), tree)

    jax.device_put_replicated = device_put_replicated


def run_ours(config: sac.Config) -> dict:
    train = runner.vmap_seeds(sac.make_train(config))
    (_, metrics), compile_seconds, train_seconds = runner.compile_and_run(
        train, runner.seed_keys(config.seed, config.num_seeds))
    env_steps = int(metrics["env_steps"][0, -1])
    return {
        "env_steps": env_steps,
        "compile_seconds": round(compile_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "env_steps_per_second": round(env_steps / train_seconds, 1),
        "final_return": float(metrics["eval_return"][0, -1]),
        "eval_returns": [round(float(r), 1) for r in np.asarray(metrics["eval_return"][0])
                         if np.isfinite(r)],
    }


def run_brax(config: sac.Config) -> dict:
    restore_device_put_replicated()
    import brax.envs
    from brax.training.agents.sac import networks as sac_networks
    from brax.training.agents.sac import train as brax_sac

    calls = []  # (wall time, env steps, metrics) at each progress_fn call

    def progress_fn(step, metrics):
        calls.append((time.perf_counter(), int(step), {k: float(v) for k, v in metrics.items()}))

    environment = brax.envs.get_environment(config.env_id.removeprefix("brax/"), backend=config.backend)
    t0 = time.perf_counter()
    brax_sac.train(
        environment, num_timesteps=config.total_timesteps, episode_length=1000, num_envs=config.num_envs,
        num_eval_envs=config.num_eval_envs, num_evals=config.num_evals, deterministic_eval=True,
        learning_rate=config.actor_lr, discounting=config.gamma, tau=config.tau, seed=config.seed,
        batch_size=config.batch_size, grad_updates_per_step=round(config.num_envs * config.updates_per_env_step),
        reward_scaling=config.reward_scale, normalize_observations=config.normalize_observations,
        min_replay_size=config.learning_starts,
        max_replay_size=2 * config.total_timesteps,  # room for every transition (brax rounds the steps up)
        network_factory=functools.partial(
            sac_networks.make_sac_networks, hidden_layer_sizes=(config.hidden_size,) * config.num_layers),
        progress_fn=progress_fn,
    )
    wall_seconds = time.perf_counter() - t0
    (t_start, step_start, first), (t_end, step_end, last) = calls[1], calls[-1]
    training_seconds = last["training/walltime"] - first["training/walltime"]  # brax's own epoch timers
    return {
        "env_steps": step_end,
        "timed_env_steps": step_end - step_start,
        "train_seconds": round(t_end - t_start, 2),
        "env_steps_per_second": round((step_end - step_start) / (t_end - t_start), 1),
        "training_only_env_steps_per_second": round((step_end - step_start) / training_seconds, 1),
        "eval_seconds_in_window": round(sum(m["eval/epoch_eval_time"] for _, _, m in calls[2:]), 2),
        "wall_seconds_including_compile": round(wall_seconds, 2),
        "final_return": last["eval/episode_reward"],
        "eval_returns": [round(m["eval/episode_reward"], 1) for _, _, m in calls],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = runner.parse_config(sac.Config, sac.PRESETS, [
        "--preset", "brax-inverted-pendulum", "--quiet",
        "--total-timesteps", str(args.total_timesteps), "--seed", str(args.seed)])
    if config.num_evals < 3:
        raise SystemExit("The brax timing window needs num_evals >= 3 (one epoch to compile, one or more to time).")

    t0 = time.perf_counter()
    ours = run_ours(config)
    brax_result = run_brax(config)
    print(json.dumps({
        "env_id": config.env_id,
        "preset": config.preset,
        "total_timesteps": config.total_timesteps,
        "seed": config.seed,
        "ours": ours,
        "brax": brax_result,
        "steps_per_second_ours_over_brax": round(
            ours["env_steps_per_second"] / brax_result["env_steps_per_second"], 3),
        "brax_timing": "wall clock between progress_fn calls, from the one after the first training epoch "
                       "(compiles done) to the last; covers the later epochs and their evaluations "
                       "(training_only_env_steps_per_second: brax's training/walltime over the same epochs)",
        "ours_timing": "runner.compile_and_run: the whole jitted run (warm-up, training, evaluations), "
                       "compile excluded",
        "backend": jax.default_backend(),
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
