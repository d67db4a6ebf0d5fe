"""Shared test setup. The suite runs in two pytest-xdist worker processes (pyproject.toml); on a GPU, two
processes that each preallocated 75% of its memory would not fit, so JAX allocates on demand here."""

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

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

# Most of the suite's time is XLA compiling small programs that then run for a fraction of a second (a tiny run
# of every file: 110 s of compiling, 1 s of running). XLA's CPU backend at optimisation level 0 compiles them in
# about half the time and runs them about 2-3x slower. The operations are the same, but their rounding may not be
# (the optimiser fuses and reorders some float arithmetic), so a run can end elsewhere than under XLA's defaults:
# every equality in the suite compares programs built under the same flags, and the few that compare two
# different programs (sharding, evaluate.py) have tolerances for rounding. The learning checks run long enough
# for optimised code to pay, and their bars were measured with it: they are marked `optimised` and run in a
# process of their own with the flags the suite started with (`_OptimisedProcess`), as a user's run.
FAST_COMPILE = "--xla_backend_optimization_level=0"
_USERS_XLA_FLAGS = os.environ.get("TESTS_USERS_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
os.environ["TESTS_USERS_XLA_FLAGS"] = _USERS_XLA_FLAGS  # (set once, by the first process: workers inherit it)
if not os.environ.get("TESTS_OPTIMISED") and FAST_COMPILE not in _USERS_XLA_FLAGS:
    os.environ["XLA_FLAGS"] = f"{_USERS_XLA_FLAGS} {FAST_COMPILE}".strip()


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


class _OptimisedProcess:
    """One fresh pytest process, with the XLA flags the suite started with (optimised code), that runs every
    `optimised` test of the session in the order this process runs them (they form one xdist group, so they all
    come to the worker holding it): one Python start, JAX import and collection for all of them instead of one
    each. Started by the first of them; each test then waits for its own report, which the process appends to a
    file as a JSON line (`pytest_runtest_logreport` below), so every test's duration is its own."""

    def __init__(self, items):
        self.nodeids = [item.nodeid.split("@")[0] for item in items]  # (without an xdist group suffix)
        directory = tempfile.mkdtemp(prefix="optimised-tests-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        self.reports, self.output = os.path.join(directory, "reports.jsonl"), os.path.join(directory, "output.txt")
        env = dict(os.environ, TESTS_OPTIMISED="1", TESTS_OPTIMISED_REPORTS=self.reports, XLA_FLAGS=_USERS_XLA_FLAGS)
        with open(self.output, "w") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pytest", *self.nodeids, "-n", "0", "-p", "no:cacheprovider", "-q",
                 "--no-header", "-o", "addopts="], cwd=items[0].config.rootpath, env=env,
                stdout=output, stderr=subprocess.STDOUT)
        atexit.register(self.process.kill)
        self.seen: dict[str, list[dict]] = {}
        self.offset = 0

    def _read(self) -> None:
        if not os.path.exists(self.reports):
            return
        with open(self.reports) as f:
            f.seek(self.offset)
            for line in f:
                if not line.endswith("\n"):  # written in part: read again next time
                    break
                self.offset += len(line)
                report = json.loads(line)
                self.seen.setdefault(report["nodeid"], []).append(report)

    def result(self, nodeid: str) -> list[dict]:
        """The test's reports (setup, call, teardown) once its last one is written, or the process has ended."""
        while True:
            self._read()
            reports = self.seen.get(nodeid, [])
            if any(r["when"] == "teardown" for r in reports):
                return reports
            if self.process.poll() is not None:
                self._read()
                return self.seen.get(nodeid, [])
            time.sleep(0.2)

    def tail(self) -> str:
        with open(self.output) as f:
            return f.read()[-6000:]


_optimised_process: list[_OptimisedProcess] = []


def _run_in_the_optimised_process(item) -> None:
    """An `optimised` test's outcome in the optimised process: it fails here with that process's report if it
    failed there, is skipped if it was skipped there, and fails if that process never reported it."""
    if not _optimised_process:
        _optimised_process.append(_OptimisedProcess([i for i in item.session.items if i.get_closest_marker("optimised")]))
    process = _optimised_process[0]
    reports = process.result(item.nodeid.split("@")[0])
    where = f"in the optimised process (XLA_FLAGS={_USERS_XLA_FLAGS!r})"
    if not reports:
        pytest.fail(f"{where}: no report for this test; its output:\n{process.tail()}", pytrace=False)
    for report in reports:
        if report["outcome"] == "failed":
            pytest.fail(f"{where}, {report['when']}:\n{report['longrepr'][-6000:]}", pytrace=False)
        if report["outcome"] == "skipped":  # relays that process's skip (no optimised test skips today), so a
            pytest.skip(f"{where}: {report['longrepr'][-500:]}")  # skip there is not reported here as a pass


def pytest_runtest_logreport(report):
    """Inside the optimised process: each test's reports, one JSON line each, for the suite's process to read."""
    path = os.environ.get("TESTS_OPTIMISED_REPORTS")
    if path:
        line = json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                           "longrepr": "" if report.passed else str(report.longrepr)})
        with open(path, "a") as f:
            f.write(line + "\n")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items):
    if not os.environ.get("TESTS_OPTIMISED"):
        for item in items:
            if item.get_closest_marker("optimised"):
                item.runtest = functools.partial(_run_in_the_optimised_process, item)

    def rank(item):
        if item.get_closest_marker("optimised"):
            return -2
        if item.get_closest_marker("slow"):
            return -1
        module = item.module.__name__.rpartition(".")[2]
        return HEAVY_MODULES.index(module) if module in HEAVY_MODULES else len(HEAVY_MODULES)

    for item in items:
        if item.get_closest_marker("optimised"):  # one unit: they run in one process (_OptimisedProcess)
            item.add_marker(pytest.mark.xdist_group("optimised"))
        elif not item.get_closest_marker("slow") or shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=rank)  # stable: a module's tests keep their order


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a fixture of its own module that outlives one test (a trained run, a pair of sharded
    processes): such a slow test must stay in its module's group, or the fixture is built on both workers."""
    module = item.nodeid.split("::")[0]
    return any(definition.scope != "function" and definition.baseid == module
               for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions)
