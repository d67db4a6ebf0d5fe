"""`--resume RUN_DIR` ends exactly where an uninterrupted run ends, and `--sweep NAME=V1,V2,V3` (one vmapped
program) equals separate runs of each value. Runs are tiny (tests/test_cli.py's TINY flags).

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
RESUMABLE = ["pqn", "qarl", "sac", "sqirl", "stream_x"]  # IWOCS resumes by stage: tests/test_iwocs.py


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
def test_sweep_equals_separate_runs(name, tmp_path):
    module = import_module(f"algorithms.{name}")
    param, values = SWEEPS[name]
    sweep = ",".join(f"{v:g}" for v in values)
    summaries = module.main([*TINY[name], "--num-seeds", "2", "--quiet", "--sweep", f"{param}={sweep}",
                             "--run-dir", str(tmp_path)])
    assert len(summaries) == 3
    # Separate runs: the config with each value (compiled once: the value enters as a traced number) ...
    config = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet"])
    program = module.make_train(config)
    separate = jax.jit(jax.vmap(lambda key, value: program(key, {param: value}), in_axes=(0, None)))
    keys = runlog.seed_keys(0, 2)
    for value, summary in zip(values, summaries):
        directory = tmp_path / f"{param}={value:g}"
        assert json.loads((directory / "config.json").read_text())[param] == pytest.approx(value)
        metrics = separate(keys, jax.numpy.float32(value))[-1]  # a run returns (..., metrics)
        for seed, rows in enumerate(read_metrics(directory, 2)):
            for column in rows.dtype.names:
                np.testing.assert_allclose(rows[column], np.asarray(metrics[column][seed], float), rtol=1e-5,
                                           atol=1e-6, equal_nan=True, err_msg=f"{param}={value:g}: {column}")
    # ... and setting a value through the config is the same run as overriding it.
    single = runlog.parse_config(module.Config, module.PRESETS, [*TINY[name], f"--{param.replace('_', '-')}",
                                                                 f"{values[1]:g}", "--quiet"])
    direct = jax.jit(jax.vmap(module.make_train(single)))(keys)[-1]
    for column, series in direct.items():
        np.testing.assert_allclose(np.asarray(series, float), read_sweep_column(tmp_path, param, values[1], column),
                                   rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=column)


def read_sweep_column(run_dir, param, value, column):
    return np.stack([rows[column] for rows in read_metrics(run_dir / f"{param}={value:g}", 2)])


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
