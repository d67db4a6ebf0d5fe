"""scripts/gpu_check.py: `--tiny` runs every kind of step on this CPU and writes the report; a failing step is
recorded and the next one runs; a step past its time limit is stopped and recorded; the full-size (GPU) flags
make valid configs for every algorithm, so the GPU session does not find a typo."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from tests.test_cli import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.slow
def test_tiny_check_writes_the_report_and_records_a_failing_step(tmp_path):
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--tiny", "--out", str(tmp_path),
                             "--algorithms", "stream_x,no_such_algorithm"], cwd=ROOT, capture_output=True, text=True,
                            timeout=2400)  # only a guard against a hang: --tiny's own budget is 1800 s
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert report["tiny"] and "finished" in report
    assert list(steps) == ["environment", "tests", "benchmark stream_x cartpole-q x1", "benchmark stream_x cartpole-q x2",
                           "benchmark no_such_algorithm x1", "benchmark no_such_algorithm x2",
                           "paper pqn cartpole CartPole-v1+Acrobot-v1 x2 seeds"]
    assert steps["environment"]["status"] == "ok" and steps["environment"]["result"]["backend"] == "cpu"
    tests = steps["tests"]
    assert tests["status"] == "ok" and tests["result"]["counts"] == {"passed": 1} and not tests["result"]["failures"]
    for seeds in (1, 2):
        bench = steps[f"benchmark stream_x cartpole-q x{seeds}"]
        assert bench["status"] == "ok", bench.get("error")
        assert bench["result"]["num_seeds"] == seeds and bench["result"]["train_env_steps_per_second"] > 0
        failed = steps[f"benchmark no_such_algorithm x{seeds}"]  # recorded, and the steps after it still ran
        assert failed["status"] == "failed" and "No module named 'algorithms.no_such_algorithm'" in failed["error"]
    paper = steps["paper pqn cartpole CartPole-v1+Acrobot-v1 x2 seeds"]
    assert paper["status"] == "ok"
    for game in ("CartPole-v1", "Acrobot-v1"):
        summary = paper["result"][game]["summary"]
        assert summary["env_id"] == game and summary["num_seeds"] == 2 and len(summary["final_return"]) == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "| step | status | seconds | figures |" in markdown
    assert all(f"| {name} |" in markdown for name in steps)
    assert "env steps/s" in markdown and "No module named" in markdown


def test_a_step_past_its_limit_is_stopped_and_recorded(tmp_path):
    """A step that outlives its limit is killed (its process is gone when `run` returns) and recorded as a
    timeout; no wall-clock bound is asserted."""
    env = dict(os.environ)
    pid_file = tmp_path / "pid"
    # (an xdist worker ignores SIGINT and its children inherit that: the sleeper takes it back, so the step's
    # SIGINT ends it at once rather than the SIGKILL 10 s later)
    sleeper = (f"import os, pathlib, signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
               f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(120)")
    outcome = gpu_check.run([sys.executable, "-c", sleeper], env, limit=5, deadline=time.monotonic() + 100)
    assert outcome["status"] == "timeout"
    with pytest.raises(ProcessLookupError):  # killed, not waited for
        os.kill(int(pid_file.read_text()), 0)
    skipped = gpu_check.run([sys.executable, "-c", "pass"], env, limit=60, deadline=time.monotonic() + 1)
    assert skipped["status"] == "skipped"


@pytest.mark.parametrize("entry", gpu_check.BENCHMARKS, ids=lambda b: f"{b[0]}-{b[1]}")
def test_full_size_flags_make_valid_configs(entry):
    import runner

    algorithm, preset, total, extra = entry
    module = importlib.import_module(f"algorithms.{algorithm}")
    for num_seeds in (1, 16):
        args = ["--preset", preset, "--num-seeds", str(num_seeds), *(["--total-timesteps", str(total)] if total else []),
                *extra, "--quiet"]
        module.derive_sizes(runner.parse_config(module.Config, module.PRESETS, args))  # raises on a bad config
    if algorithm == "pqn":  # the paper run
        for game in gpu_check.PAPER_GAMES:
            config = runner.parse_config(module.Config, module.PRESETS, [
                "--preset", "minatar", "--env-id", game, "--num-seeds", str(gpu_check.PAPER_SEEDS),
                "--total-timesteps", "10000000"])
            module.derive_sizes(config)
            module.make_env(config)  # the game exists
