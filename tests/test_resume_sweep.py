"""`--resume RUN_DIR` ends exactly where an uninterrupted run ends, and `--sweep NAME=V1,V2,V3` (one vmapped
program) runs each value as if it ran alone. Runs are tiny (tests/test_cli.py's TINY flags).

Resume: a run with --num-checkpoints 4 is stopped after its first chunk (runlog.run_program's
stop_after_chunks hook raises RunInterrupted where a killed process would stop), then `--resume` continues it;
its checkpoint and metrics must equal the uninterrupted run's bit for bit (same compiled chunks, same inputs).
"""

import functools
import json
from importlib import import_module

import jax
import numpy as np
import pytest

import runlog
from tests.test_cli import TINY

# A hyperparameter per file that --sweep varies inside one program, and three values of it.
SWEEPS = {
    "pqn": ("lr", (1e-4, 3e-4, 1e-3)),
    "qarl": ("critic_lr", (1e-4, 3e-4, 1e-3)),
    "sac": ("critic_lr", (1e-4, 3e-4, 1e-3)),
    "sqirl": ("lr", (1e-4, 1e-3, 1e-2)),
    "stream_x": ("td_lambda", (0.2, 0.5, 0.9)),
}
# Flags under which every SWEEPABLE name acts within a TINY run, and names a preset does not use.
CHANGING = {"qarl": ["--return-bound", "-1e9", "--actor-starts", "100"]}  # curriculum moves at once; actor learns
ABSENT = {"stream_x": ("kappa_policy", "entropy_coeff")}  # stream AC's; TINY runs stream Q
ALTERED = {"qarl": {"return_bound": 1e9}}  # a bound no batch meets: the curriculum never moves (others: a tenth)
# IWOCS resumes by stage (tests/test_iwocs.py); SAC below, cut after learning started, in a sweep.
RESUMABLE = ["pqn", "qarl", "sqirl", "stream_x"]


def leaves(path):
    return jax.tree.leaves(runlog.load_checkpoint(path))


def read_metrics(run_dir, num_seeds):
    return [np.genfromtxt(run_dir / f"metrics_seed{i}.csv", delimiter=",", names=True) for i in range(num_seeds)]


@pytest.mark.parametrize("name", RESUMABLE)
def test_resume_ends_where_an_uninterrupted_run_ends(name, tmp_path, monkeypatch):
    module = import_module(f"algorithms.{name}")
    flags = [*TINY[name], "--num-seeds", "2", "--num-checkpoints", "4", "--quiet"]
    module.main([*flags, "--run-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(runlog, "run_program", functools.partial(runlog.run_program, stop_after_chunks=1))
    with pytest.raises(runlog.RunInterrupted):
        module.main([*flags, "--run-dir", str(tmp_path / "cut")])
    assert (tmp_path / "cut" / "resume.npz").exists() and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.undo()
    module.main(["--resume", str(tmp_path / "cut"), "--quiet"])
    for whole, resumed in zip(leaves(tmp_path / "whole" / "checkpoint.msgpack"),
                              leaves(tmp_path / "cut" / "checkpoint.msgpack"), strict=True):
        np.testing.assert_array_equal(whole, resumed)
    for whole, resumed in zip(read_metrics(tmp_path / "whole", 2), read_metrics(tmp_path / "cut", 2)):
        for column in whole.dtype.names:
            np.testing.assert_array_equal(whole[column], resumed[column], err_msg=column)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["run_dir"] == str(tmp_path / "cut")


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_a_swept_value_replaces_the_config_value_everywhere(name):
    """What --sweep runs (the program built from `runlog.with_values(config, {name: traced value})`) keeps
    nothing of the config's own value: the traced program is the same whatever the config said."""
    module = import_module(f"algorithms.{name}")
    param, values = SWEEPS[name]

    def traced_program(config_value):
        config = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet",
                                                                     f"--{param.replace('_', '-')}", f"{config_value:g}"])
        jaxpr = jax.make_jaxpr(lambda key, value: runlog.program_with(module.make_train, config, {param: value})(key))(
            runlog.seed_keys(0, 1)[0], jax.numpy.float32(values[1]))
        return str(jaxpr)

    assert traced_program(values[0]) == traced_program(values[2])


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweepable_name_is_read(name):
    """Each name in the file's SWEEPABLE reaches the computation when swept (runlog checks this before it
    compiles a sweep), and a name the computation never reads is refused with the fix."""
    module = import_module(f"algorithms.{name}")
    config = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet"])
    program = module.make_train(config)
    for param in module.SWEEPABLE:
        if name == "stream_x" and param in ("kappa_policy", "entropy_coeff"):  # the actor's: stream AC only
            config = runlog.parse_config(module.Config, module.PRESETS, ["--preset", "pendulum-ac", "--quiet"])
        traced = jax.jit(lambda key, value: runlog.program_with(module.make_train, config, {param: value})(key)).trace(
            runlog.seed_keys(0, 1)[0], jax.numpy.float32(getattr(config, param)))
        assert runlog._unread_inputs(traced, {param: 0}, [param]) == [], param
    unread = jax.jit(lambda key, value: program(key)).trace(runlog.seed_keys(0, 1)[0], jax.numpy.float32(1))
    assert runlog._unread_inputs(unread, {"gamma": 0}, ["gamma"]) == ["gamma"]


def test_sweep_errors_say_what_can_be_swept():
    with pytest.raises(ValueError, match="cannot be swept"):
        runlog.parse_sweep("hidden_size=64,128", ("lr", "gamma"))
    with pytest.raises(ValueError, match="numbers separated by commas"):
        runlog.parse_sweep("lr=fast", ("lr",))
    assert runlog.parse_sweep("--lr=1e-3,3e-3", ("lr",)) == ("lr", (1e-3, 3e-3))


def test_resume_needs_a_run_directory(tmp_path):
    pqn = import_module("algorithms.pqn")
    with pytest.raises(SystemExit, match="no config.json"):
        runlog.parse_config(pqn.Config, pqn.PRESETS, ["--resume", str(tmp_path)])
    with pytest.raises(SystemExit, match="only --quiet"):
        runlog.parse_config(pqn.Config, pqn.PRESETS, ["--resume", str(tmp_path), "--lr", "1"])


def test_sac_resumes_a_sweep_cut_after_learning_started_with_normalized_observations(tmp_path, monkeypatch):
    """The cut falls after SAC has made gradient updates (trained actor, critics, their optimizer states, α and
    the observation statistics must all come back), in a sweep of two values: each value's resumed run ends
    where its uninterrupted run ends, bit for bit."""
    sac = import_module("algorithms.sac")
    flags = [*TINY["sac"], "--learning-starts", "50", "--normalize-observations", "--num-seeds", "2",
             "--num-checkpoints", "4", "--quiet", "--sweep", "critic_lr=1e-4,1e-3"]
    sac.main([*flags, "--run-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(runlog, "run_program", functools.partial(runlog.run_program, stop_after_chunks=2))
    with pytest.raises(runlog.RunInterrupted):
        sac.main([*flags, "--run-dir", str(tmp_path / "cut")])
    monkeypatch.undo()
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    with np.load(tmp_path / "cut" / "resume.npz") as saved:
        steps_at_cut = int(saved["updates_done"]) * config["num_envs"]
    assert steps_at_cut >= config["learning_starts"] + 2 * config["num_envs"]  # updates were made before the cut
    sac.main(["--resume", str(tmp_path / "cut"), "--quiet"])
    for value in ("critic_lr=0.0001", "critic_lr=0.001"):
        whole, cut = tmp_path / "whole" / value, tmp_path / "cut" / value
        for a, b in zip(leaves(whole / "checkpoint.msgpack"), leaves(cut / "checkpoint.msgpack"), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(read_metrics(whole, 2), read_metrics(cut, 2)):
            for column in a.dtype.names:
                np.testing.assert_array_equal(a[column], b[column], err_msg=f"{value}: {column}")
        alpha = read_metrics(whole, 2)[0]["alpha"]
        assert alpha[0] != config["init_alpha"] or alpha[1] != config["init_alpha"], "α never moved"


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweepable_name_changes_the_run_and_each_value_runs_as_if_alone(name, tmp_path):
    """One program sweeps every SWEEPABLE name jointly: slot 0 has the config's values, slot i changes only the
    i-th name (to a tenth, or ALTERED). Each slot's metrics differ from slot 0's (every name reaches the
    computation), and slot 0 is bit for bit slot 0 of the same program with the config's values in every slot.

    That reference is the same program (same shapes, same compiled code): its slot 0 has no neighbour with
    another value, and any cross-talk between the values of a sweep would show. A batched program compared with
    an unbatched one would be a different float program, equal only up to rounding that a learner accumulates
    differently on different CPUs (AVX2 vs AVX-512), so no such comparison is made here. (The run directories
    of a sweep through main: tests/test_cli.py's copied files.)
    """
    module = import_module(f"algorithms.{name}")
    config = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet", *CHANGING.get(name, [])])
    names = [p for p in module.SWEEPABLE if p not in ABSENT.get(name, ())]
    base = [float(getattr(config, p)) for p in names]
    altered = [ALTERED.get(name, {}).get(p, 0.1 * base[i]) for i, p in enumerate(names)]

    def run(values):
        sweep = {p: tuple(values(i, j) for j in range(len(names) + 1)) for i, p in enumerate(names)}
        state, metrics, _, _ = runlog.run_program(module.make_train, config, runlog.seed_keys(0, 2), tmp_path,
                                                  sweep=sweep)
        return state, metrics

    state, metrics = run(lambda i, j: altered[i] if j == i + 1 else base[i])
    for i, p in enumerate(names):
        assert any(not np.array_equal(m[0], m[i + 1], equal_nan=True) for m in metrics.values()), p
    alone_state, alone_metrics = run(lambda i, j: base[i])
    for column in metrics:
        np.testing.assert_array_equal(metrics[column][0], alone_metrics[column][0], err_msg=column)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b[0]), state, alone_state)


def test_sweeping_a_name_the_computation_never_reads_is_an_error(tmp_path, monkeypatch):
    """As if a copy listed a new name in SWEEPABLE but its code never read it: refused before the run compiles."""
    pqn = import_module("algorithms.pqn")
    monkeypatch.setattr(pqn, "SWEEPABLE", (*pqn.SWEEPABLE, "num_checkpoints"))
    with pytest.raises(ValueError, match="never reads config.num_checkpoints"):
        pqn.main([*TINY["pqn"], "--quiet", "--sweep", "num_checkpoints=1,2", "--run-dir", str(tmp_path)])
