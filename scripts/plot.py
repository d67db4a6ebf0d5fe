"""Figures across seeds: interquartile-mean curves with 95% stratified bootstrap intervals, bars, heatmaps.

    python scripts/plot.py RUN_DIR [RUN_DIR ...] --key eval_return --out curve.png   # curves of finished runs

scripts/reproduce.py calls `plot_figure` for a registered figure. Aggregation follows rliable (Agarwal et
al. 2021): the interquartile mean (IQM, the mean of the middle 50% of the runs: `rliable.metrics.aggregate_iqm`)
and a percentile interval from a stratified bootstrap (runs resampled with replacement within each task,
2,000 resamples). The bootstrap is written here, vectorized over curve points, because rliable 1.2's
`library.get_interval_estimates` fails with the current arch/pandas releases (arch 7.2 with pandas 3 on
import, arch 8 on its `random_state` argument); it resamples as rliable's `StratifiedBootstrap` does.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

MAX_POINTS = 50  # curve points after binning the logged rows


# ----------------------------------------------------------------------------------------------------
# AGGREGATES


def iqm(scores: np.ndarray) -> np.ndarray:
    """IQM over runs and tasks (axes 0 and 1) of scores [runs, tasks, ...]: one value per remaining index."""
    scores = np.asarray(scores, dtype=float)
    return stats.trim_mean(scores.reshape(scores.shape[0] * scores.shape[1], -1), 0.25, axis=0).reshape(
        scores.shape[2:])


def stratified_bootstrap_ci(scores: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the IQM of scores [runs, tasks, ...], runs resampled within each task."""
    scores = np.asarray(scores, dtype=float)
    runs, tasks = scores.shape[:2]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    samples = scores[idx, np.arange(tasks)[None, None, :]]  # [reps, runs, tasks, ...]
    flat = samples.reshape(reps, runs * tasks, -1)
    estimates = stats.trim_mean(flat, 0.25, axis=1).reshape((reps,) + scores.shape[2:])
    tail = 100 * (1 - confidence) / 2
    return np.percentile(estimates, tail, axis=0), np.percentile(estimates, 100 - tail, axis=0)


# ----------------------------------------------------------------------------------------------------
# READING RUNS


def read_metrics(run_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps [rows], values [seeds, rows]) from a run's metrics_seed<i>.csv files, or, where only the
    figure's data was kept (results/paper/), from its curve_<key>.csv (`write_curve`)."""
    paths = sorted(Path(run_dir).glob("metrics_seed*.csv"), key=lambda p: int(p.stem.removeprefix("metrics_seed")))
    if not paths and (Path(run_dir) / f"curve_{key}.csv").exists():
        table = np.genfromtxt(Path(run_dir) / f"curve_{key}.csv", delimiter=",", skip_header=1, ndmin=2)
        return table[:, 0], table[:, 1:].T
    steps, values = None, []
    for path in paths:
        try:
            text = path.read_text()
            rows = list(csv.DictReader(text.splitlines()))
            if not text.endswith("\n") or any(None in row or None in row.values() for row in rows):
                raise ValueError("cut short: its last row is not whole")
            seed_steps = np.array([float(r["env_steps"]) for r in rows])
            values.append([float(r[key]) if r.get(key, "") not in ("", "nan") else np.nan for r in rows])
            if steps is not None and not np.array_equal(seed_steps, steps):
                raise ValueError(f"its rows are not those of {paths[0].name}")
        except (TypeError, ValueError, KeyError, UnicodeDecodeError) as error:  # a row cut short, a column missing
            again = (f"`python algorithms/<file>.py --resume {path.parent}` writes it again from the run's last "
                     f"saved state" if (path.parent / "resume.npz").exists() else "train the run again")
            raise SystemExit(f"error: {path} is damaged ({type(error).__name__}: {error}); nothing was changed. "
                             f"{again[0].upper()}{again[1:]}.") from None
        steps = seed_steps
    return steps, np.array(values)


def binned_curve(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each seed over at most MAX_POINTS consecutive chunks of rows (NaN rows ignored); chunks where
    some seed has no value are dropped. Returns (env_steps [points], values [seeds, points])."""
    chunks = np.array_split(np.arange(len(steps)), min(MAX_POINTS, len(steps)))
    xs, ys = [], []
    for chunk in chunks:
        block = values[:, chunk]
        if np.isfinite(block).any(axis=1).all():
            xs.append(steps[chunk[-1]])
            ys.append(np.nanmean(np.where(np.isfinite(block), block, np.nan), axis=1))
    return np.array(xs), np.array(ys).T.reshape(values.shape[0], len(xs))


def write_curve(run_dir: Path, key: str) -> Path:
    """The curve a figure draws of a run, binned as plotted (env_steps, then one column per seed), as
    run_dir/curve_<key>.csv: a few KB that redraw the figure without the run's full metrics."""
    steps, values = binned_curve(*read_metrics(run_dir, key))
    path = Path(run_dir) / f"curve_{key}.csv"
    header = ",".join(["env_steps", *[f"seed{i}" for i in range(values.shape[0])]])
    np.savetxt(path, np.column_stack([steps, values.T]), delimiter=",", header=header, comments="", fmt="%.9g")
    return path


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_grid(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(parameter names, parameter values [points, dim], returns [seeds, points]) from grid.csv."""
    with open(Path(run_dir) / "grid.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=float)
    dim = sum(not h.startswith("return_seed") for h in header)
    return header[:dim], body[:, :dim], body[:, dim:].T


# ----------------------------------------------------------------------------------------------------
# PLOTS


def read_grids(run: Any, run_dir: Path) -> list[tuple[str, list[str], np.ndarray, np.ndarray]]:
    """[(label, parameter names, points [points, dim], returns [seeds, points])] of one run: its grid.csv
    (QARL), or every method in results.json (IWOCS evaluates itself and its baselines in one run)."""
    path = Path(run_dir) / "results.json"
    if not path.exists():
        return [(run.label, *read_grid(run_dir))]
    results = json.loads(path.read_text())
    points = np.asarray(results["grid"], dtype=float).reshape(-1, len(results["names"]))
    return [(method, results["names"], points,
             np.asarray(table["grid_returns_per_seed"], dtype=float).reshape(-1, len(points)))
            for method, table in results["methods"].items()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_panel(ax, steps, values, label, color, faint=True):
    """IQM line, 95% bootstrap band and faint per-seed lines of values [seeds, points]."""
    if values.shape[1] == 0:
        return
    point = iqm(values[:, None, :])
    low, high = stratified_bootstrap_ci(values[:, None, :])
    if faint:
        for seed_values in values:
            ax.plot(steps, seed_values, color=color, alpha=0.2, lw=0.7)
    ax.plot(steps, point, color=color, lw=1.8, label=f"{label} (IQM)")
    ax.fill_between(steps, low, high, color=color, alpha=0.25, lw=0)


def bar_panel(ax, names, finals, colors, ylabel="final return"):
    """Bars of the IQM of finals[i] (one array of per-seed values per bar) with 95% bootstrap intervals."""
    from rliable import metrics

    points = [metrics.aggregate_iqm(np.asarray(f, dtype=float)[:, None]) for f in finals]
    cis = [stratified_bootstrap_ci(np.asarray(f, dtype=float)[:, None]) for f in finals]
    err = np.array([[p - lo, hi - p] for p, (lo, hi) in zip(points, cis)]).T
    ax.bar(range(len(names)), points, yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{ylabel} (IQM, 95% CI)", fontsize=8)


def _cell_edges(points: np.ndarray) -> tuple[float, float]:
    """Outer edges of a heatmap whose cells are centred on evenly spaced grid points."""
    half = (points[-1] - points[0]) / max(len(points) - 1, 1) / 2
    return points[0] - half, points[-1] + half


def figure_caption(figure, scale: str, seeds: int, envs: list[str]) -> str:
    designed = figure.seeds[scale]
    seed_text = f"{seeds} seeds" + (f" (fewer than the {designed} designed)" if seeds < designed else "")
    scale_text = {"cpu": "CPU scale (sized for a 2-core CPU)", "full": "full scale (paper's budget)",
                  "paper": "paper's budget (seeds that fit a CPU)", "tiny": "tiny scale (test only)"}[scale]
    note = figure.note.get(scale)
    return (f"{figure.title} [{figure.algorithm}.py] | {', '.join(dict.fromkeys(envs))}\n"
            f"{seed_text}, {figure.steps[scale]} per seed, {scale_text}" + (f"\n{note}" if note else ""))


def plot_figure(figure, scale: str, seeds: int, runs: list, path: Path) -> Path:
    """Draw a registered figure (scripts/reproduce.py) from its finished runs [(Run, run_dir)]."""
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    envs = [run.env for run, _ in runs]
    if figure.kind == "curves":
        panels = list(dict.fromkeys(envs))
        extra = 1 if len(panels) > 1 else 0
        cols = min(3, len(panels) + extra)
        rows = -(-(len(panels) + extra) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(6.4, 4.2 * cols), 3.0 * rows + 1.0), dpi=80, squeeze=False)
        axes = axes.ravel()
        for i, env in enumerate(panels):
            ax = axes[i]
            for j, (run, run_dir) in enumerate([r for r in runs if r[0].env == env]):
                steps, values = binned_curve(*read_metrics(run_dir, figure.curve_key))
                curve_panel(ax, steps, values[:seeds], run.label, colors[j % len(colors)])
            if env in figure.reference:
                value, source = figure.reference[env]
                ax.axhline(value, color="gray", ls="--", lw=1, label=source)
            ax.set_title(env, fontsize=9)
            ax.set_xlabel("env steps per seed", fontsize=8)
            ax.set_ylabel(figure.curve_key.replace("_", " "), fontsize=8)
            ax.legend(fontsize=7, loc="lower right")
        if extra:
            finals = [read_summary(d)["final_return"][:seeds] for _, d in runs]
            # several variants per panel: each bar named and coloured as its curve
            same_env = [[r for r, _ in runs if r.env == run.env] for run, _ in runs]
            several = any(len(others) > 1 for others in same_env)
            bar_panel(axes[len(panels)], [f"{r.env}: {r.label}" if several else r.env for r, _ in runs], finals,
                      [colors[(others.index(r) if several else i) % len(colors)]
                       for i, ((r, _), others) in enumerate(zip(runs, same_env))])
            axes[len(panels)].set_title("final return per environment", fontsize=9)
        for ax in axes[len(panels) + extra:]:
            ax.axis("off")
    elif figure.kind == "horizon-heatmap":
        locks = sorted({int(run.env.rsplit("H", 1)[1]) for run, _ in runs})
        heads = sorted({int(run.label.split("=")[1]) for run, _ in runs})
        table = np.full((len(locks), len(heads)), np.nan)
        solved = {}  # (row, column) -> (seeds solved, median env steps to solve over them): the paper's metric
        for run, run_dir in runs:
            n, k = int(run.env.rsplit("H", 1)[1]), int(run.label.split("=")[1])
            summary = read_summary(run_dir)
            table[locks.index(n), heads.index(k)] = iqm(np.array(summary["final_return"][:seeds])[:, None])
            steps = [s for s in summary.get("steps_to_solve", [None])[:seeds] if s is not None]
            if "steps_to_solve" in summary:
                solved[locks.index(n), heads.index(k)] = (len(steps), np.median(steps) if steps else None)
        fig, ax = plt.subplots(figsize=(max(6.4, 1.0 * len(heads) + 2.5), 0.7 * len(locks) + 2.4), dpi=80)
        image = ax.imshow(table, cmap="viridis", aspect="auto", origin="lower")
        for (a, b), value in np.ndenumerate(table):
            text = f"{value:.2f}"
            if (a, b) in solved:  # solved seeds, and the median steps_to_solve of those
                count, median = solved[a, b]
                text += f"\n{count}/{seeds}" + (f" {median / 1000:.0f}k" if median is not None else "")
            ax.text(b, a, text, ha="center", va="center", fontsize=7 if solved else 8,
                    color="black" if value > 0.5 * np.nanmax(table) else "white")
        ax.set_xticks(range(len(heads)), [f"k={k}" for k in heads])
        ax.set_yticks(range(len(locks)), [f"H{n}" for n in locks])
        ax.set(xlabel="Q heads k (fitted-Q steps)", ylabel="CombinationLock (effective horizon n)")
        fig.colorbar(image, ax=ax, label="greedy return, IQM over seeds")
        if solved:
            ax.set_title("in each cell: greedy return; seeds solved, median env steps to solve", fontsize=8)
    elif figure.kind == "robustness":
        tables = [table for run, run_dir in runs for table in read_grids(run, run_dir)]
        fig, axes = plt.subplots(1, len(tables) + 1, figsize=(3.6 * (len(tables) + 1), 3.6), dpi=80, squeeze=False)
        axes = axes.ravel()
        worst, average = [], []
        vmin = min(t[3][:seeds].mean(0).min() for t in tables)
        vmax = max(t[3][:seeds].mean(0).max() for t in tables)
        for ax, (label, names, points, returns) in zip(axes, tables):
            returns = returns[:seeds]
            worst.append(returns.min(axis=1))
            average.append(returns.mean(axis=1))
            sides = [np.unique(points[:, d]) for d in range(points.shape[1])]
            mean = returns.mean(0).reshape(*(len(s) for s in sides))
            image = ax.imshow(mean.T, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                              extent=(*_cell_edges(sides[0]), *_cell_edges(sides[1])))
            ax.set(xlabel=names[0], ylabel=names[1])
            ax.set_title(f"{label}\nworst {iqm(worst[-1][:, None]):.0f}, average {iqm(average[-1][:, None]):.0f}"
                         " (IQM)", fontsize=8)
        fig.colorbar(image, ax=axes[len(tables) - 1], label="return (mean of seeds)")
        several_envs = len(set(envs)) > 1
        labels = [f"{run.env}: {t[0]}" if several_envs else t[0] for (run, _), t in zip(runs, tables)] \
            if len(tables) == len(runs) else [t[0] for t in tables]
        columns = {"worst": worst, "average": average}
        nominal = [read_summary(d) for _, d in runs]
        if len(tables) == len(runs) and all("return_vs_adversary" in s for s in nominal):  # QARL runs
            columns = {"nominal": [np.asarray(s["final_return"][:seeds]) for s in nominal],
                       "vs adversary": [np.asarray(s["return_vs_adversary"][:seeds]) if _has_adversary(d) else None
                                        for (_, d), s in zip(runs, nominal)], **columns}
        names, values, bar_colors = [], [], []
        for column, per_table in columns.items():
            for i, (label, value) in enumerate(zip(labels, per_table)):
                if value is not None:
                    names.append(f"{label}: {column}")
                    values.append(value)
                    bar_colors.append(colors[i % len(colors)])
        bar_panel(axes[-1], names, values, bar_colors, ylabel="return")
        axes[-1].set_title(" / ".join(columns) + " (grid: no adversary)", fontsize=9)
        write_table(Path(path).with_suffix(".md"), labels, columns, seeds)
    elif figure.kind == "sample-complexity":
        table = sample_complexity_table(runs, seeds, Path(path))
        fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=80)
        labels = list(dict.fromkeys(row["method"] for row in table))
        for i, label in enumerate(labels):
            mine = [row for row in table if row["method"] == label]
            shift = 0.15 * (i - (len(labels) - 1) / 2)  # side by side at each horizon
            x = np.array([row["effective_horizon"] for row in mine]) + shift
            for xi, row in zip(x, mine):  # every seed: filled when solved, open at the cap when not
                steps = np.array([np.nan if v is None else v for v in row["steps"]], dtype=float)
                solved = np.isfinite(steps)
                ax.scatter(np.full(solved.sum(), xi), steps[solved], s=16, color=colors[i], alpha=0.6, lw=0)
            median = np.array([np.nan if row["median"] is None else row["median"] for row in mine])
            ax.scatter(x, median, s=60, marker="D", color=colors[i], edgecolors="black", lw=0.5,
                       label=f"{label}: median over seeds (dots: each seed)")
            unsolved = np.isnan(median)
            ax.scatter(x[unsolved], [row["cap"] for row, u in zip(mine, unsolved) if u], s=60, marker="D",
                       facecolors="none", edgecolors=colors[i], lw=1.2, label=f"{label}: median beyond the cap")
        for env, (value, source) in figure.reference.items():  # the paper's own numbers, where published
            h, steps = value
            ax.scatter([h], [steps], s=90, marker="*", color="gray", label=f"{env}: {source}")
        cap = max(row["cap"] for row in table)
        ax.axhline(cap, color="gray", ls=":", lw=1, label="cap")
        ax.set_yscale("log")
        ax.set(xlabel="effective horizon (Theorem 5.4 bound, exact; BRIDGE's: tighter Appendix C bound)",
               ylabel="env steps until the greedy policy is optimal")
        ax.legend(fontsize=7, loc="upper right")  # above the cap, right of the paper's star: empty
        envs = [f"{len(set(envs))} MDPs"]  # the caption names the set; the table beside it names each MDP
        write_sample_complexity(Path(path).with_suffix(".md"), table, seeds, figure.reference)
    else:
        raise ValueError(f"unknown figure kind {figure.kind!r}")
    fig.suptitle(figure_caption(figure, scale, seeds, envs), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    _to_palette(path)
    return path


SOLVED = 1.0 - 1e-4  # BRIDGE's MiniGrid MDPs: the optimal return is 1 (a float32 mean of ones rounds by far less)


def steps_to_solve(run_dir: Path, seeds: int) -> list[int | None]:
    """Per seed: env steps when a greedy evaluation first reached the optimal return 1 (the paper's metric),
    None if none did, from each seed's metrics file (its own env_steps: SQIRL's differ between seeds)."""
    result = []
    for seed in range(seeds):
        with open(Path(run_dir) / f"metrics_seed{seed}.csv") as f:
            hits = [float(r["env_steps"]) for r in csv.DictReader(f)
                    if r["eval_return"] not in ("", "nan") and float(r["eval_return"]) >= SOLVED]
        result.append(int(hits[0]) if hits else None)
    return result


def effective_horizons(env_ids: list[str], out_dir: Path) -> dict[str, dict]:
    """env id -> its exact analysis (scripts/effective_horizon.py --exact), cached in out_dir/exact.csv."""
    import effective_horizon

    path = out_dir / "exact.csv"
    rows = {}
    if path.exists():
        with open(path) as f:
            rows = {row["env_id"]: row for row in csv.DictReader(f)}
    missing = [env_id for env_id in env_ids if env_id not in rows]
    if missing:
        new = effective_horizon.exact_rows(missing, max_states=200_000)
        effective_horizon.write_exact([*rows.values(), *new], out_dir)
        with open(path) as f:
            rows = {row["env_id"]: row for row in csv.DictReader(f)}
    return rows


def sample_complexity_table(runs: list, seeds: int, path: Path) -> list[dict]:
    """One row per run: its env, method, exact facts, per-seed steps to solve, the median (None when fewer than
    half of the seeds solved it, as BRIDGE's median is inf then) and the run's cap. A run whose metrics were not
    kept (results/paper/) takes its steps from the figure's own table, path.csv."""
    facts = effective_horizons(list(dict.fromkeys(run.env for run, _ in runs)), path.parent)
    kept = {}
    if path.with_suffix(".csv").exists():
        with open(path.with_suffix(".csv")) as f:
            kept = {(row["env"], row["method"]): [int(row[f"steps_to_solve_seed{i}"]) if row.get(
                f"steps_to_solve_seed{i}") else None for i in range(seeds)] for row in csv.DictReader(f)}
    table = []
    for run, run_dir in runs:
        metrics = (Path(run_dir) / "metrics_seed0.csv").exists()
        steps = steps_to_solve(run_dir, seeds) if metrics else kept[run.env, run.label]
        solved = sorted(s for s in steps if s is not None)
        ordered = solved + [np.inf] * (len(steps) - len(solved))
        median = float(np.median(ordered))
        config = json.loads((Path(run_dir) / "config.json").read_text())
        table.append({"env": run.env, "method": run.label, "steps": steps, "cap": int(config["total_timesteps"]),
                      "median": None if not np.isfinite(median) else median,
                      "effective_horizon": float(facts[run.env]["effective_horizon_simple"]),
                      "states": int(facts[run.env]["num_states"]), "min_k": facts[run.env]["min_k"]})
    return table


def write_sample_complexity(path: Path, table: list[dict], seeds: int, reference: dict) -> Path:
    """The figure's data as a Markdown table: per MDP, its exact facts and each method's seeds solved and median
    steps to solve; the paper's published values beside it where there are any."""
    methods = list(dict.fromkeys(row["method"] for row in table))
    lines = ["| MDP | states | min k | effective horizon (ours, Thm 5.4) | BRIDGE's published | "
             + " | ".join(f"{m}: seeds solved, median steps" for m in methods) + " |",
             "|---|---|---|---|---|" + "---|" * len(methods)]
    for env in dict.fromkeys(row["env"] for row in table):
        rows = {row["method"]: row for row in table if row["env"] == env}
        first = next(iter(rows.values()))
        cells = []
        for m in methods:
            row = rows[m]
            solved = sum(s is not None for s in row["steps"])
            median = f"{row['median'] / 1000:.1f}k" if row["median"] is not None else f"> {row['cap'] / 1000:.0f}k"
            # "> cap": fewer than half of the seeds solved it (BRIDGE's median is inf then)
            cells.append(f"{solved}/{len(row['steps'])}, {median}")
        paper = reference.get(env)
        published = paper[1] if paper else "not available"
        lines.append(f"| {env} | {first['states']} | {first['min_k']} | {first['effective_horizon']:.2f} | "
                     f"{published} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    with open(path.with_suffix(".csv"), "w", newline="") as f:  # per seed, for other plots
        writer = csv.writer(f)
        writer.writerow(["env", "method", "states", "min_k", "effective_horizon_simple", "cap",
                         *[f"steps_to_solve_seed{i}" for i in range(seeds)]])
        for row in table:
            writer.writerow([row["env"], row["method"], row["states"], row["min_k"], row["effective_horizon"],
                             row["cap"], *["" if s is None else s for s in row["steps"]]])
    return path


def _has_adversary(run_dir: Path) -> bool:
    config = Path(run_dir) / "config.json"
    return not config.exists() or json.loads(config.read_text()).get("adversary", "on") != "off"


def write_table(path: Path, labels: list[str], columns: dict[str, list], seeds: int) -> Path:
    """A Markdown table beside a robustness figure: per variant and column, the IQM over seeds with its 95%
    stratified bootstrap interval (n/a where the column does not apply, e.g. SAC has no adversary)."""
    lines = [f"| variant ({seeds} seeds; IQM [95% CI]) | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for i, label in enumerate(labels):
        cells = []
        for per_table in columns.values():
            value = per_table[i]
            if value is None:
                cells.append("n/a")
            else:
                value = np.asarray(value, dtype=float)[:, None]
                low, high = stratified_bootstrap_ci(value)
                cells.append(f"{iqm(value):.1f} [{float(low):.1f}, {float(high):.1f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _to_palette(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette: the same picture at a third of the size, small enough to commit."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="IQM curves with 95% bootstrap bands of finished runs.")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--key", default="episode_return", help="metrics column against env_steps")
    parser.add_argument("--out", default="curves.png")
    args = parser.parse_args(argv)
    plt = _plt()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for i, run_dir in enumerate(args.run_dirs):
        summary = read_summary(run_dir)
        steps, values = binned_curve(*read_metrics(Path(run_dir), args.key))
        curve_panel(ax, steps, values, f"{summary['algorithm']} {summary['env_id']} ({summary['num_seeds']} seeds)",
                    colors[i % len(colors)])
    ax.set(xlabel="env steps per seed", ylabel=args.key.replace("_", " "))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
