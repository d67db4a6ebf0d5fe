"""A maintainers' mutation check: does the fast test suite fail when the code is broken the way a real bug would?

Each BREAK below is a one-line change a real bug could make (a λ-return off by one step, truncation taken for
termination, a temperature loss with the wrong sign, a resume from zeros, ...). For each one in turn, this script
copies the repository (the files git knows, tracked or untracked-but-not-ignored) to a temporary directory,
applies the break there, and runs the fast tests (`python -m pytest -m "not slow" -x`): first the test files the
break names as its likely catchers, then, only if none of those failed, the whole fast suite. It prints a table
break -> the first test that failed, and exits 1 if any break was caught by no fast test (then add a test: every
break here must be caught by the fast suite). The real checkout is never touched.

    python scripts/mutation_check.py              # every break (one pytest run per break, seconds to minutes each)
    python scripts/mutation_check.py --list       # the breaks, without running anything
    python scripts/mutation_check.py --only sac-temperature-sign pqn-lambda-off-by-one
    python scripts/mutation_check.py --dry-run    # apply each break and check that it still compiles; no tests
    python scripts/mutation_check.py --markdown   # the table as markdown (docs/testing.md)

Not part of CI: it runs the fast suite once per break. A break whose `old` text no longer occurs exactly once is
an error (the code changed): update the break.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Break:
    name: str
    what: str
    path: str
    old: str
    new: str
    hints: tuple[str, ...]


BREAKS = [
    Break("pqn-lambda-off-by-one", "PQN's λ-return bootstraps from the previous step's next state",
          "algorithms/pqn.py",
          "(rewards, terminated.astype(jnp.float32), done, next_q_max), reverse=True",
          "(rewards, terminated.astype(jnp.float32), done, jnp.roll(next_q_max, 1, axis=0)), reverse=True",
          ("tests/test_pqn.py",)),
    Break("pqn-truncation-as-termination", "PQN stores a time limit as a termination (no bootstrap at truncation)",
          "algorithms/pqn.py",
          "config.reward_scale * reward, terminated, terminated | truncated,",
          "config.reward_scale * reward, terminated | truncated, terminated | truncated,",
          ("tests/test_truncation.py",)),
    Break("pqn-final-eval-other-key", "PQN's last evaluation runs on the update's own key, not final_eval_key(seed)",
          "algorithms/pqn.py",
          "key_eval = jnp.where(is_last, runner.final_eval_key(config.seed), key_eval)",
          "key_eval = key_eval",
          ("tests/test_pqn.py",)),
    Break("sac-bootstrap-through-termination", "SAC's critic target bootstraps past a terminal state",
          "algorithms/sac.py",
          "return reward + gamma * (1.0 - terminated) * (next_q_min - alpha * next_log_prob)",
          "return reward + gamma * (next_q_min - alpha * next_log_prob)",
          ("tests/test_sac.py",)),
    Break("sac-temperature-sign", "SAC's temperature loss has the wrong sign (α moves away from the entropy target)",
          "algorithms/sac.py",
          "return -(jnp.exp(log_alpha) * jax.lax.stop_gradient(log_prob + target_entropy)).mean()",
          "return (jnp.exp(log_alpha) * jax.lax.stop_gradient(log_prob + target_entropy)).mean()",
          ("tests/test_sac.py",)),
    Break("sac-twin-max", "SAC's target takes the max of the twin target critics instead of the min",
          "algorithms/sac.py",
          "next_q_min = critic.apply(state.target_critic, next_obs, next_action).min(0)",
          "next_q_min = critic.apply(state.target_critic, next_obs, next_action).max(0)",
          ("tests/test_sac.py", "tests/test_truncation.py")),
    Break("qarl-force-never-reaches-env", "the adversary's force never reaches the pendulum's dynamics",
          "envs/adversary.py",
          "            u + force_torque\n",
          "            u + 0.0 * force_torque\n",
          ("tests/test_robust_envs.py", "tests/test_qarl.py")),
    Break("qarl-curriculum-away-from-target", "QARL's self-paced update moves the temperature away from its target",
          "algorithms/qarl.py",
          "best = candidates[jnp.argmin(jnp.where(feasible, gamma_kl(candidates, target_shape), jnp.inf))]",
          "best = candidates[jnp.argmin(jnp.where(feasible, -gamma_kl(candidates, target_shape), jnp.inf))]",
          ("tests/test_qarl.py",)),
    Break("iwocs-worst-case-is-best", "IWOCS*'s grid search returns the best model instead of the worst",
          "algorithms/iwocs.py",
          "return flat[jnp.argmin(returns)], returns.min()",
          "return flat[jnp.argmax(returns)], returns.max()",
          ("tests/test_iwocs.py",)),
    Break("iwocs-robust-q-max", "the robust policy follows the model with the highest Q instead of the lowest",
          "algorithms/iwocs.py",
          "action = jnp.where(valid.any(), actions[jnp.argmin(q)], fallback)",
          "action = jnp.where(valid.any(), actions[jnp.argmax(q)], fallback)",
          ("tests/test_iwocs.py",)),
    Break("stream-obgd-unbounded", "ObGD ignores its overshooting bound (the step is α whatever M is)",
          "algorithms/stream_x.py",
          "step_size = jnp.where(bound > 1.0, lr / bound, lr)",
          "step_size = jnp.where(bound > 1.0, lr, lr)",
          ("tests/test_stream_x.py",)),
    Break("stream-trace-not-decayed", "the eligibility trace is not decayed by γλ",
          "algorithms/stream_x.py",
          "traces = jax.tree.map(lambda z, g: trace_decay * z + g, traces, grads)",
          "traces = jax.tree.map(lambda z, g: z + g, traces, grads)",
          ("tests/test_stream_x.py",)),
    Break("sqirl-k-ignored", "SQIRL acts greedily on head 1 (the random policy's Q) whatever k is",
          "algorithms/sqirl.py",
          "return network.apply(params, obs)[..., -1, :].argmax(-1)  # act with head k",
          "return network.apply(params, obs)[..., 0, :].argmax(-1)  # act with head k",
          ("tests/test_sqirl.py",)),
    Break("sqirl-backup-from-own-head", "SQIRL's head j backs up from head j+1 instead of head j-1",
          "algorithms/sqirl.py",
          "* next_q[:, :-1].max(-1)",
          "* next_q[:, 1:].max(-1)",
          ("tests/test_sqirl.py",)),
    Break("envs-running-variance", "the running variance (Welford) uses the new mean twice",
          "envs/normalization.py",
          "sum_squares = self.sum_squares + (sample - self.mean) * (sample - mean)",
          "sum_squares = self.sum_squares + (sample - mean) * (sample - mean)",
          ("tests/test_normalization.py",)),
    Break("envs-time-limit-not-an-episode-end", "episode statistics count only terminations as episode ends",
          "envs/wrappers.py",
          "        done = jnp.logical_or(terminated, truncated)\n        episode_return = state.episode_return",
          "        done = terminated\n        episode_return = state.episode_return",
          ("tests/test_envs.py", "tests/test_stream_x.py")),
    Break("runner-resume-from-zeros", "--resume restores a carry of zeros (the run starts over mid-schedule)",
          "runner.py",
          "carry = jax.tree.unflatten(jax.tree.structure(carry_shape), leaves)",
          "carry = jax.tree.unflatten(jax.tree.structure(carry_shape), [np.zeros_like(x) for x in leaves])",
          ("tests/test_resume_sweep.py",)),
    Break("runner-metric-columns-shifted-on-resume", "a resumed run's saved metrics come back under each other's names",
          "runner.py",
          "metric_leaves = [by_name[\"metric\"][name] for name in metric_names]",
          "metric_leaves = [by_name[\"metric\"][name] for name in metric_names[1:] + metric_names[:1]]",
          ("tests/test_resume_sweep.py",)),
    Break("runner-swept-value-never-read", "a sweep builds every value's program from the unswept config",
          "runner.py",
          "        return make_program(with_values(config, values))",
          "        return make_program(config)",
          ("tests/test_resume_sweep.py",)),
    Break("runner-seed-mix-up", "every seed of --num-seeds N gets the same key",
          "runner.py",
          "jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(num_seeds))",
          "jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.zeros(num_seeds, jnp.int32))",
          ("tests/test_runlog.py",)),
]

FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def copy_repository(destination: Path) -> None:
    """The files git knows (tracked, and untracked ones it does not ignore), copied under `destination`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def apply(copy: Path, item: Break) -> str:
    """Apply the break in the copy; returns the original text (to restore)."""
    path = copy / item.path
    original = path.read_text()
    if original.count(item.old) != 1:
        raise SystemExit(f"break {item.name}: its text occurs {original.count(item.old)} times in {item.path} (once "
                         f"expected): the code changed; update the break in scripts/mutation_check.py.")
    path.write_text(original.replace(item.old, item.new, 1))
    return original


def run_fast_tests(copy: Path, paths: tuple[str, ...], timeout: float) -> tuple[str | None, float]:
    """Run `pytest -m "not slow" -x` on `paths` (all tests when empty): the first failing node id, or None."""
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider", *paths]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # each run's conftest makes its own
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"(timed out after {timeout:.0f} s)", time.monotonic() - start
    found = FAILED_LINE.search(result.stdout)
    if found:
        return found.group(1).split("@")[0], time.monotonic() - start
    if result.returncode not in (0, 5):  # failed without a summary line (a crash, a collection error)
        return f"(pytest exited {result.returncode})", time.monotonic() - start
    return None, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these breaks")
    parser.add_argument("--dry-run", action="store_true", help="apply each break and compile it; run no tests")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--clean-first", action="store_true", help="first check that the fast suite passes unbroken")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="limit of one pytest run (seconds)")
    args = parser.parse_args()
    breaks = BREAKS
    if args.only:
        unknown = sorted(set(args.only) - {b.name for b in BREAKS})
        if unknown:
            raise SystemExit(f"unknown break(s): {', '.join(unknown)}; --list shows them")
        breaks = [b for b in BREAKS if b.name in args.only]
    if args.list:
        for item in breaks:
            print(f"{item.name:42s} {item.path:24s} {item.what}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as scratch:
        copy = Path(scratch)
        copy_repository(copy)
        if args.clean_first and not args.dry_run:
            failed, _ = run_fast_tests(copy, (), args.timeout_s)
            if failed:
                raise SystemExit(f"the fast suite fails without any break ({failed}): fix it first")
        for item in breaks:
            original = apply(copy, item)
            try:
                if args.dry_run:
                    compile((copy / item.path).read_text(), item.path, "exec")
                    rows.append((item, "(compiles)", 0.0))
                    continue
                failed, seconds = run_fast_tests(copy, item.hints, args.timeout_s)
                if failed is None:  # not caught where expected: the whole fast suite
                    failed, more = run_fast_tests(copy, (), args.timeout_s)
                    seconds += more
                rows.append((item, failed or "NOT CAUGHT", seconds))
                print(f"{item.name}: {failed or 'NOT CAUGHT'} ({seconds:.0f} s)", file=sys.stderr, flush=True)
            finally:
                (copy / item.path).write_text(original)
    if args.markdown:
        print("| break | file | what it breaks | first fast test that fails |")
        print("|---|---|---|---|")
        for item, failed, _ in rows:
            print(f"| {item.name} | `{item.path}` | {item.what} | `{failed}` |")
    else:
        for item, failed, seconds in rows:
            print(f"{item.name:42s} {failed}  ({seconds:.0f} s)")
    return 1 if any(failed == "NOT CAUGHT" or failed.startswith("(") and failed != "(compiles)"
                    for _, failed, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
