"""Shared test setup. The suite runs in two pytest-xdist worker processes (pyproject.toml); on a GPU, two
processes that each preallocated 75% of its memory would not fit, so JAX allocates on demand here."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _share_compiled_programs():
    """One persistent XLA compilation cache for the session: many tests compile the same program again (a run and
    its resumed copy, a determinism check, the same tiny run in several modules), and a program compiled once
    is loaded from disk by every later test, in either worker and in the processes tests start (they inherit the
    variable). The cached executable is the same binary, so results are unchanged; the directory is new for each
    session (set by the first process, before the workers start) and removed at its end. JAX keeps no program
    with a host callback, so only `--quiet` runs (no progress callback) and plain jitted functions are shared."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    directory = tempfile.mkdtemp(prefix="jax-test-programs-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


_share_compiled_programs()


def _pin_worker_to_its_core():
    """With as many xdist workers as usable cores, worker i runs on core i (and so do the processes it starts):
    XLA then sizes its thread pool to one core instead of every worker spreading threads over all of them, which
    costs CPU time when every core is busy anyway. Set before JAX starts its threads."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and count and hasattr(os, "sched_setaffinity")) or os.environ.get("TESTS_NO_PINNING"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if int(count) == len(cores):
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw"))]})


_pin_worker_to_its_core()

# Scheduling for the two workers (`--dist loadgroup --no-loadscope-reorder`): a worker takes the next unit of work
# in the order below when it is free, so the longest units go first and the last ones to finish are short
# (longest-first scheduling; with xdist's default order, by test count, one worker idled for minutes at the end).
# A unit is one slow test that uses no module-scoped fixture (a learning test: they share nothing), or one whole
# module (its tests share module-scoped fixtures and compiled programs; its slow tests that use such a fixture
# stay in it). Modules heaviest first, by the CI log's durations; the rest keep
# their collection order. A stale list costs balance, never correctness.
HEAVY_MODULES = ("test_reproduce", "test_resume_sweep", "test_iwocs", "test_qarl", "test_sac", "test_cli", "test_dmc",
                 "test_sharding", "test_stream_x", "test_pqn", "test_truncation", "test_sqirl", "test_evaluate",
                 "test_gpu_check")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items):
    def rank(item):
        if item.get_closest_marker("slow"):
            return -1
        module = item.module.__name__.rpartition(".")[2]
        return HEAVY_MODULES.index(module) if module in HEAVY_MODULES else len(HEAVY_MODULES)

    for item in items:
        if not item.get_closest_marker("slow") or shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=rank)  # stable: a module's tests keep their order


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a fixture of its own module that outlives one test (a trained run, a pair of sharded
    processes): such a slow test must stay in its module's group, or the fixture is built on both workers."""
    module = item.nodeid.split("::")[0]
    return any(definition.scope != "function" and definition.baseid == module
               for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions)
