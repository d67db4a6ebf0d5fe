"""Seeds sharded over several devices give the same results as on one device.

Runs each algorithm's `main` at a tiny size with 4 seeds twice, in fresh processes pinned to the CPU
(JAX_PLATFORMS=cpu, so the test means the same on a GPU machine): once on one CPU device, once with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the keys, hence the seeds, split over 4 devices). The
metrics CSVs of every seed and the summaries are compared, and the state each run trained (what
runner.run_program returned) is asserted to lie on 1 and on 4 devices: a run
that never sharded fails. The 1-device and 4-device processes run side by side.

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

import numpy as np
import pytest

from tests.test_cli import ALGORITHMS, ROOT, TINY

RUN_ALL = """
import csv, hashlib, json, sys, tempfile
from importlib import import_module
from pathlib import Path
import jax
import numpy as np
import runner
import runlog

tiny = json.loads(sys.argv[1])
root = sys.argv[2] if len(sys.argv) > 2 else None  # where the runs go (default: a scratch directory, removed)
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
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(root or scratch) / name
        summary = module.main([*flags, "--num-seeds", "4", "--run-dir", str(run_dir)])  # not --quiet: progress.csv
        if jax.process_index() != 0:  # another host than host 0 writes nothing
            out[name] = {"devices": sorted(set(devices)), "wrote": run_dir.exists()}
            continue
        rows = [list(csv.DictReader(open(run_dir / f"metrics_seed{i}.csv"))) for i in range(4)]
        checkpoint = [hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
                      for leaf in jax.tree.leaves(runlog.load_checkpoint(run_dir / "checkpoint.msgpack"))]
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
                 "checkpoint": checkpoint, "progress": {key: [float(row[key]) for row in progress]
                                                        for key in progress[0] if key != "seconds"}}
print("RESULT" + json.dumps(out))
"""


TOLERANCE = dict(rtol=1e-2, atol=1e-3)


def devices_flag(device_count: int) -> str:
    """XLA_FLAGS for `device_count` CPU devices, beside the session's own flags (tests/conftest.py)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={device_count}".strip()


def cpu_env(device_count: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=devices_flag(device_count))


def start_all(device_count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_ALL, json.dumps({n: TINY[n] for n in CHECKED})], cwd=ROOT,
                            env=cpu_env(device_count), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float | None = None) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("RESULT", 1)[1])


CHECKED = ALGORITHMS


@pytest.fixture(scope="module")
def results():
    one, four = start_all(1), start_all(4)
    try:
        return finish(one), finish(four)
    finally:
        for process in (one, four):
            process.kill()


@pytest.mark.parametrize("name", CHECKED)
@pytest.mark.slow
def test_sharded_seeds_match_one_device(results, name):
    one, four = results[0][name], results[1][name]
    assert one["devices"] == [1] and four["devices"] == [4]  # what main trained really lives on 4 devices
    for key, values in one["metrics"].items():
        np.testing.assert_allclose(np.asarray(four["metrics"][key], float), np.asarray(values, float),
                                   equal_nan=True, err_msg=f"{name}: {key}", **TOLERANCE)
    # The tolerance could not hide a mix-up: seeds 0 and 1 differ by far more than it allows.
    margins = []
    for values in one["metrics"].values():
        values = np.asarray(values, float)
        if values.ndim and values.shape[0] == 4:
            with np.errstate(invalid="ignore"):
                gap = np.abs(values[0] - values[1]) / (TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(values[1]))
            margins.append(np.nanmax(gap, initial=0.0))
    assert max(margins, default=0.0) > 10, f"{name}: seeds 0 and 1 are too close to tell apart at this tolerance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Only a guard against a hang (a host died mid-collective), never a speed limit.
HOSTS_TIMEOUT_S = 1800


@pytest.mark.slow
def test_two_hosts_write_what_one_process_on_four_devices_writes(results, tmp_path):
    """Multi-host training for real on one machine: 2 processes joined by `jax.distributed`, each a "host" with 2
    CPU devices (gloo collectives, the coordinator on 127.0.0.1), started with the environment a launcher sets
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `runner` passes them to jax.distributed.initialize
    on import, before gymnax touches the devices). Both run every file's `main` with the 4 seeds of `results`.

    The reference is `results`' process with 4 devices. Both place one seed on each of 4 devices, so each device
    runs the same 1-seed partition of the same program, and across hosts only outputs move (gathered to host 0):
    host 0's metrics, summary numbers and checkpoint must equal it bit for bit (tolerance 0). progress.csv holds
    float64 means of the seeds' float32 values in whatever order their callbacks arrive: 1e-12 relative. Host 1
    writes nothing, neither its run directories nor anything in its working directory."""
    address = f"127.0.0.1:{free_port()}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    hosts = []
    try:
        for host in (0, 1):
            (tmp_path / f"cwd{host}").mkdir()
            hosts.append(subprocess.Popen(
                [sys.executable, "-c", RUN_ALL, json.dumps({n: TINY[n] for n in CHECKED}), str(tmp_path / f"host{host}")],
                cwd=tmp_path / f"cwd{host}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**clean, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": devices_flag(2),
                     "PYTHONPATH": str(ROOT), "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                     "JAX_PROCESS_ID": str(host)}))
        host0, host1 = (finish(process, HOSTS_TIMEOUT_S) for process in hosts)
    finally:
        for process in hosts:
            if process.poll() is None:
                process.kill()
                process.wait()
    single = results[1]
    for name in CHECKED:
        assert host0[name]["devices"] == host1[name]["devices"] == [4], name  # global arrays over both hosts
        assert host1[name]["wrote"] is False, name
        assert host0[name]["checkpoint"] == single[name]["checkpoint"], f"{name}: checkpoint"
        assert host0[name]["metrics"].keys() == single[name]["metrics"].keys(), name
        for key, values in single[name]["metrics"].items():
            np.testing.assert_array_equal(np.asarray(host0[name]["metrics"][key], float), np.asarray(values, float),
                                          err_msg=f"{name}: {key}")
        assert host0[name]["progress"].keys() == single[name]["progress"].keys(), name
        for key, values in single[name]["progress"].items():
            np.testing.assert_allclose(host0[name]["progress"][key], values, rtol=1e-12, equal_nan=True,
                                       err_msg=f"{name}: progress {key}")
    assert not (tmp_path / "host1").exists()
    assert not any((tmp_path / "cwd1").iterdir()), list((tmp_path / "cwd1").iterdir())


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
