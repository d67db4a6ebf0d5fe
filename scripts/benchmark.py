"""Measure an algorithm's speed side by side with its environment's, and print one JSON object.

    python scripts/benchmark.py pqn --preset cartpole
    python scripts/benchmark.py pqn --preset cartpole --num-seeds 4
    python scripts/benchmark.py pqn --preset minatar --total-timesteps 1000000
    python scripts/benchmark.py sqirl --preset cartpole
    python scripts/benchmark.py pqn --num-seeds 4 --devices 1,2,4   # the same run sharded over 1, 2, 4 devices
    python scripts/benchmark.py --env dmc/CartpoleBalance,dmc/CheetahRun --num-envs 128   # environments alone

Reports compile seconds, training env steps/s (all seeds together, compile excluded), peak memory, and,
measured in the same process, the throughput of a uniformly random policy on the same environment with
the same number of parallel envs (times seeds), and the ratio training / random. Machines are shared and
noisy: compare ratios and side-by-side figures, not absolute times across runs. Extra flags after the
algorithm name go to the algorithm's own CLI (e.g. `--num-envs 64`).

`--env ID[,ID...]` measures environments alone: a uniformly random policy on `--num-envs` vmapped envs for
`--num-steps` steps, with compile seconds; for `dmc/` ids also MuJoCo Playground's raw env in the same process
(no auto-reset, no time limit), so the adapter's cost shows as a ratio.

`--devices 1,2,4` runs the benchmark once per device count, each in a fresh process whose seeds are sharded
over that many devices (on a CPU, forced with XLA_FLAGS=--xla_force_host_platform_device_count=N), one after
another, and prints them together with each count's throughput relative to one device.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/, algorithms/

import runner  # noqa: E402
import runlog  # noqa: E402


def random_policy_steps_per_second(env, env_params, num_envs: int, num_steps: int, seed: int = 0,
                                   with_compile: bool = False):
    """Env steps/s of a uniformly random policy on `num_envs` vmapped envs (compile excluded); with
    `with_compile`, the pair (steps/s, compile seconds)."""
    action_space = env.action_space(env_params)
    two_player = hasattr(env, "adversary_action_dim")  # QARL's env: (protagonist action, adversary force)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def rollout(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = reset(jax.random.split(key_reset, num_envs), env_params)

        def body(carry, key):
            state, total = carry
            key_action, key_force, key_step = jax.random.split(key, 3)
            actions = jax.vmap(action_space.sample)(jax.random.split(key_action, num_envs))
            if two_player:
                actions = (actions, jax.random.uniform(key_force, (num_envs, env.adversary_action_dim),
                                                       minval=-env.max_force, maxval=env.max_force))
            _, state, reward, *_ = step(jax.random.split(key_step, num_envs), state, actions, env_params)
            return (state, total + reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0)), jax.random.split(key_steps, num_steps))
        return total

    _, compile_seconds, seconds = runner.compile_and_run(rollout, jax.random.PRNGKey(seed))
    return (num_envs * num_steps / seconds, compile_seconds) if with_compile else num_envs * num_steps / seconds


def raw_playground_steps_per_second(pg_env, num_envs: int, num_steps: int, seed: int = 0):
    """The same measurement on a raw MuJoCo Playground env (its own reset/step; no auto-reset or time limit)."""

    def rollout(key):
        state = jax.vmap(pg_env.reset)(jax.random.split(key, num_envs))

        def body(carry, key):
            state, total = carry
            actions = jax.random.uniform(key, (num_envs, pg_env.action_size), minval=-1.0, maxval=1.0)
            state = jax.vmap(pg_env.step)(state, actions)
            return (state, total + state.reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0)), jax.random.split(key, num_steps))
        return total

    _, compile_seconds, seconds = runner.compile_and_run(rollout, jax.random.PRNGKey(seed))
    return num_envs * num_steps / seconds, compile_seconds


def benchmark_envs(env_ids: list[str], num_envs: int, num_steps: int, make_kwargs: dict) -> None:
    """Random-policy throughput and compile time of each env id; print a JSON list."""
    import envs

    for env_id in env_ids:
        envs.check_env_id(env_id)
    results = []
    for env_id in env_ids:
        t0 = time.perf_counter()
        env, env_params = envs.make(env_id, **make_kwargs)
        make_seconds = time.perf_counter() - t0
        steps, compile_seconds = random_policy_steps_per_second(env, env_params, num_envs, num_steps,
                                                                with_compile=True)
        result = {"env_id": env_id, "num_envs": num_envs, "num_steps": num_steps, "make_seconds": round(make_seconds, 2),
                  "compile_seconds": round(compile_seconds, 2), "random_policy_env_steps_per_second": round(steps)}
        if hasattr(env, "pg_env"):
            raw, raw_compile = raw_playground_steps_per_second(env.pg_env, num_envs, num_steps)
            result.update(raw_playground_env_steps_per_second=round(raw), raw_compile_seconds=round(raw_compile, 2),
                          adapter_over_raw=round(steps / raw, 3))
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    print(json.dumps({"backend": jax.default_backend(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                      "results": results}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algorithm", nargs="?", help="file name in algorithms/ without .py, e.g. pqn")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--num-seeds", type=int, default=1)
    parser.add_argument("--total-timesteps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--devices", default=None, help="e.g. 1,2,4: one benchmark per device count, side by side")
    parser.add_argument("--env", default=None, help="e.g. dmc/CheetahRun,CartPole-v1: environments alone")
    parser.add_argument("--num-envs", type=int, default=128, help="with --env: parallel envs")
    parser.add_argument("--num-steps", type=int, default=200, help="with --env: steps per env")
    parser.add_argument("--impl", default=None, help="with --env and dmc ids: MJX implementation (jax, warp)")
    args, extra = parser.parse_known_args()
    if args.env:
        return benchmark_envs(args.env.split(","), args.num_envs, args.num_steps,
                              {"impl": args.impl} if args.impl else {})
    if not args.algorithm:
        parser.error("name an algorithm (e.g. pqn), or pass --env ID to measure environments alone")
    if args.devices:
        return compare_device_counts([int(n) for n in args.devices.split(",")])

    module = importlib.import_module(f"algorithms.{args.algorithm}")
    cli = ["--quiet", "--num-seeds", str(args.num_seeds), *extra]
    if args.preset:
        cli += ["--preset", args.preset]
    if args.total_timesteps:
        cli += ["--total-timesteps", str(args.total_timesteps)]
    config = runner.parse_config(module.Config, module.PRESETS, cli)

    # TRAINING THROUGHPUT
    keys = runner.seed_keys(config.seed, config.num_seeds)
    train = runner.vmap_seeds(module.make_train(config))
    t0 = time.perf_counter()
    outputs, compile_seconds, train_seconds = runner.compile_and_run(train, keys)
    metrics = outputs[-1]  # train returns (..., metrics)
    # every env step the program takes (QARL: both players' phases; env_steps counts the protagonist's)
    env_steps = int(metrics.get("total_env_steps", metrics["env_steps"])[0, -1])
    train_memory = runlog.peak_memory_mb()
    training = env_steps * config.num_seeds / train_seconds

    # RANDOM-POLICY THROUGHPUT OF THE SAME ENV, SAME NUMBER OF ENVS
    env, env_params, *_ = module.make_env(config)
    # Streaming learners step one env each; SQIRL runs its m episodes of an iteration in parallel.
    num_envs_per_seed = getattr(config, "num_envs", None) or getattr(config, "episodes_per_iteration", 1)
    num_envs = num_envs_per_seed * config.num_seeds
    random_steps = max(min(env_steps * config.num_seeds // num_envs, 20_000), 100)
    random = random_policy_steps_per_second(env, env_params, num_envs, random_steps)

    print(json.dumps({
        "algorithm": args.algorithm,
        "preset": config.preset,
        "env_id": config.env_id,
        "num_seeds": config.num_seeds,
        "num_envs": num_envs_per_seed,
        "env_steps_per_seed": env_steps,
        "compile_seconds": round(compile_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "train_env_steps_per_second": round(training),
        "random_policy_env_steps_per_second": round(random),
        "train_over_random": round(training / random, 4),
        "peak_memory_mb": round(train_memory, 1),
        "final_return_mean": float(jnp.mean(metrics["eval_return"][:, -1])) if "eval_return" in metrics
        else float(jnp.nanmean(metrics["episode_return"][:, -1])),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "num_devices": len(jax.devices()),
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }, indent=2))


def compare_device_counts(counts: list[int]) -> None:
    """Rerun this command once per device count in a fresh process; print the results side by side."""
    argv = [arg for i, arg in enumerate(sys.argv[1:]) if arg != "--devices" and sys.argv[i] != "--devices"
            and not arg.startswith("--devices=")]
    results = []
    for count in counts:
        flags = " ".join([os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={count}"])
        result = subprocess.run([sys.executable, __file__, *argv], env={**os.environ, "XLA_FLAGS": flags.strip()},
                                capture_output=True, text=True, check=True)
        results.append({"devices": count, **json.loads(result.stdout)})
    base = results[0]["train_env_steps_per_second"]
    for result in results:
        result["train_over_first_count"] = round(result["train_env_steps_per_second"] / base, 3)
    keys = ("devices", "num_devices", "compile_seconds", "train_env_steps_per_second", "train_over_first_count",
            "final_return_mean", "peak_memory_mb")
    print(json.dumps([{k: r[k] for k in keys} for r in results], indent=2))


if __name__ == "__main__":
    main()
