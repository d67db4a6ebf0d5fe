"""The suite's own machinery: the scheduling of tests/conftest.py works with the installed pytest and xdist.

The module-scoped fixtures of a module (a trained run, a pair of sharded processes) are built once only if all of
the module's tests that use them run on one xdist worker: conftest.py puts each module in an xdist group (slow
tests too when they use such a fixture), and `--dist loadgroup` keeps a group together. That relies on xdist marking each test's node id with its group, which
pytest 9.2 ignores (with pytest-xdist 3.8 every group is split over the workers, and every module fixture is
built twice). This runs a toy suite under this conftest.py with two workers and counts the fixture builds.
"""

import shutil
import subprocess
import sys
from pathlib import Path

TOY_MODULE = '''
import os
import pytest


@pytest.fixture(scope="module")
def built():
    with open(os.environ["TOY_BUILDS"], "a") as f:
        f.write(__name__ + "\\n")


@pytest.mark.parametrize("i", range(6))
def test_uses_the_fixture(built, i):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("i", range(3))
def test_slow_and_uses_the_fixture(built, i):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("i", range(3))
def test_slow_alone(i):
    pass
'''


def test_a_modules_fixture_is_built_once_over_two_workers(tmp_path):
    toy = tmp_path / "toy"
    (toy / "tests").mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), toy / "tests" / "conftest.py")
    for name in ("test_alpha", "test_beta", "test_gamma"):
        (toy / "tests" / f"{name}.py").write_text(TOY_MODULE)
    builds = tmp_path / "builds.txt"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                             "loadgroup", "tests"], cwd=toy, capture_output=True, text=True,
                            env={**__import__("os").environ, "TOY_BUILDS": str(builds)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "36 passed" in result.stdout, result.stdout[-2000:]
    built = builds.read_text().split()
    assert sorted(built) == sorted(set(built)) and len(built) == 3, f"module fixtures built {built}"
