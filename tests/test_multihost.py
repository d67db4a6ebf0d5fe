"""Multi-host training, run for real on one machine: 2 processes joined by `jax.distributed`.

Each process is one "host" with 2 CPU devices (JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=2,
gloo collectives, the coordinator on 127.0.0.1 at a free port), started with the environment a launcher sets
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; `runner` passes them to
`jax.distributed.initialize`). Both run algorithms/pqn.py and algorithms/stream_x.py as scripts (runpy, so
pqn.py's own imports start jax.distributed: PQN first) with 4 seeds at tiny sizes, each host into its own
--run-dir so that what host 1 writes can be seen: nothing, also nowhere in its working directory.

The reference is one process with 4 CPU devices. Both place one seed on each of 4 devices, so every device
runs the same 1-seed partition of the same program; across hosts only the outputs move (gathered to host 0),
no arithmetic is added. So host 0's run directory must equal the single-process one bit for bit (metrics
CSVs, final returns, checkpoints): tolerance 0. A single process on 1 device is another float program (a
batch of 4 seeds vectorizes differently); tests/test_sharding.py checks 4 devices against 1 device for PQN
and stream-x within rtol 1e-3, atol 1e-4, so the two tests together tie the multi-host run to the 1-device run.
progress.csv holds float64 means of the seeds' float32 values in whatever order their callbacks arrive, so it
is compared to 1e-12 relative (the `seconds` column is wall time and is left out).

About 50 s on the 2-core CPU (three processes compiling two tiny programs each).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_cli import ROOT, TINY

WORKER = """
import json, runpy, sys
for script, flags in json.loads(sys.argv[1]):
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")
import jax
print("RESULT" + json.dumps({"process_count": jax.process_count(), "process_index": jax.process_index(),
                             "devices": len(jax.devices()), "local_devices": len(jax.local_devices())}))
"""
RUNS = {"pqn": TINY["pqn"], "stream_x": TINY["stream_x"]}
# Only a guard against a hang (a host died mid-collective), never a speed limit: ten times the slowest time seen
# (128 s in CI, three processes on 2 cores), so a slower machine still passes.
TIMEOUT_S = 1200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run_root: Path, cwd: Path, devices: int, distributed: dict[str, str]) -> subprocess.Popen:
    runs = [[str(ROOT / "algorithms" / f"{name}.py"), [*flags, "--num-seeds", "4", "--quiet", "--run-dir",
                                                       str(run_root / name)]] for name, flags in RUNS.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    env |= dict(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=str(ROOT), **distributed)
    cwd.mkdir(parents=True)
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(runs)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: np.asarray(table[name], float) for name in table.dtype.names}


def test_two_hosts_write_what_one_process_writes(tmp_path):
    import jax

    import runlog

    address = f"127.0.0.1:{free_port()}"
    processes = {}
    try:
        for host in (0, 1):
            processes[f"host{host}"] = start(tmp_path / f"host{host}", tmp_path / f"cwd{host}", 2, dict(
                JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(host)))
        processes["single"] = start(tmp_path / "single", tmp_path / "cwd_single", 4, {})
        outputs = {name: process.communicate(timeout=TIMEOUT_S) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}:\n{outputs[name][1][-3000:]}"
    facts = {name: json.loads(out.split("RESULT", 1)[1]) for name, (out, _) in outputs.items()}
    assert facts["host0"] == {"process_count": 2, "process_index": 0, "devices": 4, "local_devices": 2}
    assert facts["host1"] == {"process_count": 2, "process_index": 1, "devices": 4, "local_devices": 2}
    assert facts["single"] == {"process_count": 1, "process_index": 0, "devices": 4, "local_devices": 4}

    # Host 1 wrote nothing: no run directory, nothing in its working directory.
    assert not (tmp_path / "host1").exists()
    assert not any((tmp_path / "cwd1").iterdir()), list((tmp_path / "cwd1").iterdir())

    for name in RUNS:
        multi, single = tmp_path / "host0" / name, tmp_path / "single" / name
        assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
        assert len(list(multi.glob("metrics_seed*.csv"))) == 4  # each seed once, not once per host
        for path in single.glob("metrics_seed*.csv"):
            for column, values in read_csv(path).items():
                np.testing.assert_array_equal(read_csv(multi / path.name)[column], values, err_msg=f"{name} {column}")
        summaries = [json.loads((d / "summary.json").read_text()) for d in (multi, single)]
        for key in ("num_seeds", "env_steps", "final_return"):
            assert summaries[0][key] == summaries[1][key], f"{name}: {key}"
        checkpoints = [runlog.load_checkpoint(d / "checkpoint.msgpack") for d in (multi, single)]
        assert jax.tree.structure(checkpoints[0]) == jax.tree.structure(checkpoints[1])
        for a, b in zip(*(jax.tree.leaves(c) for c in checkpoints)):
            assert np.shape(a)[:1] == (4,)  # the seed axis holds all 4 seeds
            np.testing.assert_array_equal(a, b, err_msg=f"{name} checkpoint")
        progress = [read_csv(d / "progress.csv") for d in (multi, single)]
        assert progress[0].keys() == progress[1].keys()
        for column in progress[1].keys() - {"seconds"}:
            np.testing.assert_allclose(progress[0][column], progress[1][column], rtol=1e-12, equal_nan=True,
                                       err_msg=f"{name} progress {column}")
