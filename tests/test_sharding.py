"""Seeds sharded over several devices, and over several hosts, give the same results as on one device.

Runs each algorithm's `main` at a tiny size with 4 seeds in fresh processes pinned to the CPU (JAX_PLATFORMS=cpu,
so the test means the same on a GPU machine), side by side: once in one process on one CPU device, and once as
two "hosts" joined by `jax.distributed` with 2 CPU devices each (XLA_FLAGS=--xla_force_host_platform_device_count=2:
the keys, hence the seeds, split over 4 devices of 2 processes). The metrics CSVs of every seed, the summaries and
the checkpoints are compared, and the state each run trained (what runner.run_program returned) is asserted to
lie on 1 and on 4 devices: a run that never sharded fails. A single process with 4 devices runs the same 1-seed
partition on each device as the two hosts do (only the gather to host 0 differs, and with one process it is
the identity), so it is not run again here; PQN's sharded resume and sweep below run in one process on 4 devices.

The two are different float programs: XLA partitions the 4-seed program into one 1-seed program per device,
and a batch of 4 and a batch of 1 may be vectorized differently (AVX2 vs AVX-512 differ again), so the runs
agree up to float32 rounding accumulated over a tiny run, not bit for bit. Training amplifies a rounding
difference, and by how much depends on the CPU: measured at most 2e-5 relative on an AMD EPYC (SAC; QARL
bit-identical), 1.6e-3 on another CI machine (IWOCS's second-iteration dynamics loss, fitted to data that the
first iteration's rounding had already moved). TOLERANCE (1e-2 relative) sits 6x above the largest seen. What
sharding can get wrong, a seed on the wrong device or mixed with another, changes a run completely: two
seeds' runs differ by more than 10x the tolerance (asserted), so TOLERANCE separates rounding from a mix-up
with a margin on both sides.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import runlog

from tests.test_cli import ALGORITHMS, ROOT, TINY

RUN_ALL = """
import csv, json, sys
from importlib import import_module
from pathlib import Path
import jax
import numpy as np
import runner

tiny, root = json.loads(sys.argv[1]), Path(sys.argv[2])  # the runs go to root/<name>
devices = []  # over how many devices the state a run trained lies


def record(tree):
    devices.append(len(jax.tree.leaves(tree)[0].sharding.device_set))
    return tree


run_program = runner.run_program
runner.run_program = lambda *args, **kwargs: (lambda out: (record(out[0]), *out[1:]))(run_program(*args, **kwargs))
out = {}
for name, flags in tiny.items():
    module = import_module(f"algorithms.{name}")
    devices.clear()
    run_dir = root / name
    summary = module.main([*flags, "--num-seeds", "4", "--run-dir", str(run_dir)])  # not --quiet: progress.csv
    if jax.process_index() != 0:  # another host than host 0 writes nothing
        out[name] = {"devices": sorted(set(devices)), "wrote": run_dir.exists()}
        continue
    rows = [list(csv.DictReader(open(run_dir / f"metrics_seed{i}.csv"))) for i in range(4)]
    progress = list(csv.DictReader(open(run_dir / "progress.csv")))
    metrics = {key: [[float(row[key]) for row in seed] for seed in rows] for key in rows[0][0]}
    for key, value in summary.items():  # the summary's numbers (not its names, timings or memory)
        try:
            numbers = np.asarray(value, float)
        except (TypeError, ValueError):
            continue
        if numbers.size and "second" not in key and "memory" not in key:
            metrics[key] = numbers.tolist()
    out[name] = {"devices": sorted(set(devices)), "metrics": json.loads(json.dumps(metrics, default=float)),
                 "progress": {key: [float(row[key]) for row in progress] for key in progress[0] if key != "seconds"}}
print("RESULT" + json.dumps(out))
"""


TOLERANCE = dict(rtol=1e-2, atol=1e-3)


def devices_flag(device_count: int) -> str:
    """XLA_FLAGS for `device_count` CPU devices, beside the session's own flags (tests/conftest.py)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={device_count}".strip()


def cpu_env(device_count: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=devices_flag(device_count))


CHECKED = ALGORITHMS


def start_all(root: Path, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_ALL, json.dumps({n: TINY[n] for n in CHECKED}), str(root)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float | None = None) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("RESULT", 1)[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Only a guard against a hang (a host died mid-collective), never a speed limit.
HOSTS_TIMEOUT_S = 1800


def start_two_hosts(tmp: Path) -> list[subprocess.Popen]:
    """Multi-host training for real on one machine: 2 processes joined by `jax.distributed`, each a "host" with 2
    CPU devices (gloo collectives, the coordinator on 127.0.0.1), started with the environment a launcher sets
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `runner` passes them to jax.distributed.initialize
    on import, before gymnax touches the devices), each in a working directory of its own, with no launcher
    variables of this shell (the session's compilation cache stays)."""
    address = f"127.0.0.1:{free_port()}"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("JAX_", "SLURM_", "OMPI_")) or k == "JAX_COMPILATION_CACHE_DIR"}
    hosts = []
    for host in (0, 1):
        (tmp / f"cwd{host}").mkdir(exist_ok=True)
        hosts.append(start_all(tmp / f"host{host}", tmp / f"cwd{host}", {
            **clean, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices_flag(2), "PYTHONPATH": str(ROOT),
            "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(host)}))
    return hosts


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(one device, host 0, host 1, their directory): the 1-device process and the two hosts run side by side. The
    port the coordinator gets was free a moment before it binds it; should another process take it meanwhile,
    the hosts start again on another (at most 3 tries)."""
    tmp = tmp_path_factory.mktemp("sharding")
    processes = [start_all(tmp / "one", ROOT, cpu_env(1))]
    try:
        for attempt in range(3):
            hosts = start_two_hosts(tmp)
            processes += hosts
            outputs = [host.communicate(timeout=HOSTS_TIMEOUT_S) for host in hosts]
            in_use = any(host.returncode != 0 and "in use" in err.lower() for host, (_, err) in zip(hosts, outputs))
            if not in_use or attempt == 2:
                break
        for host, (_, stderr) in zip(hosts, outputs):
            assert host.returncode == 0, stderr[-3000:]
        host0, host1 = (json.loads(stdout.split("RESULT", 1)[1]) for stdout, _ in outputs)
        return finish(processes[0]), host0, host1, tmp
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("name", CHECKED)
@pytest.mark.slow
def test_sharded_seeds_match_one_device(results, name):
    one, four, _, tmp = results
    one, four = one[name], four[name]
    assert one["devices"] == [1] and four["devices"] == [4]  # what main trained really lives on 4 devices
    assert one["metrics"].keys() == four["metrics"].keys(), name
    for key, values in one["metrics"].items():
        np.testing.assert_allclose(np.asarray(four["metrics"][key], float), np.asarray(values, float),
                                   equal_nan=True, err_msg=f"{name}: {key}", **TOLERANCE)
    leaves = [jax.tree.leaves(runlog.load_checkpoint(tmp / run / name / "checkpoint.msgpack")) for run in ("one", "host0")]
    assert len(leaves[0]) == len(leaves[1]), name
    for index, (a, b) in enumerate(zip(*leaves)):
        np.testing.assert_allclose(np.asarray(b, float), np.asarray(a, float), err_msg=f"{name}: checkpoint leaf {index}",
                                   **TOLERANCE)
    # The tolerance could not hide a mix-up: seeds 0 and 1 differ by far more than it allows.
    margins = []
    for values in one["metrics"].values():
        values = np.asarray(values, float)
        if values.ndim and values.shape[0] == 4:
            with np.errstate(invalid="ignore"):
                gap = np.abs(values[0] - values[1]) / (TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(values[1]))
            margins.append(np.nanmax(gap, initial=0.0))
    assert max(margins, default=0.0) > 10, f"{name}: seeds 0 and 1 are too close to tell apart at this tolerance"


@pytest.mark.slow
def test_host_0_writes_the_run_and_host_1_writes_nothing(results):
    """Both hosts hold every file's state over all 4 devices (global arrays); host 0's progress.csv (float64 means
    of the seeds' float32 values, gathered from both hosts as their callbacks arrive) is the 1-device run's up to
    TOLERANCE; host 1 writes nothing, neither its run directories nor anything in its working directory."""
    one, host0, host1, tmp = results
    for name in CHECKED:
        assert host0[name]["devices"] == host1[name]["devices"] == [4], name
        assert host1[name]["wrote"] is False, name
        assert host0[name]["progress"].keys() == one[name]["progress"].keys(), name
        for key, values in one[name]["progress"].items():
            np.testing.assert_allclose(host0[name]["progress"][key], values, equal_nan=True,
                                       err_msg=f"{name}: progress {key}", **TOLERANCE)
    assert not (tmp / "host1").exists()
    assert not any((tmp / "cwd1").iterdir()), list((tmp / "cwd1").iterdir())


RESUME_ON_4_DEVICES = """
import functools, sys
import jax, numpy as np
import runner
import runlog
from algorithms import pqn

out = sys.argv[1]
flags = ["--total-timesteps", "8192", "--num-evals", "1", "--num-seeds", "4", "--num-checkpoints", "4", "--quiet"]
pqn.main([*flags, "--run-dir", out + "/whole"])
uninterrupted = runner.run_program
runner.run_program = functools.partial(uninterrupted, stop_after_chunks=2)  # as if killed after 2 of 4 chunks
try:
    pqn.main([*flags, "--run-dir", out + "/cut"])
except runner.RunInterrupted:
    pass
runner.run_program = uninterrupted
pqn.main(["--resume", out + "/cut", "--quiet"])
sweep = pqn.main([*flags, "--sweep", "lr=1e-4,3e-4", "--run-dir", out + "/sweep"])
whole, cut = (jax.tree.leaves(runlog.load_checkpoint(f"{out}/{name}/checkpoint.msgpack")) for name in ("whole", "cut"))
print("RESULT", len(jax.devices()), all(np.array_equal(a, b) for a, b in zip(whole, cut)), len(sweep))
"""


@pytest.mark.slow
def test_sharded_run_resumes_and_sweeps_through_main(tmp_path):
    """main() on 4 devices: the chunks keep the seeds sharded, --resume continues exactly, --sweep runs."""
    env = cpu_env(4)
    result = subprocess.run([sys.executable, "-c", RESUME_ON_4_DEVICES, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("RESULT", 1)[1].split() == ["4", "True", "2"]


def test_seed_count_that_does_not_divide_the_devices_fails_with_the_fix():
    code = "import runner; runner.seed_keys(0, 6)"
    env = cpu_env(4)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "use a multiple of 4" in result.stderr


def test_readme_explains_multi_host_and_gpu_memory():
    readme = (Path(ROOT) / "README.md").read_text()
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" in readme and "jax.distributed" in readme
