"""A maintainers' mutation check: does the fast test suite fail when the code is broken the way a real bug would?

Each BREAK below is a one-line change a real bug could make (a λ-return off by one step, truncation taken for
termination, a temperature loss with the wrong sign, a resume from zeros, ...). For each one in turn, this script
copies the repository (the files git knows, tracked or untracked-but-not-ignored) to a temporary directory,
applies the break there, and runs the fast tests in the copy (`python -m pytest -m "not slow" -x`): first the
test files the break names as its likely catchers, then, only if none of those failed, the whole fast suite.
The file is restored after each break, so breaks never accumulate; the real checkout is never touched. It
prints a table break -> what it breaks -> the first test that failed, and exits 1 if any break was caught by no
fast test. Every break here must be caught by a fast test: where one is not, add a test (not to CI's slow set).

    python scripts/mutation_check.py              # every break
    python scripts/mutation_check.py --list       # the breaks, without running anything
    python scripts/mutation_check.py --only sac-temperature-sign pqn-lambda-off-by-one
    python scripts/mutation_check.py --dry-run    # apply each break, check it compiles and is undone; no tests
    python scripts/mutation_check.py --markdown   # the table as markdown (docs/testing.md)
    python scripts/mutation_check.py --clean-first  # first check that the unbroken fast suite passes

How long: a break caught by its hinted files costs one run of those files (15-40 s on a 2-core CPU); a break
they miss also costs a run of the whole fast suite (about 3 minutes), so a full table takes roughly 10-30
minutes, longer the more breaks go uncaught. Each pytest run is cut off after --timeout-s (900 s).

Not part of CI. A break whose `old` text no longer occurs exactly once is an error (the code changed): update it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Break:
    name: str
    description: str  # what it breaks, one line
    path: str  # relative to the repository root
    old: str  # exact source text, occurring once in the file
    new: str  # what replaces it
    hints: tuple[str, ...]  # test files expected to catch it


BREAKS = [
    # --- algorithms/pqn.py
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
    Break("pqn-never-explores", "PQN's ε-greedy takes the greedy action on both branches (ε has no effect)",
          "algorithms/pqn.py",
          "jax.random.uniform(key_explore, greedy.shape) < epsilon, random_action, greedy)",
          "jax.random.uniform(key_explore, greedy.shape) < epsilon, greedy, greedy)",
          ("tests/test_pqn.py",)),
    Break("pqn-layer-norm-ignored", "PQN's --norm layer builds no LayerNorm (the paper's stabiliser is gone)",
          "algorithms/pqn.py",
          "                return nn.LayerNorm()(x)\n",
          "                return x\n",
          ("tests/test_pqn.py",)),
    Break("pqn-final-eval-other-key", "PQN's last evaluation runs on the update's own key, not final_eval_key(seed)",
          "algorithms/pqn.py",
          "key_eval = jnp.where(is_last, runner.final_eval_key(config.seed), key_eval)",
          "key_eval = key_eval",
          ("tests/test_pqn.py",)),
    # --- algorithms/sac.py
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
    Break("sac-polyak-arguments-swapped", "SAC's target critics move by 1 - τ per step (near copies), not by τ",
          "algorithms/sac.py",
          "optax.incremental_update(critic_params, state.target_critic, config.tau)",
          "optax.incremental_update(state.target_critic, critic_params, config.tau)",
          ("tests/test_sac.py",)),
    # --- algorithms/qarl.py and its adversary env
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
    # --- algorithms/iwocs.py
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
    # --- algorithms/stream_x.py
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
    Break("stream-sparse-init-inverted", "sparse init zeroes 10% of each unit's inputs instead of 90%",
          "algorithms/stream_x.py",
          "jnp.where(rank < math.ceil(sparsity * fan_in), 0.0, weights)",
          "jnp.where(rank < math.ceil((1 - sparsity) * fan_in), 0.0, weights)",
          ("tests/test_stream_x.py",)),
    # --- algorithms/sqirl.py
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
    # --- envs/
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
    # --- runner.py, runlog.py
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
    Break("runlog-first-metric-row-dropped", "metrics_seed<i>.csv loses the first update's row (rows off by one)",
          "runlog.py",
          "writer.writerows(zip(*(v[seed].tolist() for v in metrics.values())))",
          "writer.writerows(zip(*(v[seed, 1:].tolist() for v in metrics.values())))",
          ("tests/test_resume_sweep.py", "tests/test_runlog.py")),
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
    # No shard_seeds/placement break: the seed order of a sharded array is its logical order, whatever order the
    # Mesh lists the devices in (reversing them moves shards, not seeds), so no one-line change there reorders
    # seeds. The seed mix-up below is where a run's seeds are picked apart again (scripts/evaluate.py).
    Break("runner-evaluate-seed-index-ignored", "scripts/evaluate.py --seed-index i rebuilds seed 0's policy",
          "runner.py",
          "jnp.asarray(np.asarray(x)[index])",
          "jnp.asarray(np.asarray(x)[0])",
          ("tests/test_runlog.py",)),
    Break("runner-final-eval-key-ignores-seed", "the final evaluation's episodes are the same whatever --seed",
          "runner.py",
          "return jax.random.fold_in(jax.random.PRNGKey(seed), FINAL_EVALUATION)",
          "return jax.random.fold_in(jax.random.PRNGKey(0), FINAL_EVALUATION)",
          ("tests/test_runlog.py",)),
]

SUMMARY_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)  # pytest's short test summary (-ra)


def copy_repository(destination: Path) -> None:
    """The files git knows (tracked, and untracked ones it does not ignore), copied under `destination`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():  # (a file deleted but not yet staged is listed and absent)
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def check_current(copy: Path, item: Break) -> str:
    """The file's text, after checking that the break's `old` text occurs in it exactly once."""
    text = (copy / item.path).read_text()
    if text.count(item.old) != 1:
        raise SystemExit(f"break {item.name} is stale: its old text occurs {text.count(item.old)} times in "
                         f"{item.path} (once expected): the code changed; update the break in {Path(__file__).name}.")
    return text


def run_fast_tests(copy: Path, paths: tuple[str, ...], timeout: float) -> tuple[str | None, float]:
    """`pytest -m "not slow" -x` on `paths` (the whole fast suite when empty) in the copy: the first failing
    node id (or a note in parentheses when pytest crashed or timed out), or None when nothing failed."""
    start = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider", *paths]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # each run's conftest makes its own
    # A session of its own, so that a timeout ends pytest and its xdist workers together.
    process = subprocess.Popen(command, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"(timed out after {timeout:.0f} s)", time.monotonic() - start
    found = SUMMARY_LINE.search(output)
    if found:
        return re.sub(r"@[\w.-]+$", "", found.group(1)), time.monotonic() - start  # xdist's @group suffix
    if process.returncode not in (0, 5):  # failed without a summary line (a crash); 5: nothing collected
        return f"(pytest exited {process.returncode})", time.monotonic() - start
    return None, time.monotonic() - start


def check_one(copy: Path, item: Break, dry_run: bool, timeout: float) -> tuple[str, float]:
    """Apply the break in the copy, test it (or, dry, compile it), restore the file: (result, seconds)."""
    path = copy / item.path
    original = check_current(copy, item)
    broken = original.replace(item.old, item.new, 1)
    path.write_text(broken)
    try:
        if dry_run:
            compile(broken, item.path, "exec")  # a SyntaxError here is a bad break
            return ("(compiles)" if broken != original else "(changes nothing!)"), 0.0
        failed, seconds = run_fast_tests(copy, item.hints, timeout)
        if failed is None:  # not caught where expected: the whole fast suite
            failed, more = run_fast_tests(copy, (), timeout)
            seconds += more
        return failed or "NOT CAUGHT", seconds
    finally:
        path.write_text(original)
        if path.read_text() != original:
            raise SystemExit(f"{item.path} was not restored after {item.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these breaks")
    parser.add_argument("--dry-run", action="store_true", help="apply each break, compile it, undo it; no tests")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--clean-first", action="store_true", help="first check that the fast suite passes unbroken")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="limit of one pytest run (seconds)")
    args = parser.parse_args()
    names = [item.name for item in BREAKS]
    assert len(set(names)) == len(names), "two breaks share a name"
    breaks = BREAKS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown break(s): {', '.join(unknown)}; --list shows them")
        breaks = [item for item in BREAKS if item.name in args.only]
    if args.list:
        for item in breaks:
            print(f"{item.name:40s} {item.path:24s} {item.description}")
            print(f"{'':40s} hints: {', '.join(item.hints)}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as scratch:
        copy = Path(scratch)
        copy_repository(copy)
        for item in breaks:  # every break still applies, before hours of tests
            check_current(copy, item)
        if args.clean_first and not args.dry_run:
            failed, seconds = run_fast_tests(copy, (), args.timeout_s)
            if failed:
                raise SystemExit(f"the fast suite fails without any break ({failed}): fix it first; a break table "
                                 f"over a failing suite means nothing")
            print(f"unbroken fast suite passes ({seconds:.0f} s)", file=sys.stderr, flush=True)
        for item in breaks:
            result, seconds = check_one(copy, item, args.dry_run, args.timeout_s)
            rows.append((item, result, seconds))
            if not args.dry_run:
                print(f"{item.name}: {result} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    if args.markdown:
        print("| break | file | what it breaks | first fast test that fails |")
        print("|---|---|---|---|")
        for item, result, _ in rows:
            print(f"| {item.name} | `{item.path}` | {item.description} | `{result}` |")
    else:
        for item, result, seconds in rows:
            print(f"{item.name:40s} | {item.description:80s} | {result}" + ("" if args.dry_run else f" ({seconds:.0f} s)"))
    ok = "(compiles)" if args.dry_run else None
    bad = [item.name for item, result, _ in rows if result == "NOT CAUGHT" or result.startswith("(") and result != ok]
    if bad:
        print(f"{len(bad)} of {len(rows)} not cleanly caught: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
