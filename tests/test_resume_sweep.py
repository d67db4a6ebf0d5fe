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
def test_each_swept_value_runs_as_if_alone(name, tmp_path, monkeypatch):
    """A sweep's run for one value is bit for bit that value's run with no other value beside it, and the
    values do make different runs.

    The reference is the same program (same main, same shapes, same compiled code) with the swept value in
    every slot: its middle slot then has no neighbour with another value, and any cross-talk between the
    values of a sweep (or a directory holding another value's run) would show. A batched program compared
    with an unbatched one would be a different float program, equal only up to rounding that a learner
    accumulates differently on different CPUs (AVX2 vs AVX-512), so no such comparison is made here.
    """
    module = import_module(f"algorithms.{name}")
    param, values = SWEEPS[name]
    flags = [*TINY[name], "--num-seeds", "2", "--quiet", "--sweep", f"{param}=" + ",".join(f"{v:g}" for v in values)]
    summaries = module.main([*flags, "--run-dir", str(tmp_path / "sweep")])
    assert len(summaries) == 3
    for value in values:
        config = json.loads((tmp_path / "sweep" / f"{param}={value:g}" / "config.json").read_text())
        assert config[param] == pytest.approx(value) and config["sweep"] == ""

    middle = values[1]
    run_program = runlog.run_program

    def with_middle_everywhere(*args, sweep=None, **kwargs):
        return run_program(*args, sweep=(sweep[0], (middle,) * len(sweep[1])), **kwargs)

    monkeypatch.setattr(runlog, "run_program", with_middle_everywhere)
    module.main([*flags, "--run-dir", str(tmp_path / "alone")])  # directories keep the sweep's names
    monkeypatch.undo()

    directory = f"{param}={middle:g}"
    for swept, alone in zip(read_metrics(tmp_path / "sweep" / directory, 2),
                            read_metrics(tmp_path / "alone" / directory, 2)):
        for column in swept.dtype.names:
            np.testing.assert_array_equal(swept[column], alone[column], err_msg=f"{directory}: {column}")
    for swept, alone in zip(leaves(tmp_path / "sweep" / directory / "checkpoint.msgpack"),
                            leaves(tmp_path / "alone" / directory / "checkpoint.msgpack"), strict=True):
        np.testing.assert_array_equal(swept, alone)
    # The flag reaches the computation: the other values' runs differ from the middle one.
    for value in (values[0], values[2]):
        other = read_metrics(tmp_path / "sweep" / f"{param}={value:g}", 2)
        assert any(not np.array_equal(a[c], b[c], equal_nan=True) for a, b in
                   zip(other, read_metrics(tmp_path / "sweep" / directory, 2)) for c in a.dtype.names), value


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_a_swept_value_replaces_the_config_value_everywhere(name):
    """Overriding a hyperparameter (what --sweep does) leaves nothing of the config's value in the program:
    the traced program is the same whatever the config says, so `--lr X` and a sweep's X are the same run
    up to XLA folding the config's value as a constant. A computation that read `config.<name>` instead of
    the swept value would leave its value in the program, and sweeping it would silently do nothing."""
    module = import_module(f"algorithms.{name}")
    param, values = SWEEPS[name]

    def traced_program(config_value):
        config = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet",
                                                                     f"--{param.replace('_', '-')}", f"{config_value:g}"])
        program = module.make_train(config)
        jaxpr = jax.make_jaxpr(lambda key, value: program(key, {param: value}))(runlog.seed_keys(0, 1)[0],
                                                                                 jax.numpy.float32(values[1]))
        return str(jaxpr)

    assert traced_program(values[0]) == traced_program(values[2])


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
