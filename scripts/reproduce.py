"""Reproduce one of the papers' figures with one command: train every run it needs, then plot it.

    python scripts/reproduce.py pqn-cartpole                     # CPU scale (default), default seeds
    python scripts/reproduce.py pqn-minatar --scale full --seeds 8 --out results/
    python scripts/reproduce.py --list                           # the registry, with each figure's runs

A figure is a list of runs, each one call of an algorithm file (`python algorithms/<name>.py ...`, in a
subprocess, so one crash or one process's memory does not take the others with it) with all seeds vmapped
into one program. `--scale cpu` is the paper's setting shortened to finish in under ~30 minutes on a
2-core CPU (the figure says so); `--scale full` is the paper's budget, for a GPU; `--scale paper` is the
paper's budget with the seeds that fit a CPU (stream AC on brax: 4; PQN and stream Q on MinAtar: 2; the
others as full). Output:

    DIR/<figure>/<scale>/<run>/          the algorithm's run directory (config.json, metrics_seed<i>.csv, summary.json)
    DIR/<figure>/<scale>/<figure>.png    the figure (scripts/plot.py), labelled with algorithm, env, seeds, steps, scale
    DIR/<figure>/<scale>/<run>/curve_<key>.csv   what the figure draws of a run (a few KB): with the run's
                                         summary.json and config.json it redraws the figure without the run's
                                         other files (results/paper/ keeps only these)

Runs resume: a run whose summary.json already holds at least the requested number of seeds is not rerun,
so rerunning a figure only trains what is missing (or only replots). Registering a figure is one
`Figure(...)` entry in REGISTRY below. A run that was killed part-way continues from its last saved state
(the algorithm file's `--resume RUN_DIR`) instead of starting again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

SCALES = ("tiny", "cpu", "paper", "full")  # tiny: a few hundred steps, for the tests (hidden from --help)
MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


@dataclasses.dataclass(frozen=True)
class Run:
    """One call of an algorithm file; its seeds come from the figure."""

    name: str  # run directory name inside DIR/<figure>/<scale>/
    algorithm: str  # module in algorithms/
    args: tuple[str, ...]  # flags besides --num-seeds, --seed, --run-dir, --quiet
    env: str  # environment label on the figure
    label: str = ""  # variant label on the figure (curves of one panel, heatmap titles)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A paper's setting for one algorithm family, at three scales."""

    name: str
    algorithm: str  # algorithms/<algorithm>.py must exist
    title: str
    kind: str  # plot.py layout: curves, horizon-heatmap or robustness
    runs: Callable[[str], list[Run]]  # scale -> runs
    seeds: dict[str, int]  # default seeds per scale
    steps: dict[str, str]  # per-seed budget per scale, as written on the figure ("500k steps")
    curve_key: str = "episode_return"  # metrics column plotted against env_steps
    note: dict[str, str] = dataclasses.field(default_factory=dict)  # per scale: what differs from the paper
    reference: dict[str, tuple[float, str]] = dataclasses.field(default_factory=dict)  # env -> (value, source),
    # a dashed line on that env's panel (numbers from the papers / reference implementations)

    def __post_init__(self):  # `paper` is the full scale's budget: its seeds and labels unless given
        for table in (self.seeds, self.steps, self.note):
            if "full" in table:
                table.setdefault("paper", table["full"])


def _pick(scale: str, tiny, cpu, full):
    """The value for a scale; `paper` runs the full scale's runs (the paper's budget) with fewer seeds."""
    return {"tiny": tiny, "cpu": cpu, "paper": full, "full": full}[scale]


# ----------------------------------------------------------------------------------------------------
# REGISTRY: one function per figure returning its runs at a scale


def pqn_cartpole(scale: str) -> list[Run]:
    steps = _pick(scale, 8192, 500_000, 500_000)
    return [Run("pqn", "pqn", ("--preset", "cartpole", "--total-timesteps", str(steps), "--num-evals",
                                str(_pick(scale, 2, 20, 20))), "CartPole-v1", "PQN")]


def pqn_minatar(scale: str) -> list[Run]:
    games = _pick(scale, MINATAR_GAMES[1:2], MINATAR_GAMES, MINATAR_GAMES)
    steps = _pick(scale, 8192, 1_000_000, 10_000_000)
    # CPU: 32 of the authors' 128 greedy test envs (at 1e6 steps, 128 envs x 1000-2500 steps x 20 evaluations
    # would cost more than training)
    evals = _pick(scale, ("--num-evals", "2", "--num-eval-envs", "8"), ("--num-eval-envs", "32"), ())
    return [Run(game, "pqn", ("--preset", "minatar", "--env-id", f"{game}-MinAtar", "--total-timesteps", str(steps),
                              *evals), f"{game}-MinAtar", "PQN")
            for game in games]


NORMALIZATIONS = {  # run-name suffix -> (pqn.py flags, label): the paper's ablation (NORM_TYPE, NORM_INPUT)
    "layer": ((), "LayerNorm"),
    "batch": (("--norm", "batch"), "BatchNorm"),
    "none": (("--norm", "none"), "no norm"),
    "input": (("--norm-input",), "LayerNorm + input BatchNorm"),
}


def pqn_normalization(scale: str) -> list[Run]:
    """Layer vs batch vs no normalization (and input BatchNorm) on CartPole and SpaceInvaders, each with its
    preset. CPU: CartPole at the paper's budget; SpaceInvaders at 2.5e5 of its 1e7 steps without the
    input-BatchNorm variant, evaluated every 10% on 32 envs (the authors' 20 x 128 greedy test runs of 1000
    steps would cost more than training at that budget)."""
    tiny = ("--num-evals", "2", "--num-eval-envs", "8") if scale == "tiny" else ()
    cartpole = ("--preset", "cartpole", "--total-timesteps", str(_pick(scale, 8192, 500_000, 500_000)), *tiny)
    invaders = ("--preset", "minatar", "--env-id", "SpaceInvaders-MinAtar",
                "--total-timesteps", str(_pick(scale, 8192, 250_000, 10_000_000)),
                *_pick(scale, tiny, ("--num-evals", "10", "--num-eval-envs", "32"), ()))
    return [Run(f"{name}_{variant}", "pqn", (*args, *NORMALIZATIONS[variant][0]), env, NORMALIZATIONS[variant][1])
            for name, env, args, variants in (
                ("cartpole", "CartPole-v1", cartpole, _pick(scale, ("layer", "batch"), NORMALIZATIONS, NORMALIZATIONS)),
                ("spaceinvaders", "SpaceInvaders-MinAtar", invaders,
                 _pick(scale, ("layer",), ("layer", "batch", "none"), NORMALIZATIONS)))
            for variant in variants]


def sac_brax(scale: str) -> list[Run]:
    if scale in ("paper", "full"):
        return [Run(env, "sac", ("--preset", f"brax-{env}"), f"brax/{env}", "SAC")
                for env in ("hopper", "walker2d", "halfcheetah")]
    # CPU: the brax task SAC learns within minutes on 2 cores; locomotion needs millions of updates
    steps = _pick(scale, 1024, 50_000, None)
    extra = ("--learning-starts", "256", "--num-evals", "2") if scale == "tiny" else ()
    return [Run("inverted_pendulum", "sac", ("--preset", "brax-inverted-pendulum", "--total-timesteps", str(steps),
                                             *extra), "brax/inverted_pendulum", "SAC")]


def stream_ac_brax(scale: str) -> list[Run]:
    envs_ = _pick(scale, ("hopper",), ("hopper",), ("hopper", "walker2d", "halfcheetah"))
    steps = _pick(scale, 500, 100_000, 2_000_000)
    rows = ("--num-log-rows", "10") if scale == "tiny" else ()
    return [Run(env, "stream_x", ("--preset", f"brax-{env}-ac", "--total-timesteps", str(steps), *rows),
                f"brax/{env}", "stream AC(λ)") for env in envs_]


def stream_q_minatar(scale: str) -> list[Run]:
    games = _pick(scale, MINATAR_GAMES[1:2], MINATAR_GAMES, MINATAR_GAMES)
    steps = _pick(scale, 500, 200_000, 5_000_000)  # full: the authors' stream_q_minatar.py (407dca7)
    rows = ("--num-log-rows", "10") if scale == "tiny" else ("--num-log-rows", "50")
    return [Run(game, "stream_x", ("--preset", "minatar-q", "--env-id", f"{game}-MinAtar", "--total-timesteps",
                                   str(steps), *rows), f"{game}-MinAtar", "stream Q(λ)") for game in games]


def sqirl_horizon(scale: str) -> list[Run]:
    locks = _pick(scale, (2,), (2, 4, 6), (2, 4, 6, 8))
    heads = _pick(scale, (1, 2), (1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6, 7, 8))
    episodes = _pick(scale, 64, 1024, 4096)
    # The horizon follows the lock; an evaluation after every iteration (the default) gives steps_to_solve.
    return [Run(f"lock{n}_k{k}", "sqirl", ("--preset", "lock", "--env-id", f"CombinationLock-H{n}",
                                           "--num-heads", str(k), "--episodes-per-iteration", str(episodes),
                                           "--total-timesteps", str(episodes * n * n)),
                f"CombinationLock-H{n}", f"k={k}") for n in locks for k in heads]


# BRIDGE's MiniGrid MDPs with an exact analysis (envs/minigrid.py, docs/environments.md), by effective horizon.
# CPU: the ten whose simple bound is at most 17, at a 100k-step cap; full: every enumerated one at BRIDGE's 5M.
BRIDGE_CPU = ("Empty-5x5", "Empty-Random-5x5", "Empty-6x6", "MultiRoom-N2-S4", "LavaGapS5", "Empty-8x8",
              "LavaGapS6", "DoorKey-5x5", "KeyCorridorS3R1", "Unlock")
BRIDGE_FULL = BRIDGE_CPU + ("Empty-Random-6x6", "Empty-16x16", "DoorKey-6x6", "DoorKey-8x8", "LavaGapS7",
                            "SimpleCrossingS9N1", "SimpleCrossingS9N2", "SimpleCrossingS9N3", "SimpleCrossingS11N5",
                            "LavaCrossingS9N1", "LavaCrossingS9N2", "LavaCrossingS9N3", "LavaCrossingS11N5",
                            "DistShift1", "DistShift2", "FourRooms", "UnlockPickup", "KeyCorridorS3R2",
                            "KeyCorridorS3R3")


def sqirl_bridge(scale: str) -> list[Run]:
    """SQIRL and PQN on BRIDGE's MiniGrid MDPs: env steps until the greedy policy is optimal (return 1), capped.
    SQIRL: BRIDGE's horizon 100 and γ = 1, k = 1 (every MDP here is 1-QVI-solvable), m = 64, the last 2
    iterations replayed, an evaluation after every iteration. PQN: the authors' CartPole settings; a greedy
    evaluation every 1/25 of the run. One greedy env suffices: the MDPs and the greedy policies are deterministic."""
    mdps = _pick(scale, BRIDGE_CPU[:1], BRIDGE_CPU, BRIDGE_FULL)
    cap = _pick(scale, 3200, 100_000, 5_000_000)
    sqirl = ("--preset", "lock", "--horizon", "100", "--num-heads", "1", "--episodes-per-iteration",
             _pick(scale, "8", "64", "64"), "--replay-iterations", "2", "--solve-threshold", "1", "--num-eval-envs",
             "1", "--total-timesteps", str(cap))
    pqn = ("--preset", "cartpole", "--num-evals", "25", "--num-eval-envs", "1", "--total-timesteps", str(cap))
    if scale == "tiny":
        pqn += ("--num-envs", "8", "--num-steps", "16", "--num-evals", "2")
    return [Run(f"{mdp}_{name}", name, (*args, "--env-id", f"minigrid/{mdp}"), f"minigrid/{mdp}", label)
            for mdp in mdps for name, args, label in (("sqirl", sqirl, "SQIRL (k=1)"), ("pqn", pqn, "PQN"))]


def qarl_robustness(scale: str) -> list[Run]:
    if scale in ("paper", "full"):
        base = ("--preset", "brax-hopper")
        variants = (("self-paced", ()), ("linear", ("--curriculum", "linear")), ("none", ("--curriculum", "none")),
                    ("sac", ("--adversary", "off")))
    else:
        steps = _pick(scale, 1000, 50_000, None)
        base = ("--preset", "pendulum", "--total-timesteps", str(steps))
        if scale == "tiny":
            base += ("--learning-starts", "200", "--grid-points", "3", "--grid-episodes", "1", "--num-evals", "1",
                     "--hidden-size", "16", "--num-layers", "1", "--batch-size", "32")
        variants = (("self-paced", ()), ("sac", ("--adversary", "off")))
    env = "brax/hopper" if scale in ("paper", "full") else "Pendulum-v1"
    labels = {"self-paced": "QARL (self-paced)", "linear": "QARL (linear)", "none": "α_adv = 0",
              "sac": "SAC (no adversary)"}
    return [Run(name, "qarl", (*base, *extra), env, labels[name]) for name, extra in variants]


QARL_VARIANTS = {  # run-name suffix -> (qarl.py flags, label): the paper's comparison (their main.py --algorithm)
    "qarl": ((), "QARL (self-paced)"),
    "linear": (("--curriculum", "linear"), "QARL (linear)"),
    "rarl": (("--curriculum", "rarl"), "RARL"),
    "sac": (("--adversary", "off"), "SAC"),
}


def qarl_dmc(scale: str) -> list[Run]:
    """The paper's dm_control comparison on cartpole balance (and cheetah run at full scale), every variant with
    the same protagonist budget. CPU: 12 of the authors' 200 iterations (5 + 5 episodes of 500 steps each):
    QARL on dmc-cartpole ran 213 env steps/s with 5 seeds on the 2-core CPU, so 4 variants x 5 seeds x 12
    iterations take about 90 minutes.

    The CPU scale keeps the curricula's shape. The linear schedule already scales with the run (its target at
    2/3 of the iterations). The self-paced one is paced by its updates: the authors' (one per 30 episodes, 3
    iterations, KL <= 0.5 each) need 13 updates, 39 of their 200 iterations (20%), to bring k from 50 to the
    target 1 when the return bound holds; at 12 iterations, one update per iteration (--curriculum-batch 10)
    with KL <= 16 needs 3 (25%), so k ends near its target as theirs does rather than at 27 after 4 updates."""
    tasks = _pick(scale, ("cartpole",), ("cartpole",), ("cartpole", "cheetah"))
    env_ids = {"cartpole": "dmc/CartpoleBalance", "cheetah": "dmc/CheetahRun"}
    extra = _pick(scale, ("--total-timesteps", "500", "--phase-steps", "50", "--learning-starts", "100",
                          "--actor-starts", "200", "--batch-size", "32", "--hidden-size", "16", "--num-evals", "1",
                          "--grid-points", "3", "--final-eval-episodes", "2", "--curriculum-batch", "10"),
                  ("--total-timesteps", str(12 * 5 * 500), "--num-evals", "12", "--curriculum-batch", "10",
                   "--kl-bound", "16"), ())
    return [Run(f"{task}-{name}", "qarl", ("--preset", f"dmc-{task}", *extra, *flags), env_ids[task], label)
            for task in tasks for name, (flags, label) in QARL_VARIANTS.items()]


def iwocs_worst_case(scale: str) -> list[Run]:
    """One IWOCS run evaluates itself, its DR fallback and DR / nominal SAC baselines on the same grid."""
    if scale in ("paper", "full"):
        return [Run("hopper", "iwocs", ("--preset", "brax-hopper-2d"), "brax/hopper", "IWOCS")]
    args = ("--preset", "pendulum")
    if scale == "tiny":
        args += ("--total-timesteps", "1200", "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "16",
                 "--max-iterations", "1", "--cmaes-generations", "2", "--cmaes-population", "6",
                 "--search-episodes", "1", "--search-horizon", "200", "--eval-grid-per-axis", "3",
                 "--eval-episodes", "2", "--no-baselines")  # the test of the pipeline; test_iwocs trains baselines
    return [Run("pendulum", "iwocs", args, "Pendulum-v1", "IWOCS")]


def iwocs_inverted_pendulum(scale: str) -> list[Run]:
    """The paper's inverted pendulum (pole mass x cart mass), where it reports IWOCS's worst case at the maximum,
    1000, against DR's 57: IWOCS against its own DR fallback, DR SAC and nominal SAC on the 10x10 grid."""
    args = ("--preset", "brax-inverted-pendulum")
    if scale == "tiny":
        args += ("--total-timesteps", "2048", "--num-envs", "16", "--learning-starts", "256", "--batch-size", "32",
                 "--hidden-size", "16", "--updates-per-env-step", "0.125", "--max-iterations", "1",
                 "--cmaes-generations", "2", "--cmaes-population", "6", "--search-episodes", "1",
                 "--search-horizon", "100", "--eval-grid-per-axis", "3", "--eval-episodes", "2", "--no-baselines")
    elif scale == "cpu":  # every stage keeps its share (DR 40%, 3 iterations); fewer env steps and updates per step
        args += ("--total-timesteps", "80000", "--num-envs", "16", "--learning-starts", "2000", "--hidden-size", "128",
                 "--batch-size", "128", "--updates-per-env-step", "0.25")
    else:
        args += ("--total-timesteps", "4000000")  # the paper's budget for the 2-D sets
    return [Run("inverted_pendulum", "iwocs", args, "brax/inverted_pendulum", "IWOCS")]


REGISTRY: dict[str, Figure] = {f.name: f for f in [
    Figure("pqn-cartpole", "pqn", "PQN on CartPole-v1", "curves", pqn_cartpole,
           seeds={"tiny": 2, "cpu": 4, "full": 16},
           steps={"tiny": "8k steps", "cpu": "500k steps", "full": "500k steps"},
           curve_key="eval_return", note={"cpu": "the paper's full budget, which fits a CPU"},
           reference={"CartPole-v1": (500.0, "authors: 500 (4/4 seeds)")}),
    Figure("pqn-minatar", "pqn", "PQN on MinAtar", "curves", pqn_minatar,
           seeds={"tiny": 2, "cpu": 2, "paper": 2, "full": 8},
           steps={"tiny": "8k steps", "cpu": "1M steps", "full": "10M steps"},
           curve_key="eval_return", note={"cpu": "1M of the paper's 10M steps, 32 of its 128 greedy test envs"}),
    Figure("pqn-normalization", "pqn", "PQN: LayerNorm vs BatchNorm vs no normalization", "curves", pqn_normalization,
           seeds={"tiny": 2, "cpu": 4, "full": 16},
           steps={"tiny": "8k steps", "cpu": "500k (CartPole), 250k (SpaceInvaders) steps",
                  "full": "500k (CartPole), 10M (SpaceInvaders) steps"},
           curve_key="eval_return",
           note={"cpu": "CartPole: the paper's budget; SpaceInvaders: 2.5e5 of its 1e7 steps, no input-BatchNorm "
                        "variant, 32 greedy test envs every 10% (authors: 128 every 5%)"},
           reference={"CartPole-v1": (500.0, "authors (LayerNorm): 500, 4/4 seeds")}),
    Figure("sac-brax", "sac", "SAC on brax", "curves", sac_brax,
           seeds={"tiny": 2, "cpu": 2, "full": 5},
           steps={"tiny": "1k steps", "cpu": "50k steps", "full": "5M-7.9M steps"},
           curve_key="eval_return",
           note={"cpu": "inverted_pendulum in place of the locomotion tasks", "tiny": "inverted_pendulum"},
           reference={"brax/inverted_pendulum": (1000.0, "brax SAC: 1000 by ~30k steps"),
                      "brax/hopper": (2310.0, "CleanRL SAC, MuJoCo Hopper: 2310")}),
    Figure("stream-ac-brax", "stream_x", "stream AC(λ) on brax", "curves", stream_ac_brax,
           seeds={"tiny": 2, "cpu": 2, "paper": 4, "full": 8},
           steps={"tiny": "500 steps", "cpu": "100k steps", "full": "2M steps"},
           note={"cpu": "hopper only, 100k of the authors' 2M steps",
                 "paper": "the authors' stream_ac_continuous.py run (2M steps); the paper's numbers are after 20M"},
           reference={"brax/hopper": (2173.0, "paper, MuJoCo Hopper after 20M: 2173"),
                      "brax/walker2d": (4335.0, "paper, MuJoCo Walker2d after 20M: 4335")}),
    Figure("stream-q-minatar", "stream_x", "stream Q(λ) on MinAtar", "curves", stream_q_minatar,
           seeds={"tiny": 2, "cpu": 2, "paper": 2, "full": 8},
           steps={"tiny": "500 steps", "cpu": "200k steps", "full": "5M steps"},
           note={"cpu": "200k of the authors' 5M steps"}),
    Figure("sqirl-horizon", "sqirl", "SQIRL: k heads vs the lock's effective horizon n", "horizon-heatmap",
           sqirl_horizon, seeds={"tiny": 2, "cpu": 2, "full": 8},
           steps={"tiny": "64 episodes/iteration", "cpu": "1024 episodes/iteration", "full": "4096 episodes/iteration"},
           note={"cpu": "H6 needs about m = 4096 episodes per iteration (the full scale)"}),
    Figure("sqirl-bridge", "sqirl", "SQIRL and PQN on BRIDGE's MiniGrid MDPs: sample complexity vs effective horizon",
           "sample-complexity", sqirl_bridge, seeds={"tiny": 2, "cpu": 3, "full": 5},
           steps={"tiny": "3.2k steps", "cpu": "100k steps (cap)", "full": "5M steps (cap)"},
           note={"cpu": "the 10 MDPs with a simple bound <= 17, capped at 100k env steps (BRIDGE: 5M)"},
           # the authors' repository's consolidated_gorp_bounds.json, the only MiniGrid MDP of the paper's table
           # published there: its effective horizon (Appendix C bound) and GORP's sample-complexity bound
           reference={"minigrid/KeyCorridorS3R1": ((4.07, 14.64e6), "BRIDGE: H 4.07, GORP bound 14.6M steps")}),
    Figure("qarl-robustness", "qarl", "QARL vs SAC: return over a grid of models", "robustness", qarl_robustness,
           seeds={"tiny": 2, "cpu": 2, "full": 5}, steps={"tiny": "1k steps", "cpu": "50k steps", "full": "2M steps"},
           curve_key="eval_return", note={"cpu": "Pendulum-v1 (mass x length) in place of brax hopper"}),
    Figure("qarl-dmc", "qarl", "QARL vs linear, RARL and SAC on dm_control: nominal, adversary and grid returns",
           "robustness", qarl_dmc, seeds={"tiny": 2, "cpu": 5, "full": 5},
           steps={"tiny": "500 steps", "cpu": "30k steps", "full": "500k steps"},
           note={"cpu": "cartpole balance, 12 of the authors' 200 iterations (30k of their 500k protagonist steps)"}),
    Figure("iwocs-worst-case", "iwocs", "IWOCS vs domain randomization and nominal SAC: return over a grid of models",
           "robustness", iwocs_worst_case, seeds={"tiny": 2, "cpu": 2, "full": 5},
           steps={"tiny": "1.2k steps", "cpu": "40k steps", "full": "4M steps"},
           note={"cpu": "Pendulum-v1 (mass x length) in place of brax hopper; every method gets the same budget"}),
    Figure("iwocs-inverted-pendulum", "iwocs", "IWOCS vs its DR fallback, DR and nominal SAC on brax inverted pendulum",
           "robustness", iwocs_inverted_pendulum, seeds={"tiny": 2, "cpu": 3, "full": 10},
           steps={"tiny": "2k steps", "cpu": "80k steps", "full": "4M steps"},
           note={"cpu": "2% of the paper's 4M steps, 16 envs, 0.25 updates per env step; the paper's grid protocol"}),
]}



# ----------------------------------------------------------------------------------------------------
# RUNNING


def command(run: Run, seeds: int, run_dir: Path) -> list[str]:
    """The subprocess command of one run (from the repository root)."""
    return [sys.executable, str(REPO / "algorithms" / f"{run.algorithm}.py"), *run.args, "--num-seeds", str(seeds),
            "--seed", "0", "--run-dir", str(run_dir), "--quiet"]


def can_resume(run_dir: Path, seeds: int) -> bool:
    """True if run_dir holds a killed run of `seeds` seeds with a saved state to continue from."""
    config = run_dir / "config.json"
    return (config.exists() and any(run_dir.glob("resume.*"))
            and json.loads(config.read_text()).get("num_seeds") == seeds)


def is_done(run_dir: Path, seeds: int) -> bool:
    """True if run_dir holds a finished run with at least `seeds` seeds (resume)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    return int(summary.get("num_seeds", 0)) >= seeds and len(summary.get("final_return", [])) >= seeds


def train(figure: Figure, scale: str, seeds: int, out: Path, log=print) -> list[tuple[Run, Path]]:
    """Run every missing run of the figure; return (run, run_dir) for all of them."""
    done = []
    for run in figure.runs(scale):
        run_dir = out / run.name
        if is_done(run_dir, seeds):
            log(f"[{figure.name}] {run.name}: {seeds} seeds already in {run_dir}, not rerun")
        else:
            cmd = command(run, seeds, run_dir)
            if can_resume(run_dir, seeds):
                cmd = [*cmd[:2], "--resume", str(run_dir), "--quiet"]
            log(f"[{figure.name}] {run.name}: {' '.join(cmd[1:])}")
            start = time.time()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            result = subprocess.run(cmd, cwd=REPO, env=env)
            if result.returncode:
                raise SystemExit(f"[{figure.name}] {run.name} failed (exit {result.returncode}); its partial output "
                                 f"is in {run_dir}. Rerun the same command to retry: finished runs are kept.")
            log(f"[{figure.name}] {run.name}: done in {time.time() - start:.0f} s")
        done.append((run, run_dir))
    return done


def reproduce(name: str, scale: str = "cpu", seeds: int | None = None, out: str | Path = "results",
              log=print) -> Path | None:
    """Train what is missing and draw the figure; return its path (None if its algorithm file is missing)."""
    if name not in REGISTRY:
        raise SystemExit(f"Unknown figure {name!r}. Choose one of: {', '.join(REGISTRY)}.")
    figure = REGISTRY[name]
    if not (REPO / "algorithms" / f"{figure.algorithm}.py").exists():
        log(f"{name}: algorithms/{figure.algorithm}.py does not exist; skipped.")
        return None
    seeds = seeds or figure.seeds[scale]
    out_dir = Path(out) / name / scale
    start = time.time()
    runs = train(figure, scale, seeds, out_dir, log)
    import plot

    if figure.kind == "curves":  # what the figure draws of each run, small enough to keep (results/paper/)
        for _, run_dir in runs:
            if any(run_dir.glob("metrics_seed*.csv")):
                plot.write_curve(run_dir, figure.curve_key)
    path = plot.plot_figure(figure, scale, seeds, runs, out_dir / f"{name}.png")
    log(f"[{name}] figure: {path} ({time.time() - start:.0f} s)")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", nargs="?", help=f"one of: {', '.join(REGISTRY)}")
    parser.add_argument("--scale", choices=SCALES, default="cpu",
                        help="cpu: shortened for a 2-core CPU (< ~30 min); paper: the paper's budget with the "
                             "seeds that fit a CPU (hours); full: the paper's budget and seeds (GPU)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per run (default: the figure's, per scale)")
    parser.add_argument("--out", default="results", help="output directory (default results/)")
    parser.add_argument("--list", action="store_true", help="list the figures and their runs at --scale")
    args = parser.parse_args(argv)
    if args.list or not args.figure:
        for figure in REGISTRY.values():
            print(f"{figure.name}: {figure.title} ({args.scale}: {figure.seeds[args.scale]} seeds, "
                  f"{figure.steps[args.scale]} per seed)")
            for run in figure.runs(args.scale):
                print(f"    {run.name}: python algorithms/{run.algorithm}.py {' '.join(run.args)}")
        return
    reproduce(args.figure, args.scale, args.seeds, args.out)


if __name__ == "__main__":
    main()
