"""Files of a robustness evaluation (envs/robust.py's grids): a table, a CSV and a heatmap per run.

    envs.write_grid(run_dir, uset, values, returns, title)   # one policy: grid.csv, grid.png
    envs.write_method_grids(run_dir, uset, {"IWOCS": grid, "DR": grid})   # several: results.json/.md, heatmap.png
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np


def write_method_grids(run_dir: Path, uset, grids: dict[str, Any]) -> dict[str, Any]:
    """Several methods evaluated on one grid (`grids`: method -> envs.GridEvaluation with a leading seed
    axis): results.json, results.md (worst case and average, mean ± std over seeds) and heatmap.png (the
    seed-mean grid of each method side by side, one color scale). Returns the table. On several hosts only host 0
    writes (every host gets the table)."""
    table = {}
    for method, grid in grids.items():
        worst, average = np.asarray(grid.worst), np.asarray(grid.average)
        table[method] = {"worst_mean": float(worst.mean()), "worst_std": float(worst.std()),
                         "average_mean": float(average.mean()), "average_std": float(average.std()),
                         "worst_per_seed": worst.tolist(), "average_per_seed": average.tolist(),
                         "worst_values_per_seed": np.asarray(grid.worst_values).tolist(),
                         "grid_returns_per_seed": np.asarray(grid.returns).tolist()}
    if jax.process_index() != 0:
        return table
    (run_dir / "results.json").write_text(json.dumps(
        {"uncertainty_set": uset.name, "names": uset.names,
         "grid": np.asarray(next(iter(grids.values())).values)[0].tolist(), "methods": table}, indent=2) + "\n")
    lines = [f"| method ({uset.name}, {len(next(iter(grids.values())).worst)} seeds) | worst case | average |",
             "|---|---|---|"]
    lines += [f"| {m} | {t['worst_mean']:.1f} ± {t['worst_std']:.1f} | {t['average_mean']:.1f} ± {t['average_std']:.1f} |"
              for m, t in table.items()]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    if uset.dim == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids) + 1, 3.4), dpi=100, squeeze=False,
                                 constrained_layout=True)
        extent = [uset.low[1], uset.high[1], uset.low[0], uset.high[0]]
        all_returns = np.stack([np.asarray(g.returns).mean(0) for g in grids.values()])
        for ax, (method, grid) in zip(axes[0], grids.items()):
            image = ax.imshow(np.asarray(grid.returns).mean(0), origin="lower", extent=extent, aspect="auto",
                              vmin=all_returns.min(), vmax=all_returns.max(), cmap="viridis")
            ax.set(title=f"{method}: worst {table[method]['worst_mean']:.0f}", xlabel=uset.names[1],
                   ylabel=uset.names[0])
        fig.colorbar(image, ax=axes[0].tolist(), label="return (mean over seeds)")
        fig.savefig(run_dir / "heatmap.png")
        plt.close(fig)
    return table


def write_grid(run_dir: Path, uset, values: np.ndarray, returns: np.ndarray, title: str):
    """grid.csv (one row per model: parameters, then the return of every seed) and grid.png (mean over
    seeds; 2-D sets as a heatmap, 1-D as a curve). `uset` is an envs.UncertaintySet (names, low, high,
    nominal, dim); `returns` is [seeds, *grid shape]. On several hosts only host 0 writes."""
    if jax.process_index() != 0:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flat_values = values.reshape(-1, uset.dim)
    flat_returns = returns.reshape(returns.shape[0], -1)
    with open(run_dir / "grid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*uset.names, *(f"return_seed{i}" for i in range(returns.shape[0]))])
        writer.writerows([*v, *r] for v, r in zip(flat_values.tolist(), flat_returns.T.tolist()))
    mean = returns.mean(0)
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=100)
    if uset.dim == 2:
        image = ax.imshow(mean.T, origin="lower", aspect="auto", cmap="viridis",
                          extent=(uset.low[0], uset.high[0], uset.low[1], uset.high[1]))
        fig.colorbar(image, ax=ax, label=f"return (mean of {returns.shape[0]} seeds)")
        ax.plot(*uset.nominal, "w*", ms=10, label="nominal")
        ax.set(xlabel=uset.names[0], ylabel=uset.names[1])
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.plot(values.reshape(-1, uset.dim)[:, 0], mean.reshape(-1), "o-")
        ax.set(xlabel=uset.names[0], ylabel="return")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "grid.png")
    plt.close(fig)
