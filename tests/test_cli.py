"""Every algorithm file runs as a script from the repository root: `--help`, and a tiny run of a copy
saved under another name in algorithms/ (users copy files to make variants)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = sorted(p.stem for p in (ROOT / "algorithms").glob("*.py") if p.stem != "__init__")

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


def test_every_algorithm_has_a_tiny_setting():
    assert set(ALGORITHMS) == set(TINY), "add the new algorithm's tiny flags to TINY"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_help(name):
    result = subprocess.run([sys.executable, f"algorithms/{name}.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--preset" in result.stdout and "--num-seeds" in result.stdout and "--total-timesteps" in result.stdout


@pytest.mark.parametrize("name", ALGORITHMS)
def test_copied_file_runs(name, tmp_path):
    copy = ROOT / "algorithms" / f"{name}_copy_under_test.py"
    shutil.copy(ROOT / "algorithms" / f"{name}.py", copy)
    try:
        result = subprocess.run([sys.executable, f"algorithms/{copy.name}", *TINY[name], "--quiet", "--run-dir",
                                 str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp_path / "run" / "summary.json").exists()
    finally:
        copy.unlink()
