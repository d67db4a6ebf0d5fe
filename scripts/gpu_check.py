"""One command for a GPU session: the fast test tier, every algorithm's benchmark, and the largest paper-scale
run that fits, with one JSON + Markdown report. Written to fit 10 minutes of one GPU.

    python scripts/gpu_check.py                         # on the GPU machine: report under $OUT (or runs/)
    python scripts/gpu_check.py --out /tmp/check        # another folder
    python scripts/gpu_check.py --tiny                  # the same steps at tiny sizes, on this CPU, about 2 minutes

Steps, in order, each a subprocess with its own time limit (never past the overall --budget-seconds):
1. environment: JAX's backend and devices, nvidia-smi's line (if there is one).
2. tests: `pytest -m "not slow"` over -n workers (--tiny: one quick test), counted from pytest's -v lines, so
   a run stopped at its limit still reports what passed and failed.
3. benchmarks: `scripts/benchmark.py ALGO --preset P --num-seeds S` for every algorithm's main preset and
   S in --seeds (1 and 16); IWOCS has no single train function, so its main() runs instead and its
   summary.json is read. Sizes are capped (BENCHMARKS) so that each takes seconds on a GPU.
4. paper: PQN MinAtar (the authors' preset, --paper-steps env steps per seed, 1e7 as in the paper) on 2 games x
   8 seeds, the games in parallel on the one GPU; it gets the time left. Stopped at its limit, it reports how
   far it got (progress.csv) and the steps/s, from which the full run's time follows.
A step's failure or timeout is recorded (return code, last lines of stderr) and the next step runs. The report
(report.json, report.md) is rewritten after every step, so an interrupted check still leaves one.

This process never imports JAX (it only spawns runs). Children get XLA_PYTHON_CLIENT_PREALLOCATE=false, so that
the two paper runs share the GPU; --tiny pins JAX_PLATFORMS=cpu.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (algorithm, preset, total timesteps per seed on a GPU (None: the preset's), extra flags).
BENCHMARKS = [
    ("pqn", "cartpole", None, []),  # the authors' 5e5 steps
    ("sac", "pendulum", 10_000, []),
    ("stream_x", "cartpole-q", 20_000, []),  # one env step per update: a 500k-step scan would take minutes
    ("stream_x", "pendulum-ac", 20_000, []),
    ("sqirl", "lock", None, []),
    ("qarl", "pendulum", 10_000, []),
    ("iwocs", "pendulum", 6_000, ["--max-iterations", "1", "--cmaes-generations", "4", "--eval-grid-per-axis", "3",
                                  "--no-baselines"]),
]
# --tiny: the sizes tests/test_cli.py runs every file at (seconds on a CPU).
TINY = {
    "iwocs": ["--total-timesteps", "1200", "--learning-starts", "100", "--batch-size", "32", "--hidden-size", "16",
              "--max-iterations", "1", "--cmaes-generations", "2", "--cmaes-population", "6", "--search-episodes", "1",
              "--eval-grid-per-axis", "2", "--no-baselines"],
    "pqn": ["--total-timesteps", "4096", "--num-evals", "1"],
    "sac": ["--total-timesteps", "400", "--learning-starts", "200", "--batch-size", "32", "--hidden-size", "32",
            "--num-evals", "1"],
    "stream_x": ["--total-timesteps", "600", "--num-log-rows", "3"],
    "sqirl": ["--horizon", "3", "--episodes-per-iteration", "8", "--num-epochs", "2", "--num-evals", "1"],
    "qarl": ["--total-timesteps", "200", "--phase-steps", "20", "--learning-starts", "100", "--batch-size", "32",
             "--hidden-size", "16", "--num-layers", "1", "--grid-points", "2", "--grid-episodes", "1", "--num-evals", "1",
             "--num-eval-envs", "2"],
}
PAPER_GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")
PAPER_SEEDS = 8
STEP_SECONDS = {"environment": 60, "tests": 150, "benchmark": 20, "benchmark_iwocs": 45}
# --tiny's limits only stop a hung step: they are far above what a busy 2-core CPU takes, never a speed figure.
TINY_STEP_SECONDS = {"environment": 300, "tests": 600, "benchmark": 600, "benchmark_iwocs": 600}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="report folder (default: $OUT, else runs/gpu_check_<time>)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the test of this script)")
    parser.add_argument("--budget-seconds", type=float, default=None, help="all steps together (default 570; tiny 1800)")
    parser.add_argument("--algorithms", default=None,
                        help="comma-separated benchmark algorithms (default: all; tiny: stream_x, the quickest to compile)")
    parser.add_argument("--seeds", default=None, help="seed counts of each benchmark (default 1,16; tiny 1,2)")
    parser.add_argument("--steps", default="environment,tests,benchmarks,paper", help="which steps to run")
    parser.add_argument("--paper-steps", type=int, default=10_000_000, help="env steps per seed of the paper run")
    parser.add_argument("--pytest-workers", type=int, default=min(os.cpu_count() or 1, 12))
    args = parser.parse_args(argv)

    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / time.strftime("gpu_check_%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_seconds or (1800.0 if args.tiny else 570.0)
    deadline = time.monotonic() + budget
    limits = TINY_STEP_SECONDS if args.tiny else STEP_SECONDS
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=str(ROOT))
    if args.tiny:
        env["JAX_PLATFORMS"] = "cpu"
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "tiny": args.tiny, "budget_seconds": budget,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "steps": []}
    wanted = set(args.steps.split(","))

    def record(step: dict) -> None:
        report["steps"].append(step)
        write_report(out, report)
        status = step["status"] + (f" ({step['seconds']:.0f}s)" if "seconds" in step else "")
        print(f"[gpu_check] {step['name']}: {status}", flush=True)

    if "environment" in wanted:
        record(environment_step(env, limits["environment"], deadline))
    if "tests" in wanted:
        record(tests_step(env, out, limits["tests"], deadline, args.tiny, args.pytest_workers))
    if "benchmarks" in wanted:
        default = "stream_x" if args.tiny else ",".join(dict.fromkeys(b[0] for b in BENCHMARKS))
        algorithms = (args.algorithms or default).split(",")
        seeds = [int(s) for s in (args.seeds or ("1,2" if args.tiny else "1,16")).split(",")]
        for algorithm in algorithms:
            presets = [b for b in BENCHMARKS if b[0] == algorithm] or [(algorithm, None, None, [])]
            presets = presets[:1] if args.tiny else presets  # tiny: the main preset only
            for name, preset, total, extra in presets:
                for num_seeds in seeds:
                    record(benchmark_step(env, out, name, preset, total, extra, num_seeds, args.tiny, limits, deadline))
    if "paper" in wanted:
        record(paper_step(env, out, args.paper_steps, args.tiny, deadline))
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    write_report(out, report)
    print(f"[gpu_check] report: {out / 'report.md'}", flush=True)
    return report


# ----------------------------------------------------------------------------------------------------
# RUNNING ONE COMMAND WITH A TIME LIMIT


def run(command: list[str], env: dict, limit: float, deadline: float, log: Path | None = None) -> dict:
    """Run `command` in its own process group for at most min(limit, time to the deadline) seconds; at the limit
    SIGINT (pytest then prints its summary), 10 s later SIGKILL to the whole group. Returns status ('ok',
    'failed', 'timeout', 'skipped'), seconds, returncode, stdout, stderr."""
    timeout = min(limit, deadline - time.monotonic())
    if timeout < 5:
        return {"status": "skipped", "reason": "out of time (the overall --budget-seconds)", "stdout": "", "stderr": ""}
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(process, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    if log is not None:
        log.write_text(f"$ {' '.join(command)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    status = "timeout" if timed_out else ("ok" if process.returncode == 0 else "failed")
    return {"status": status, "seconds": round(time.monotonic() - start, 1), "returncode": process.returncode,
            "timeout_seconds": round(timeout, 1), "stdout": stdout, "stderr": stderr}


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group this process leads (start_new_session): its own children only
    except ProcessLookupError:
        pass


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def finished(name: str, kind: str, command: list[str], outcome: dict, result: dict | None = None) -> dict:
    step = {"name": name, "kind": kind, "command": " ".join(command),
            **{k: v for k, v in outcome.items() if k not in ("stdout", "stderr")}}
    if result is not None:
        step["result"] = result
    if outcome["status"] not in ("ok", "skipped"):
        step["error"] = _tail(outcome["stderr"]) or _tail(outcome["stdout"])
    return step


# ----------------------------------------------------------------------------------------------------
# STEPS

ENVIRONMENT = """
import json, os, jax
print("RESULT" + json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count()}))
"""


def environment_step(env: dict, limit: float, deadline: float) -> dict:
    command = [sys.executable, "-c", ENVIRONMENT]
    outcome = run(command, env, limit, deadline)
    result = _result_line(outcome["stdout"])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if result is not None and smi.returncode == 0:
            result["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return finished("environment", "environment", ["python", "-c", "<jax devices>"], outcome, result)


TEST_LINE = re.compile(r"(?:(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(tests/\S+))|(?:(tests/\S+::\S+)\s+"
                       r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS))")


def tests_step(env: dict, out: Path, limit: float, deadline: float, tiny: bool, workers: int) -> dict:
    selection = ["tests/test_cli.py", "-k", "every_algorithm_file_is_there"] if tiny else []
    command = [sys.executable, "-m", "pytest", "-m", "not slow", "-v", "-p", "no:cacheprovider",
               "-n", "0" if tiny else str(workers), *selection]
    outcome = run(command, env, limit, deadline, out / "tests.log")
    statuses = {}  # test id -> its status (the -ra summary repeats failures: counted once)
    for match in TEST_LINE.finditer(outcome["stdout"]):
        statuses[match.group(2) or match.group(3)] = (match.group(1) or match.group(4)).lower()
    counts = {status: list(statuses.values()).count(status) for status in sorted(set(statuses.values()))}
    failures = sorted(test for test, status in statuses.items() if status in ("failed", "error"))
    summary = re.findall(r"=+ (.*(?:passed|failed|error|no tests ran).*) =+", outcome["stdout"])
    result = {"counts": counts, "failures": failures, "summary": summary[-1] if summary else None, "log": "tests.log"}
    return finished("tests", "tests", command, outcome, result)


def benchmark_step(env: dict, out: Path, algorithm: str, preset: str | None, total: int | None, extra: list[str],
                   num_seeds: int, tiny: bool, limits: dict, deadline: float) -> dict:
    name = f"benchmark {algorithm}" + (f" {preset}" if preset else "") + f" x{num_seeds}"
    flags = list(TINY.get(algorithm, [])) if tiny else [*(["--total-timesteps", str(total)] if total else []), *extra]
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), algorithm, *(["--preset", preset] if preset else []),
               "--num-seeds", str(num_seeds), *flags]
    limit = limits["benchmark_iwocs" if algorithm == "iwocs" else "benchmark"]  # (IWOCS: four SAC runs to compile)
    outcome = run(command, env, limit, deadline, out / f"{name.replace(' ', '_')}.log")
    result = None
    if outcome["status"] == "ok":
        try:
            result = json.loads(outcome["stdout"][outcome["stdout"].index("{"):])
        except ValueError:
            outcome = {**outcome, "status": "failed", "stderr": outcome["stderr"] + "\nno JSON in benchmark.py's output"}
    return finished(name, "benchmark", command, outcome, result)


def paper_step(env: dict, out: Path, paper_steps: int, tiny: bool, deadline: float) -> dict:
    """PQN MinAtar on PAPER_GAMES x PAPER_SEEDS, the games in parallel processes; tiny: CartPole and Acrobot."""
    games = ("CartPole-v1", "Acrobot-v1") if tiny else PAPER_GAMES
    seeds = 2 if tiny else PAPER_SEEDS
    preset = "cartpole" if tiny else "minatar"
    flags = TINY["pqn"] if tiny else ["--total-timesteps", str(paper_steps)]
    timeout = deadline - time.monotonic()
    name = f"paper pqn {preset} {'+'.join(games)} x{seeds} seeds"
    if timeout < 30:
        return {"name": name, "kind": "paper", "status": "skipped", "reason": "out of time (the overall --budget-seconds)"}
    start = time.monotonic()
    commands, processes = {}, {}
    try:
        for game in games:
            commands[game] = [sys.executable, str(ROOT / "algorithms" / "pqn.py"), "--preset", preset, "--env-id", game,
                              "--num-seeds", str(seeds), *flags, "--run-dir", str(out / f"paper_{game}")]  # not --quiet: progress.csv shows how far a cut run got
            processes[game] = subprocess.Popen(commands[game], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True, start_new_session=True)
        outputs, timed_out = {}, False
        for game, process in processes.items():
            try:
                outputs[game] = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(process, signal.SIGKILL)
                outputs[game] = process.communicate()
    finally:
        for process in processes.values():
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
                process.wait()
    games_result = {}
    for game, process in processes.items():
        stdout, stderr = outputs[game]
        (out / f"paper_{game}.log").write_text(f"$ {' '.join(commands[game])}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        summary = _summary(out / f"paper_{game}")
        progress = _last_progress(out / f"paper_{game}" / "progress.csv")
        games_result[game] = {"returncode": process.returncode, "summary": summary, "last_progress": progress}
        if summary is None and progress and progress.get("seconds"):  # stopped early: how far, and how fast
            rate = progress["env_steps"] * seeds / max(progress["seconds"], 1e-9)
            games_result[game]["env_steps_per_second_all_seeds"] = round(rate)
            games_result[game]["full_run_seconds_estimate"] = round(paper_steps * seeds / rate)
        if summary is None:
            games_result[game]["error"] = _tail(stderr)
    ok = all(p.returncode == 0 for p in processes.values())
    step = {"name": name, "kind": "paper", "command": " | ".join(" ".join(c) for c in commands.values()),
            "status": "timeout" if timed_out else ("ok" if ok else "failed"),
            "seconds": round(time.monotonic() - start, 1), "timeout_seconds": round(timeout, 1),
            "env_steps_per_seed": paper_steps if not tiny else None, "result": games_result}
    return step


def _result_line(stdout: str) -> dict | None:
    return json.loads(stdout.split("RESULT", 1)[1]) if "RESULT" in stdout else None


def _summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _last_progress(path: Path) -> dict | None:
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else None


# ----------------------------------------------------------------------------------------------------
# REPORT


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# GPU check ({'tiny, CPU' if report['tiny'] else 'full'})", "",
             f"Started {report['started']}" + (f", finished {report['finished']}" if "finished" in report else
                                               " (still running or interrupted)")
             + f"; budget {report['budget_seconds']:.0f} s. `{report['command']}`", ""]
    for step in report["steps"]:
        if step["kind"] == "environment" and step.get("result"):
            r = step["result"]
            lines += [f"Machine: {r.get('nvidia_smi') or r['device_kind']}, backend {r['backend']}, "
                      f"{len(r['devices'])} device(s), {r['cpu_count']} CPUs, jax {r['jax']}.", ""]
    lines += ["| step | status | seconds | figures |", "|---|---|---|---|"]
    for step in report["steps"]:
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | {_figures(step)} |")
    for step in report["steps"]:
        if step.get("error"):
            lines += ["", f"**{step['name']}** ({step['status']}):", "```", step["error"], "```"]
        if step["kind"] == "tests" and step.get("result", {}).get("failures"):
            lines += ["", "Failed tests:", *[f"- `{t}`" for t in step["result"]["failures"]]]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _figures(step: dict) -> str:
    r = step.get("result") or {}
    if step["status"] == "skipped":
        return step.get("reason", "")
    if step["kind"] == "tests":
        return (r.get("summary") or ", ".join(f"{n} {k}" for k, n in r.get("counts", {}).items())) if r else ""
    if step["kind"] == "benchmark" and "train_env_steps_per_second" in r:
        return (f"{r['train_env_steps_per_second']:,} env steps/s (x{r['train_over_random']} of a random policy), "
                f"compile {r['compile_seconds']} s, {r['env_steps_per_seed']:,} steps/seed, "
                f"{r['peak_memory_mb']:.0f} MB, return {r['final_return_mean']:.4g}")
    if step["kind"] == "benchmark" and "env_steps_per_second" in r:  # a main()'s summary.json
        return (f"{r['env_steps_per_second']:,.0f} env steps/s, compile {r.get('compile_seconds')} s, "
                f"train {r.get('train_seconds')} s")
    if step["kind"] == "paper":
        parts = []
        for game, g in r.items():
            if g.get("summary"):
                s = g["summary"]
                returns = s["final_return"]
                parts.append(f"{game}: final return {sum(returns) / len(returns):.4g} (mean of {len(returns)}), "
                             f"{s['env_steps_per_second']:,.0f} env steps/s, train {s['train_seconds']} s")
            elif g.get("last_progress"):
                p = g["last_progress"]
                parts.append(f"{game}: stopped at {p['env_steps']:,.0f} steps/seed after {p['seconds']:.0f} s; "
                             f"full run about {g.get('full_run_seconds_estimate', '?')} s")
            else:
                parts.append(f"{game}: no output")
        return "; ".join(parts)
    return ""


if __name__ == "__main__":
    main()
