"""Run output: what a run writes, the same way for every algorithm file (the harness, runner.py, calls it).

What lands in a run directory:
    config.json          the resolved config (written before compiling)
    progress.csv         one row per progress tick, appended while the jitted run goes (survives a crash)
    metrics_seed<i>.csv  every metric of every update, one file per seed
    summary.json         algorithm, env_id, preset, num_seeds, env_steps, final_return, timings, memory
    curve.png            training returns per seed and their mean, and the greedy evaluations
    checkpoint.msgpack   final parameters and optimizer state of every seed (leading axis = seed)
    resume.npz           the whole training state after the last finished chunk, for --resume (runner.py)
    <name>=<value>/      with --sweep: one complete run directory per value
    tensorboard/, wandb/ with --tensorboard / --wandb, written after the run

A file that runs its own loop (a Python loop over jitted updates, as purejaxql's simplified scripts do) uses
it directly: `start_run(run_dir, config, name)`, a `Progress` for the terminal and progress.csv, then
`finish_run(run_dir, config, name, metrics, final_return, checkpoint, compile_seconds, train_seconds)`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import resource
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization


# ----------------------------------------------------------------------------------------------------
# RUN DIRECTORY


def run_path(config, algorithm: str) -> Path:
    """`config.run_dir`, or runs/<algorithm>_<env>_<time>; nothing is created yet."""
    default = f"{algorithm}_{config.env_id.replace('/', '-')}_{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(config.run_dir or os.path.join("runs", default))


def start_run(run_dir: Path, config, algorithm: str) -> None:
    """Create the run directory and write config.json, before anything is compiled (host 0 only)."""
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"algorithm": algorithm, **dataclasses.asdict(config)})


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a crash mid-write never leaves a truncated file behind."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_to_builtin) + "\n")
    os.replace(tmp, path)


def _to_builtin(x):
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)

# ----------------------------------------------------------------------------------------------------
# PROGRESS (host callback from inside the jitted run)


class Progress:
    """Host side of the progress callback.

    `train` calls it through `jax.debug.callback` every few updates with scalars of one seed; under
    `vmap` it is called once per seed. A tick is complete when all seeds have reported it: then a row is
    appended to progress.csv and, at most every `every_seconds`, a line is printed.
    """

    def __init__(self, run_dir: Path | None, total_env_steps: int, num_seeds: int, quiet: bool = False,
                 every_seconds: float = 2.0):
        self.path = None if run_dir is None or jax.process_index() != 0 else Path(run_dir) / "progress.csv"
        self.total_env_steps, self.num_seeds = total_env_steps, num_seeds
        self.quiet, self.every_seconds = quiet, every_seconds
        self.pending: dict[int, list[dict[str, float]]] = {}
        self.lock = threading.Lock()
        self.start = self.last_print = self.start_steps = None
        self.header_written = False

    def __call__(self, env_steps, **scalars) -> None:
        row = {"env_steps": int(env_steps), **{k: float(v) for k, v in scalars.items()}}
        with self.lock:
            now = time.time()
            if self.start is None:  # the first tick comes after compiling: rates count from here
                self.start, self.last_print, self.start_steps = now, now, row["env_steps"]
            rows = self.pending.setdefault(row["env_steps"], [])
            rows.append(row)
            if len(rows) < self.num_seeds:
                return
            del self.pending[row["env_steps"]]
            summary = {"env_steps": row["env_steps"], "seconds": round(now - self.start, 3)}
            for key in scalars:
                values = np.array([r[key] for r in rows], dtype=np.float64)
                summary[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            self._append(summary)
            done = row["env_steps"] >= self.total_env_steps
            if not self.quiet and (done or now - self.last_print >= self.every_seconds):
                self.last_print = now
                self._print(summary, now)

    def _append(self, summary: dict[str, float]) -> None:
        if self.path is None:
            return
        # The first row of this run starts the file afresh (a rerun into the same directory replaces it).
        with open(self.path, "a" if self.header_written else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary))
            if not self.header_written:
                writer.writeheader()
                self.header_written = True
            writer.writerow(summary)

    def _print(self, summary: dict[str, float], now: float) -> None:
        steps = summary["env_steps"]
        rate = (steps - self.start_steps) * self.num_seeds / max(now - self.start, 1e-9)
        eta = (self.total_env_steps - steps) * self.num_seeds / max(rate, 1e-9)
        extras = "  ".join(f"{k} {v:.4g}" for k, v in summary.items() if k not in ("env_steps", "seconds"))
        print(f"[{100 * steps / self.total_env_steps:5.1f}%] steps {steps:,}  {rate:,.0f} steps/s  "
              f"{extras}  eta {eta:.0f}s", flush=True)

# ----------------------------------------------------------------------------------------------------
# CHECKPOINTS (flax msgpack: one format for every algorithm)


def save_checkpoint(path: Path, tree: Any) -> None:
    """Save a pytree of arrays atomically (write to a temporary file, then rename)."""
    path = Path(path)
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(tree)))
    os.replace(tmp, path)


def load_checkpoint(path: Path, target: Any = None) -> Any:
    """Load a checkpoint; with `target` (a pytree of the same structure) restore its exact types. A file that is
    not a whole checkpoint (cut short, overwritten) is one line that names it and says how to write it again."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return serialization.msgpack_restore(data) if target is None else serialization.from_bytes(target, data)
    except (ValueError, TypeError, KeyError) as error:  # msgpack's errors are ValueErrors
        again = (f"`python algorithms/<file>.py --resume {path.parent}` writes it again from the run's last saved "
                 f"state (resume.npz)" if (path.parent / "resume.npz").exists() else "train the run again")
        raise SystemExit(f"error: {path} is damaged ({type(error).__name__}: {error}); nothing was changed. "
                         f"{again[0].upper()}{again[1:]}.") from None

# ----------------------------------------------------------------------------------------------------
# METRICS, SUMMARY, CURVE


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """One CSV per seed: a row per update, a column per metric (arrays are [num_seeds, num_updates])."""
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    num_seeds = next(iter(metrics.values())).shape[0]
    for seed in range(num_seeds):
        path = Path(run_dir) / f"metrics_seed{seed}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(metrics))
            writer.writerows(zip(*(v[seed].tolist() for v in metrics.values())))


def plot_curve(path: Path, env_steps: np.ndarray, returns: np.ndarray, title: str,
               eval_returns: np.ndarray | None = None, ylabel: str = "episode return") -> None:
    """Training returns per seed (thin) and their mean (thick), and where given the greedy evaluations
    (dots per seed, their mean as a dashed line), against environment steps per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(env_steps)[0]
    returns = np.asarray(returns, dtype=np.float64)
    num_seeds = returns.shape[0]
    seeds = f"{num_seeds} seed" + ("s" if num_seeds > 1 else "")
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
    if num_seeds > 1:
        for seed in range(num_seeds):
            keep = np.isfinite(returns[seed])
            ax.plot(steps[keep], returns[seed][keep], lw=0.7, alpha=0.35, color="tab:blue")
    mean = nanmean_quiet(returns, axis=0)
    keep = np.isfinite(mean)
    ax.plot(steps[keep], mean[keep], lw=1.8, color="tab:blue", label=f"training episodes (mean of {seeds})")
    if eval_returns is not None:
        eval_returns = np.asarray(eval_returns, dtype=np.float64)
        at = np.isfinite(eval_returns).any(axis=0)
        for seed in range(num_seeds):
            ax.plot(steps[at], eval_returns[seed][at], "o", ms=3, alpha=0.5, color="tab:orange")
        ax.plot(steps[at], nanmean_quiet(eval_returns[:, at], axis=0), "--", lw=2, color="tab:orange",
                label=f"greedy evaluation (mean of {seeds})")
    ax.set(xlabel="environment steps (per seed)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def nanmean_quiet(values, axis=None):
    """np.nanmean without the warning for all-NaN slices (steps where no episode had finished yet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, dtype=np.float64), axis=axis)


def sparkline(values: np.ndarray, width: int = 40) -> str:
    """A one-line text picture of a curve, for the terminal."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "(no finished episode yet)"
    chunks = np.array_split(values, min(width, values.size))
    values = np.array([c.mean() for c in chunks])
    low, high = values.min(), values.max()
    bars = "▁▂▃▄▅▆▇█"
    scaled = np.zeros_like(values) if high == low else (values - low) / (high - low)
    return f"{low:.4g} " + "".join(bars[int(s * (len(bars) - 1))] for s in scaled) + f" {high:.4g}"


def log_trackers(run_dir: Path, config, metrics: dict[str, Any], step_key: str = "env_steps") -> None:
    """Optional TensorBoard and wandb logs, one series per seed, written after the run."""
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    steps = metrics[step_key]
    if getattr(config, "tensorboard", False):
        from tensorboardX import SummaryWriter

        for seed in range(steps.shape[0]):
            with SummaryWriter(str(Path(run_dir) / "tensorboard" / f"seed{seed}")) as writer:
                for i, step in enumerate(steps[seed].tolist()):
                    for key, values in metrics.items():
                        if key != step_key and math.isfinite(values[seed, i]):
                            writer.add_scalar(key, float(values[seed, i]), int(step))
    if getattr(config, "wandb", False):
        try:
            import wandb
        except ImportError as error:
            raise SystemExit("--wandb needs `pip install wandb` (set WANDB_MODE=offline to log locally).") from error
        for seed in range(steps.shape[0]):
            run = wandb.init(project=config.wandb_project, name=f"{Path(run_dir).name}-seed{seed}",
                             group=Path(run_dir).name, config=dataclasses.asdict(config),
                             dir=str(run_dir), reinit=True)
            for i, step in enumerate(steps[seed].tolist()):
                run.log({k: float(v[seed, i]) for k, v in metrics.items() if k != step_key}, step=int(step))
            run.finish()


def finish_run(run_dir: Path, config, algorithm: str, metrics: dict[str, Any], final_return: np.ndarray,
               checkpoint: Any, compile_seconds: float, train_seconds: float, curve_key: str = "episode_return",
               eval_key: str = "eval_return", extra_summary: dict[str, Any] | None = None,
               curve_label: str = "episode return") -> dict[str, Any]:
    """Write everything a run produces; return the summary. Files come first, checks after.

    On several hosts every host gathers the seeds of all hosts, and only host 0 writes files."""
    metrics, final_return, checkpoint = gather((metrics, final_return, checkpoint))
    metrics = {k: np.asarray(v) for k, v in metrics.items()}
    env_steps_per_seed = int(metrics["env_steps"][0, -1])
    summary = {
        "algorithm": algorithm,
        "env_id": config.env_id,
        "preset": config.preset,
        "num_seeds": int(config.num_seeds),
        "env_steps": env_steps_per_seed,
        "final_return": [float(r) for r in np.asarray(final_return)],
        "compile_seconds": round(compile_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "env_steps_per_second": round(env_steps_per_seed * config.num_seeds / max(train_seconds, 1e-9), 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "backend": jax.default_backend(),
        **(extra_summary or {}),
    }
    if jax.process_index() != 0:
        return summary
    write_metrics(run_dir, metrics)
    save_checkpoint(Path(run_dir) / "checkpoint.msgpack", checkpoint)
    write_json(Path(run_dir) / "summary.json", summary)
    plot_curve(Path(run_dir) / "curve.png", metrics["env_steps"], metrics[curve_key],
               f"{algorithm} on {config.env_id} ({config.preset} preset)", metrics.get(eval_key), ylabel=curve_label)
    log_trackers(run_dir, config, metrics)
    return summary


def peak_memory_mb() -> float:
    """Peak accelerator memory where the backend reports it (GPU/TPU), else the process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}  # another host's devices report nothing here
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def device_memory() -> int | None:
    """Bytes of memory the run's device has: an accelerator's own limit, or the host's RAM on the CPU."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    stats = device.memory_stats() or {}
    return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def gather(tree: Any) -> Any:
    """Host numpy copies of arrays that may be sharded over devices or hosts. On several hosts, an array
    spread over them is gathered from all (a collective: every host calls this with the same tree); one this
    host holds whole (numpy, or already gathered) is copied as it is, not stacked once per host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x  # numbers, strings: as jax.device_get leaves them

    return jax.tree.map(gather, tree)
