"""Measure what the robust-env layer costs, and print one JSON object.

    python scripts/bench_robust_envs.py                                  # brax hopper, hopper-2d
    python scripts/bench_robust_envs.py --env-set walker-2d --num-envs 256
    python scripts/bench_robust_envs.py --skip-grid                      # only the per-step overhead

1. Env steps/s of `--num-envs` vmapped envs with a constant action, for the plain env, per-env physical
   parameters (every parameter of the set, rebuilt into the brax system every step), the same plus an
   adversary's forces, and domain randomization (compile excluded; best of `--repeats`, interleaved).
   Also XLA's flop count of one step of each, relative to the plain env (noise-free).
2. The time of one grid evaluation (`envs.make_grid_evaluator`) of a fixed random linear policy on the
   set's `--num-per-axis`^d grid x `--num-steps` steps: compile and run separately.
Machines are shared and noisy: compare the side-by-side figures of one run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/, algorithms/

import envs  # noqa: E402


def compiled_rollout(env, params, action, num_envs, num_steps):
    """A compiled rollout of `num_envs` envs, each with its own copy of `params`, all taking `action`."""
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs,) + jnp.shape(x)), params)

    @jax.jit
    def rollout(key):
        obs, state = jax.vmap(env.reset)(jax.random.split(key, num_envs), batch)

        def body(carry, key):
            state, total = carry
            out = jax.vmap(env.step, in_axes=(0, 0, None, 0))(jax.random.split(key, num_envs), state, action, batch)
            return (out[1], total + out[2]), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.zeros(num_envs)), jax.random.split(key, num_steps))
        return total

    jax.block_until_ready(rollout(jax.random.PRNGKey(0)))
    return rollout


def step_flops(env, params, action, num_envs):
    """XLA's count of floating-point operations of one vmapped step of `num_envs` envs: unlike a time,
    it does not depend on what else the machine is doing."""
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_envs,) + jnp.shape(x)), params)
    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), num_envs), batch)
    step = jax.jit(lambda state, key: jax.vmap(env.step, in_axes=(0, 0, None, 0))(
        jax.random.split(key, num_envs), state, action, batch))
    cost = step.lower(state, jax.random.PRNGKey(1)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def best_steps_per_second(rollouts: dict, env_steps: int, repeats: int) -> dict:
    """Env steps/s of each rollout, best of `repeats`, the variants interleaved so that a busy moment of
    a shared machine does not favour one of them."""
    best = {name: float("inf") for name in rollouts}
    for repeat in range(repeats):
        for name, rollout in rollouts.items():
            start = time.perf_counter()
            jax.block_until_ready(rollout(jax.random.PRNGKey(repeat + 1)))
            best[name] = min(best[name], time.perf_counter() - start)
    return {f"{name}_steps_per_second": round(env_steps / seconds) for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-set", default="hopper-2d", help="an uncertainty set (envs.UNCERTAINTY_SETS)")
    parser.add_argument("--backend", default="generalized")
    parser.add_argument("--num-envs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200, help="steps of the per-step measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-per-axis", type=int, default=10)
    parser.add_argument("--num-steps", type=int, default=1000, help="episode length of the grid evaluation")
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args()

    uset = envs.uncertainty_set(args.env_set)
    kwargs = {"backend": args.backend} if uset.env_id.startswith("brax/") else {}
    env, params = envs.make(uset.env_id, **kwargs)
    action = jnp.zeros(env.action_space(params).shape)
    middle = uset.from_normalized(jnp.full(uset.dim, 0.5))
    report = {"env_set": uset.name, "env_id": uset.env_id, "backend": kwargs.get("backend"), "num_envs": args.num_envs,
              "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)"}

    flops = {}

    def build(env, params, action=action):
        flops[len(flops)] = step_flops(env, params, action, args.num_envs)
        return compiled_rollout(env, params, action, args.num_envs, args.steps)

    rollouts = {"plain": build(env, params), "parameterized": build(env, uset.apply(env, params, middle))}
    if uset.env_id in envs.DEFAULT_ADVERSARY:
        two_player = envs.AdversarialForces(env)
        force = jnp.full(two_player.adversary_action_dim, 0.5)
        rollouts["parameterized_forced"] = build(two_player, uset.apply(env, params, middle), (action, force))
    rollouts["domain_randomization"] = build(envs.DomainRandomization(env, uset), params)
    report.update(best_steps_per_second(rollouts, args.num_envs * args.steps, args.repeats))
    report.update({f"{name}_flops_vs_plain": round(flops[i] / flops[0], 4) for i, name in enumerate(rollouts)})

    if not args.skip_grid:
        obs_size = env.observation_space(params).shape[0]
        weights = 0.1 * jax.random.normal(jax.random.PRNGKey(0), action.shape + (obs_size,))
        policy = lambda w, obs: jnp.tanh(w @ obs)  # noqa: E731
        evaluate = envs.make_grid_evaluator(env, params, uset, policy, args.num_per_axis, args.num_steps)
        start = time.perf_counter()
        jax.block_until_ready(evaluate(weights, jax.random.PRNGKey(0)))
        first = time.perf_counter() - start
        start = time.perf_counter()
        result = jax.block_until_ready(evaluate(weights, jax.random.PRNGKey(1)))
        again = time.perf_counter() - start
        models = args.num_per_axis ** uset.dim
        report.update(
            grid_models=models, grid_steps_per_model=args.num_steps, grid_compile_seconds=round(first - again, 1),
            grid_run_seconds=round(again, 3), grid_env_steps_per_second=round(models * args.num_steps / again),
            grid_worst=round(float(result.worst), 2), grid_average=round(float(result.average), 2),
        )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
