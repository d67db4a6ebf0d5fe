"""Every algorithm file runs as a script from the repository root: `--help`, and a tiny run of a copy
saved under another name in algorithms/ (users copy files to make variants).

The copies are made in a temporary checkout (its own algorithms/, with envs/, runner.py and runlog.py beside it), never
in this repository's algorithms/, so the suite also passes on a read-only checkout. A file in algorithms/
that is not one of the collection's (a user's own variant) is `--help`-checked, not trained: the suite
cannot know its tiny settings (add them to TINY to have it trained here too)."""

import csv
import functools
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runner

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p.stem for p in (ROOT / "algorithms").glob("*.py") if p.stem != "__init__")

# A few seconds of training per algorithm; a new algorithm file must add its entry here.
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


ALGORITHMS = sorted(TINY)  # the collection's files; others in algorithms/ are users' own


def test_every_algorithm_file_is_there():
    assert set(ALGORITHMS) <= set(FILES), f"missing from algorithms/: {sorted(set(ALGORITHMS) - set(FILES))}"


# Runs files as `python <file> <args>` would, several in one Python process (one JAX import for all): each file runs
# as __main__ with its own directory first on sys.path and its own sys.argv, and the checkout's modules it imported
# (runner, runlog, envs, algorithms) are forgotten before the next file, so each imports them afresh from where its
# own sys.path points. What it prints and its exit status are what the shell would see: SystemExit's message on
# stderr, an uncaught exception's traceback. One real `python algorithms/<copy>.py` per file runs in
# test_copied_file_runs; test_a_file_imports_the_runner_runlog_and_envs_of_its_own_checkout is one too.
AS_SCRIPTS = """
import contextlib, io, json, os, runpy, sys, traceback

project = ("runner", "runlog", "envs", "algorithms")
path, results = list(sys.path), []
for script, *args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv, sys.path[:] = [script, *args], [os.path.dirname(os.path.abspath(script)), *path[1:]]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if exit.code is not None and not isinstance(exit.code, int):
                print(exit.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    for module in [m for m in sys.modules if m.split(".")[0] in project]:
        del sys.modules[module]
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("RESULTS" + json.dumps(results))
"""


def run_as_scripts(commands: list[list[str]], cwd: Path) -> list[dict]:
    """[returncode, stdout, stderr] of each `python *command` run from `cwd`, all in one Python process."""
    result = subprocess.run([sys.executable, "-c", AS_SCRIPTS, json.dumps(commands)], cwd=cwd, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "RESULTS" in result.stdout, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


@pytest.fixture(scope="module")
def from_the_shell(tmp_path_factory):
    """Every file's `--help`, and every collection file run with a value the checks reject (into a run directory
    that must not appear), as from the shell at the repository root."""
    run_root = tmp_path_factory.mktemp("bad-input")
    commands = {("help", name): [f"algorithms/{name}.py", "--help"] for name in FILES}
    commands |= {("bad", name): [f"algorithms/{name}.py", "--gamma", "1.5", "--quiet", "--run-dir", str(run_root / name)]
                 for name in ALGORITHMS}
    results = dict(zip(commands, run_as_scripts(list(commands.values()), ROOT)))
    return results, run_root


@pytest.mark.parametrize("name", FILES)
@pytest.mark.slow
def test_help(name, from_the_shell):
    result = from_the_shell[0]["help", name]
    assert result["returncode"] == 0, result["stderr"][-2000:]
    assert "--preset" in result["stdout"] and "--num-seeds" in result["stdout"] and "--total-timesteps" in result["stdout"]


def checkout_copy(tmp_path: Path) -> Path:
    """A checkout in tmp_path: this repository's envs/, runner.py and runlog.py, and an empty algorithms/ to copy
    into."""
    checkout = tmp_path / "checkout"
    (checkout / "algorithms").mkdir(parents=True)
    shutil.copytree(ROOT / "envs", checkout / "envs", ignore=shutil.ignore_patterns("__pycache__"))
    for module in ("runner.py", "runlog.py"):
        shutil.copy(ROOT / module, checkout / module)
    return checkout


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.slow
def test_copied_file_runs(name, tmp_path):
    """A copy under a new name runs, sweeps and names its
    output after itself. JAX's float64-truncation warning is an error in these runs: a dtype=float64 request in
    the training code would silently compute in float32."""
    checkout = checkout_copy(tmp_path)
    copy = checkout / "algorithms" / f"{name}_variant.py"
    shutil.copy(ROOT / "algorithms" / f"{name}.py", copy)
    param = {"stream_x": "lr", "iwocs": "tau"}.get(name, "gamma")
    sweep = ["--sweep", f"{param}=0.5,0.9"]
    result = subprocess.run([sys.executable, "-W", "error:Explicitly requested dtype:UserWarning",
                             f"algorithms/{copy.name}", *TINY[name], *sweep, "--quiet", "--run-dir",
                             str(tmp_path / "run")], cwd=checkout, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for run in [tmp_path / "run" / f"{param}={v}" for v in ("0.5", "0.9")]:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["algorithm"] == f"{name}_variant"  # a copy names itself after its file
        config = json.loads((run / "config.json").read_text())  # each value's directory records its own value
        assert config[param] == float(run.name.partition("=")[2]) and config["sweep"] == ""


@pytest.mark.slow
def test_a_copy_resumes_under_its_own_name(tmp_path, monkeypatch):
    """A copy cut after its first checkpoint (as a killed run) continues with --resume, as its own algorithm."""
    checkout = checkout_copy(tmp_path)
    copy = checkout / "algorithms" / "pqn_variant.py"
    shutil.copy(ROOT / "algorithms" / "pqn.py", copy)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the copy puts its checkout first; undone after the test
    spec = importlib.util.spec_from_file_location("pqn_variant", copy)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pqn_variant", module)
    spec.loader.exec_module(module)
    flags = [*TINY["pqn"], "--num-checkpoints", "2", "--quiet", "--run-dir", str(tmp_path / "run")]
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_program", functools.partial(runner.run_program, stop_after_chunks=1))
        with pytest.raises(runner.RunInterrupted):
            module.main(flags)
    assert not (tmp_path / "run" / "summary.json").exists()
    summary = module.main(["--resume", str(tmp_path / "run"), "--quiet"])
    assert summary["algorithm"] == "pqn_variant" and summary["env_steps"] == 4096
    assert json.loads((tmp_path / "run" / "config.json").read_text())["algorithm"] == "pqn_variant"


@pytest.mark.slow
def test_a_file_imports_the_runner_runlog_and_envs_of_its_own_checkout(tmp_path):
    """A second checkout's file uses that checkout's runner.py, runlog.py and envs/, whatever copy is installed
    (the editable install points at this repository) and whatever the working directory."""
    checkout = checkout_copy(tmp_path)
    shutil.copy(ROOT / "algorithms" / "pqn.py", checkout / "algorithms" / "pqn.py")
    for path, marker in ((checkout / "runner.py", "runner"), (checkout / "runlog.py", "runlog"),
                         (checkout / "envs" / "__init__.py", "envs")):
        with open(path, "a") as f:
            f.write(f"\nprint('{marker} of the second checkout')\n")
    result = subprocess.run([sys.executable, str(checkout / "algorithms" / "pqn.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(f"{marker} of the second checkout" in result.stdout for marker in ("runner", "runlog", "envs"))


SCRIPTS = ["benchmark", "bench_robust_envs", "compare_brax_sac", "effective_horizon", "evaluate"]


@pytest.fixture(scope="module")
def scripts_of_a_second_checkout(tmp_path_factory):
    """Each script of a second checkout (its runner.py and envs/ marked) run with --help from outside it."""
    tmp_path = tmp_path_factory.mktemp("second-checkout")
    checkout = checkout_copy(tmp_path)
    (checkout / "scripts").mkdir()
    for script in SCRIPTS:
        shutil.copy(ROOT / "scripts" / f"{script}.py", checkout / "scripts")
    for name in ["__init__", *ALGORITHMS]:
        shutil.copy(ROOT / "algorithms" / f"{name}.py", checkout / "algorithms")
    for path in (checkout / "runner.py", checkout / "envs" / "__init__.py"):
        with open(path, "a") as f:
            f.write("\nprint('imported from the second checkout')\n")
    commands = [[str(checkout / "scripts" / f"{script}.py"), "--help"] for script in SCRIPTS]
    return dict(zip(SCRIPTS, run_as_scripts(commands, tmp_path)))


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.slow
def test_a_script_imports_the_runner_and_envs_of_its_own_checkout(script, scripts_of_a_second_checkout):
    """The same for the scripts: scripts/X.py of a second checkout imports that checkout's runner.py and envs/."""
    result = scripts_of_a_second_checkout[script]
    assert result["returncode"] == 0, result["stderr"][-2000:]
    assert "imported from the second checkout" in result["stdout"]


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.slow
def test_bad_input_is_one_line_on_the_command_line(name, from_the_shell):
    """From the shell, a value the checks reject is one line that says what to change, not a traceback, and
    nothing is written (tests/test_bad_input.py covers every kind of bad input in-process)."""
    results, run_root = from_the_shell
    result = results["bad", name]
    assert result["returncode"] != 0 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    assert result["stderr"].strip().splitlines()[-1].startswith("error: gamma must be in"), result["stderr"][-500:]
    assert not (run_root / name).exists()


LOOP_MAIN = '''

# A Python outer loop over the jitted update, as purejaxql's simplified scripts are written, with the run output
# module for the run directory (no runner.train: no chunks, resume or sweep).
import runlog  # noqa: E402


def main(args=None):
    config = runner.parse_config(Config, PRESETS, args)
    program = make_train(config)
    run_dir = runlog.run_path(config, NAME)
    runlog.start_run(run_dir, config, NAME)
    update = jax.jit(program.update)
    carry = jax.jit(program.init)(jax.random.PRNGKey(config.seed))
    rows = []
    for index in range(program.num_updates):
        carry, metrics = update(carry, index)
        rows.append(jax.device_get(metrics))
    metrics = {key: np.stack([row[key] for row in rows])[None] for key in rows[0]}  # [1 seed, updates]
    state = program.result(carry)
    return runlog.finish_run(run_dir, config, NAME, metrics, final_return=metrics["eval_return"][:, -1],
                             checkpoint={"params": state.params}, compile_seconds=0.0, train_seconds=1.0)


if __name__ == "__main__":
    runner.cli(main)
'''


@pytest.mark.slow
def test_a_copy_with_a_python_outer_loop_still_writes_a_run(tmp_path):
    """pqn.py copied and given a plain Python loop over its jitted `update` in place of runner.train writes the
    same kind of run directory through runlog alone: the program's pieces are usable without the harness."""
    checkout = checkout_copy(tmp_path)
    source = (ROOT / "algorithms" / "pqn.py").read_text()
    source = source[:source.index("def main(")] + LOOP_MAIN.lstrip("\n")
    (checkout / "algorithms" / "pqn_loop.py").write_text(source)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "algorithms/pqn_loop.py", *TINY["pqn"], "--run-dir", str(run_dir)],
                            cwd=checkout, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algorithm"] == "pqn_loop" and summary["env_steps"] == 4096
    rows = list(csv.DictReader(open(run_dir / "metrics_seed0.csv")))
    assert [int(row["env_steps"]) for row in rows] == [2048, 4096]  # 2 updates of 32 envs x 64 steps
    assert float(rows[-1]["eval_return"]) == summary["final_return"][0] > 0
