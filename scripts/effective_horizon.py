"""Does SQIRL succeed where deep RL (PQN) succeeds? The paper's correlation claim at this machine's scale.

    python scripts/effective_horizon.py                                   # the default env list, 2 seeds each
    python scripts/effective_horizon.py --envs CombinationLock-H3 CartPole-v1/horizon200 --total-timesteps 100000
    python scripts/effective_horizon.py --sqirl-num-heads 3 --out-dir results/k3
    python scripts/effective_horizon.py --exact                           # BRIDGE's MiniGrid MDPs, solved exactly
    python scripts/effective_horizon.py --exact --envs minigrid/DoorKey-5x5 CombinationLock-H3

Laidlaw et al. (2023) find that SQIRL (random exploration plus k steps of fitted-Q iteration) solves
roughly the environments PPO and DQN solve, and fails where they fail: both succeed when the effective
horizon is small. For every environment in the list this script trains SQIRL (algorithms/sqirl.py) and
PQN (algorithms/pqn.py) under the same env-step budget (`--total-timesteps`, per seed; SQIRL stops after
`horizon` iterations, or at the first iteration that starts with the budget spent, so it may use less or
up to one iteration's episodes more) and scores each algorithm's final greedy return, averaged over seeds:

    normalized score = (return - random return) / (best return - random return)
    success          = normalized score >= --success-fraction (0.8)

`random return` is a uniformly random policy's return on the same capped env (measured here over 1024
episodes). `best return` is the env's optimum where it is known (the locks: by construction; CartPole
capped at H: H; Catch: 1; MountainCar-v0 and Acrobot-v1: gym's solved thresholds -110 and -100), else the
best final return either algorithm reached (marked "observed": the better algorithm scores 1 by
definition there); an env where neither beats random is a failure for both. Agreement is the fraction of envs where both succeed
or both fail, with the correlation of the normalized scores.

Each algorithm gets its preset for the env's kind (SQIRL: `lock` for the locks with horizon n, `minatar`
for MinAtar ids, else `cartpole`; PQN: `minatar` for MinAtar ids, else `cartpole`), the same env id, and
for MinAtar the same sticky actions (0.25). Long episodes need a cap in the id: `<id>/horizon<H>` (the
horizon SQIRL learns one policy for each step of). Writes, under --out-dir: effective_horizon.csv,
effective_horizon.md (the table), effective_horizon.png (normalized scores per env, and SQIRL against PQN),
rows.json (the raw returns, for `--from-rows`) and runs/ (every run's own outputs).

`--exact` trains nothing: it enumerates each (deterministic) env's MDP within its horizon and computes, as
the paper's authors do (envs/tabular.py), its optimal and random returns, the smallest k for which it is
k-QVI-solvable, its effective planning window and the effective horizon's Theorem 5.4 bound; it writes
exact.csv and exact.md under --out-dir. Its default env list is every `minigrid/<name>` id (BRIDGE's
MiniGrid MDPs, envs/minigrid.py); an env with more than --max-states states is listed as too large.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's runner.py, runlog.py, envs/, algorithms/

import envs  # noqa: E402
from envs import tabular  # noqa: E402
import runner  # noqa: E402
import runlog  # noqa: E402
from algorithms import pqn, sqirl  # noqa: E402

DEFAULT_ENVS = [
    "CombinationLock-H2",
    "CombinationLock-H4",
    "CombinationLock-H6",
    "Catch-bsuite/horizon10",
    "CartPole-v1/horizon200",
    "MountainCar-v0/horizon200",
    "Breakout-MinAtar/horizon100",
]
MINATAR_STICKY_ACTIONS = 0.25


def horizon_of(env_id: str) -> int:
    """The horizon SQIRL learns a policy for each step of: the /horizon suffix, a lock's length, or the
    env's own time limit if that is short."""
    base, horizon = envs.registry.split_horizon(env_id)
    if horizon is not None:
        return horizon
    env, params = envs.make(base)
    if isinstance(env, envs.CombinationLock):
        return env.length
    limit = int(params.max_steps_in_episode)
    if limit > 500:
        raise SystemExit(f"{env_id} runs up to {limit} steps: give it a horizon, e.g. {env_id}/horizon200.")
    return limit


def known_best_return(env_id: str) -> float | None:
    """The optimum where it is known without training: None otherwise."""
    base, horizon = envs.registry.split_horizon(env_id)
    env, params = envs.make(base)
    if isinstance(env, envs.CombinationLock):
        return env.optimal_return(params)
    if base == "CartPole-v1":
        return float(min(horizon or 500, 500))  # +1 per step kept up
    if base == "Catch-bsuite":
        return 1.0  # one ball, caught
    if base == "MountainCar-v0" and (horizon or 200) >= 200:
        return -110.0  # gym's reward threshold for solving MountainCar-v0 (the optimum is near -100)
    if base == "Acrobot-v1" and (horizon or 500) >= 200:
        return -100.0  # gym's reward threshold for solving Acrobot-v1
    return None


def random_return(env, env_params, horizon: int, num_episodes: int = 1024, seed: int = 0) -> float:
    """Mean return of the first episode of `num_episodes` envs under a uniformly random policy."""
    num_actions = env.action_space(env_params).n

    def rollout(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, num_episodes), env_params)

        def step(carry, key):
            state, total, alive = carry
            key_action, key_step = jax.random.split(key)
            action = jax.random.randint(key_action, (num_episodes,), 0, num_actions)
            _, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(key_step, num_episodes), state, action, env_params)
            return (state, total + jnp.where(alive, reward, 0.0), alive & ~(terminated | truncated)), None

        carry = (state, jnp.zeros(num_episodes), jnp.ones(num_episodes, bool))
        (_, total, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, horizon))
        return total.mean()

    return float(jax.jit(rollout)(jax.random.PRNGKey(seed)))


def run_pair(env_id: str, args, run_root: Path) -> dict:
    """Train SQIRL and PQN on env_id under the same budget; return the row of the table."""
    base, _ = envs.registry.split_horizon(env_id)
    minatar = base.endswith("-MinAtar")
    horizon = horizon_of(env_id)
    sticky = ["--sticky-action-prob", str(MINATAR_STICKY_ACTIONS)] if minatar else []
    common = ["--env-id", env_id, "--total-timesteps", str(args.total_timesteps), "--num-seeds",
              str(args.num_seeds), "--seed", str(args.seed), "--quiet", *sticky]
    name = env_id.replace("/", "-")
    is_lock = base.startswith("CombinationLock")
    sqirl_flags = ["--preset", "lock" if is_lock else "minatar" if minatar else "cartpole", "--horizon", str(horizon)]
    if args.sqirl_num_heads is not None:
        sqirl_flags += ["--num-heads", str(args.sqirl_num_heads)]
    sqirl_summary = sqirl.main([*sqirl_flags, *common, "--run-dir", str(run_root / f"sqirl_{name}")])
    pqn_summary = pqn.main(["--preset", "minatar" if minatar else "cartpole", *common, "--run-dir",
                            str(run_root / f"pqn_{name}")])
    config = runner.parse_config(sqirl.Config, sqirl.PRESETS, [*sqirl_flags, *common])
    env, env_params, _ = sqirl.make_env(config)  # the same capped env, with sticky actions where used
    row = {
        "env_id": env_id,
        "horizon": horizon,
        "sqirl_num_heads": config.num_heads,
        "random_return": random_return(env, env_params, horizon, seed=args.seed),
        "known_best": known_best_return(env_id),
        "sqirl_returns": sqirl_summary["final_return"],
        "pqn_returns": pqn_summary["final_return"],
        "sqirl_env_steps": sqirl_summary["env_steps"],
        "pqn_env_steps": pqn_summary["env_steps"],
        "sqirl_seconds": sqirl_summary["compile_seconds"] + sqirl_summary["train_seconds"],
        "pqn_seconds": pqn_summary["compile_seconds"] + pqn_summary["train_seconds"],
    }
    print(json.dumps({k: v for k, v in row.items()}), flush=True)
    return row


def score(rows: list[dict], success_fraction: float) -> list[dict]:
    """Add best return, normalized scores and success flags to each row."""
    for row in rows:
        sqirl_mean, pqn_mean = float(np.mean(row["sqirl_returns"])), float(np.mean(row["pqn_returns"]))
        observed = max(sqirl_mean, pqn_mean)
        best = row["known_best"] if row["known_best"] is not None else observed
        gap = best - row["random_return"]
        for name, mean in (("sqirl", sqirl_mean), ("pqn", pqn_mean)):
            normalized = (mean - row["random_return"]) / gap if gap > 1e-6 else 0.0
            row[f"{name}_mean"] = mean
            row[f"{name}_normalized"] = normalized
            row[f"{name}_success"] = bool(gap > 1e-6 and normalized >= success_fraction)
        row["best_return"] = best
        row["best_source"] = "known" if row["known_best"] is not None else "observed"
    return rows


def agreement(rows: list[dict]) -> tuple[float, float]:
    """Fraction of envs where both succeed or both fail; Pearson correlation of the normalized scores."""
    same = np.mean([r["sqirl_success"] == r["pqn_success"] for r in rows])
    a = np.array([r["sqirl_normalized"] for r in rows])
    b = np.array([r["pqn_normalized"] for r in rows])
    correlation = float(np.corrcoef(a, b)[0, 1]) if len(rows) > 1 and a.std() > 0 and b.std() > 0 else math.nan
    return float(same), correlation


def write_outputs(rows: list[dict], args, out_dir: Path) -> str:
    same, correlation = agreement(rows)
    columns = ["env_id", "horizon", "sqirl_num_heads", "random_return", "best_return", "best_source", "sqirl_mean",
               "pqn_mean", "sqirl_normalized", "pqn_normalized", "sqirl_success", "pqn_success", "sqirl_env_steps",
               "pqn_env_steps", "sqirl_returns", "pqn_returns"]
    with open(out_dir / "effective_horizon.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def mark(ok: bool) -> str:
        return "yes" if ok else "no"

    lines = [
        f"Budget {args.total_timesteps:,} env steps per seed, {args.num_seeds} seed(s); success = normalized score "
        f">= {args.success_fraction} (score = (return - random) / (best - random), returns averaged over seeds).",
        "",
        "| env | H | k | random | best | SQIRL return | PQN return | SQIRL score | PQN score | SQIRL solves | PQN solves | SQIRL steps used |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env_id']} | {r['horizon']} | {r['sqirl_num_heads']} | {r['random_return']:.3g} | "
            f"{r['best_return']:.3g}{'' if r['best_source'] == 'known' else ' (observed)'} | {r['sqirl_mean']:.3g} | "
            f"{r['pqn_mean']:.3g} | {r['sqirl_normalized']:.2f} | {r['pqn_normalized']:.2f} | "
            f"{mark(r['sqirl_success'])} | {mark(r['pqn_success'])} | {r['sqirl_env_steps']:,} |")
    lines += ["", f"Agreement: {same:.0%} of {len(rows)} envs (both solve or both fail); correlation of the "
                  f"normalized scores: {correlation:.2f}."]
    table = "\n".join(lines)
    (out_dir / "effective_horizon.md").write_text(table + "\n")
    plot(rows, args, out_dir / "effective_horizon.png", same, correlation)
    return table


def plot(rows: list[dict], args, path: Path, same: float, correlation: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["env_id"].replace("/horizon", "/H") for r in rows]
    sqirl_scores = np.array([r["sqirl_normalized"] for r in rows])
    pqn_scores = np.array([r["pqn_normalized"] for r in rows])
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(rows))
    bars.bar(x - 0.2, sqirl_scores, 0.4, label="SQIRL", color="tab:blue")
    bars.bar(x + 0.2, pqn_scores, 0.4, label="PQN", color="tab:orange")
    bars.axhline(args.success_fraction, ls="--", color="gray", lw=1, label=f"success ({args.success_fraction})")
    bars.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    bars.set(ylabel="normalized score (0 random, 1 best)",
             title=f"{args.total_timesteps:,} env steps per seed, {args.num_seeds} seed(s)")
    bars.set_ylim(top=max(1.3, float(np.max([sqirl_scores, pqn_scores])) + 0.2))
    bars.legend(fontsize=8, loc="upper right", ncol=3)
    bars.grid(axis="y", alpha=0.3)
    scatter.scatter(pqn_scores, sqirl_scores, color="tab:purple")
    for name, px, sy in zip(names, pqn_scores, sqirl_scores):
        scatter.annotate(name, (px, sy), fontsize=6, xytext=(3, 3), textcoords="offset points")
    low = min(-0.1, float(np.min([sqirl_scores, pqn_scores])) - 0.1)
    high = max(1.1, float(np.max([sqirl_scores, pqn_scores])) + 0.1)
    scatter.plot([low, high], [low, high], color="gray", lw=0.8)
    scatter.axhline(args.success_fraction, ls="--", color="gray", lw=0.8)
    scatter.axvline(args.success_fraction, ls="--", color="gray", lw=0.8)
    scatter.set(xlim=(low, high), ylim=(low, high), xlabel="PQN normalized score", ylabel="SQIRL normalized score",
                title=f"agreement {same:.0%}, correlation {correlation:.2f}")
    scatter.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def exact_rows(env_ids: list[str], max_states: int) -> list[dict]:
    """Enumerate and solve each env exactly (envs/tabular.py); one row per env, printed as it finishes."""
    rows = []
    for env_id in env_ids:
        env, params = envs.make(env_id)
        row = {"env_id": env_id, "horizon": int(params.max_steps_in_episode), "num_actions": env.num_actions}
        try:
            mdp = tabular.enumerate_mdp(env, params, max_states=max_states)
        except ValueError as error:
            row["note"] = str(error)
        else:
            facts = tabular.analyze(mdp.transitions, mdp.rewards, row["horizon"])
            row.update(num_states=facts.num_states, optimal_return=facts.optimal_return,
                       random_return=facts.random_return, min_k=facts.min_k, epw=facts.epw,
                       effective_horizon_simple=round(facts.effective_horizon_simple, 2))
        print(row, flush=True)
        rows.append(row)
    return rows


def write_exact(rows: list[dict], out_dir: Path) -> str:
    keys = ["env_id", "horizon", "num_actions", "num_states", "optimal_return", "random_return", "min_k", "epw",
            "effective_horizon_simple", "note"]
    with open(out_dir / "exact.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| env | T | A | states | optimal return | random return | min k | EPW | effective horizon (Thm 5.4) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['env_id']} | {r['horizon']} | {r['num_actions']} | > cap | | | | | |")
        else:
            lines.append(f"| {r['env_id']} | {r['horizon']} | {r['num_actions']} | {r['num_states']} | "
                         f"{r['optimal_return']:g} | {r['random_return']:.3g} | {r['min_k']} | {r['epw']} | "
                         f"{r['effective_horizon_simple']:.2f} |")
    table = "\n".join(lines)
    (out_dir / "exact.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="env ids (long episodes need /horizon<H>)")
    parser.add_argument("--total-timesteps", type=int, default=500_000, help="env-step budget per seed, both algorithms")
    parser.add_argument("--num-seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--success-fraction", type=float, default=0.8)
    parser.add_argument("--sqirl-num-heads", type=int, default=None, help="k for every env (default: the preset's)")
    parser.add_argument("--out-dir", default="results/effective_horizon")
    parser.add_argument("--from-rows", default=None, help="a rows.json of an earlier run: score it, train nothing")
    parser.add_argument("--exact", action="store_true",
                        help="solve each env's enumerated MDP exactly (default envs: BRIDGE's MiniGrid MDPs)")
    parser.add_argument("--max-states", type=int, default=200_000, help="--exact: the largest MDP to enumerate")
    args = parser.parse_args()
    if args.exact:
        env_ids = args.envs if args.envs is not DEFAULT_ENVS else envs.minigrid_ids()
        for env_id in env_ids:
            envs.check_env_id(env_id)
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        print(write_exact(exact_rows(env_ids, args.max_states), out_dir))
        return
    for env_id in [] if args.from_rows else args.envs:  # fail fast, before hours of training, on a bad id or a missing horizon cap
        envs.check_env_id(env_id)
        horizon_of(env_id)
    out_dir = Path(args.out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    if args.from_rows:  # score earlier runs again (another --success-fraction, a fixed best return)
        saved = json.loads(Path(args.from_rows).read_text())
        rows, args.total_timesteps, args.num_seeds = saved["rows"], saved["total_timesteps"], saved["num_seeds"]
        for row in rows:
            row["known_best"] = known_best_return(row["env_id"])
    else:
        rows = [run_pair(env_id, args, out_dir / "runs") for env_id in args.envs]
        runlog.write_json(out_dir / "rows.json", {"total_timesteps": args.total_timesteps,
                                                  "num_seeds": args.num_seeds, "rows": rows})
    rows = score(rows, args.success_fraction)
    print(write_outputs(rows, args, out_dir))
    print(f"table: {out_dir / 'effective_horizon.md'}  csv: {out_dir / 'effective_horizon.csv'}  "
          f"figure: {out_dir / 'effective_horizon.png'}")


if __name__ == "__main__":
    main()
