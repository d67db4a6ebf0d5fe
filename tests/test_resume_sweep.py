"""`--resume RUN_DIR` ends exactly where an uninterrupted run ends, and `--sweep NAME=V1,V2,V3` (one vmapped
program) runs each value as if it ran alone. Runs are tiny (tests/test_cli.py's TINY flags).

Resume: a run with --num-checkpoints 4 is stopped after its first chunk (runner.run_program's
stop_after_chunks hook raises RunInterrupted where a killed process would stop), then `--resume` continues it;
its checkpoint and metrics must equal the uninterrupted run's bit for bit (same compiled chunks, same inputs).
"""

import dataclasses
import functools
import importlib.util
import json
import signal
import subprocess
import sys
import time
from importlib import import_module

import jax
import numpy as np
import pytest

import runner
import runlog
from tests.test_cli import ROOT, TINY, checkout_copy

# A hyperparameter per file that --sweep varies inside one program, and three values of it.
SWEEPS = {
    "pqn": ("lr", (1e-4, 3e-4, 1e-3)),
    "qarl": ("critic_lr", (1e-4, 3e-4, 1e-3)),
    "sac": ("critic_lr", (1e-4, 3e-4, 1e-3)),
    "sqirl": ("lr", (1e-4, 1e-3, 1e-2)),
    "stream_x": ("td_lambda", (0.2, 0.5, 0.9)),
    "iwocs": ("critic_lr", (1e-4, 1e-3, 1e-2)),
}
# Flags under which every SWEEPABLE name acts within a TINY run, and names a preset does not use.
CHANGING = {"qarl": ["--return-bound", "-1e9", "--actor-starts", "100"]}  # curriculum moves at once; actor learns
ABSENT = {"stream_x": ("kappa_policy", "entropy_coeff")}  # stream AC's; TINY runs stream Q
ALTERED = {"qarl": {"return_bound": 1e9},  # a bound no batch meets: the curriculum never moves (others: a tenth)
           "iwocs": {"epsilon": 1e9}}  # every seed stops at the first check (ε 0.5 would stop none, as ε 5)
# IWOCS's resume: tests/test_iwocs.py (its stages, cut after the first iteration); SAC below, cut after learning
# started, in a sweep.
RESUMABLE = ["pqn", "qarl", "sqirl", "stream_x"]


def leaves(path):
    return jax.tree.leaves(runlog.load_checkpoint(path))


def read_metrics(run_dir, num_seeds):
    return [np.genfromtxt(run_dir / f"metrics_seed{i}.csv", delimiter=",", names=True) for i in range(num_seeds)]


# stream_x's resume is in the fast tests (the cheapest program; it catches a resume that restores nothing).
@pytest.mark.parametrize("name", [name if name == "stream_x" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in RESUMABLE])
def test_resume_ends_where_an_uninterrupted_run_ends(name, tmp_path, monkeypatch):
    module = import_module(f"algorithms.{name}")
    flags = [*TINY[name], "--num-seeds", "2", "--num-checkpoints", "4", "--quiet"]
    module.main([*flags, "--run-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(runner, "run_program", functools.partial(runner.run_program, stop_after_chunks=1))
    with pytest.raises(runner.RunInterrupted):
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


# IWOCS's and QARL's programs take seconds to trace each; they run with the slow tests.
SWEEP_FILES = [pytest.param(name, marks=pytest.mark.slow) if name in ("iwocs", "qarl") else name for name in sorted(SWEEPS)]


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_a_swept_value_replaces_the_config_value_everywhere(name):
    """What --sweep runs (the program built from `runner.with_values(config, {name: traced value})`) keeps
    nothing of the config's own value: the traced program is the same whatever the config said."""
    module = import_module(f"algorithms.{name}")
    param, values = SWEEPS[name]

    def traced_program(config_value):
        config = runner.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet",
                                                                     f"--{param.replace('_', '-')}", f"{config_value:g}"])
        jaxpr = jax.make_jaxpr(lambda key, value: runner.program_with(module.make_train, config, {param: value})(key))(
            runner.seed_keys(0, 1)[0], jax.numpy.float32(values[1]))
        return str(jaxpr)

    traced_program(values[1])  # (a process's first trace of IWOCS differs from later ones by what it caches)
    assert traced_program(values[0]) == traced_program(values[2])


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_sweepable_name_is_read(name):
    """Each name in the file's SWEEPABLE reaches the computation when swept (runner checks this before it
    compiles a sweep), and a name the computation never reads is refused with the fix."""
    module = import_module(f"algorithms.{name}")
    config = runner.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet"])
    program = module.make_train(config)
    for param in module.SWEEPABLE:
        if name == "stream_x" and param in ("kappa_policy", "entropy_coeff"):  # the actor's: stream AC only
            config = runner.parse_config(module.Config, module.PRESETS, ["--preset", "pendulum-ac", "--quiet"])
        traced = jax.jit(lambda key, value: runner.program_with(module.make_train, config, {param: value})(key)).trace(
            runner.seed_keys(0, 1)[0], jax.numpy.float32(getattr(config, param)))
        assert runner._unread_inputs(traced, {param: 0}, [param]) == [], param
    unread = jax.jit(lambda key, value: program(key)).trace(runner.seed_keys(0, 1)[0], jax.numpy.float32(1))
    assert runner._unread_inputs(unread, {"gamma": 0}, ["gamma"]) == ["gamma"]


def test_sweep_errors_say_what_can_be_swept():
    with pytest.raises(ValueError, match="cannot be swept"):
        runner.parse_sweep("hidden_size=64,128", ("lr", "gamma"))
    with pytest.raises(ValueError, match="numbers separated by commas"):
        runner.parse_sweep("lr=fast", ("lr",))
    assert runner.parse_sweep("--lr=1e-3,3e-3", ("lr",)) == ("lr", (1e-3, 3e-3))


def test_resume_needs_a_run_directory(tmp_path):
    pqn = import_module("algorithms.pqn")
    with pytest.raises(SystemExit, match="no config.json"):
        runner.parse_config(pqn.Config, pqn.PRESETS, ["--resume", str(tmp_path)])
    with pytest.raises(SystemExit, match="only --quiet"):
        runner.parse_config(pqn.Config, pqn.PRESETS, ["--resume", str(tmp_path), "--lr", "1"])


@pytest.mark.slow
def test_sac_resumes_a_sweep_cut_after_learning_started_with_normalized_observations(tmp_path, monkeypatch):
    """The cut falls after SAC has made gradient updates (trained actor, critics, their optimizer states, α and
    the observation statistics must all come back), in a sweep of two values: each value's resumed run ends
    where its uninterrupted run ends, bit for bit."""
    sac = import_module("algorithms.sac")
    flags = [*TINY["sac"], "--learning-starts", "50", "--normalize-observations", "--num-seeds", "2",
             "--num-checkpoints", "4", "--quiet", "--sweep", "critic_lr=1e-4,1e-3"]
    sac.main([*flags, "--run-dir", str(tmp_path / "whole")])
    monkeypatch.setattr(runner, "run_program", functools.partial(runner.run_program, stop_after_chunks=2))
    with pytest.raises(runner.RunInterrupted):
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
@pytest.mark.slow
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
    config = runner.parse_config(module.Config, module.PRESETS, [*TINY[name], "--quiet", *CHANGING.get(name, [])])
    names = [p for p in module.SWEEPABLE if p not in ABSENT.get(name, ())]
    base = [float(getattr(config, p)) for p in names]
    altered = [ALTERED.get(name, {}).get(p, 0.1 * base[i]) for i, p in enumerate(names)]

    def run(values):
        sweep = {p: tuple(values(i, j) for j in range(len(names) + 1)) for i, p in enumerate(names)}
        state, metrics, _, _ = runner.run_program(module.make_train, config, runner.seed_keys(0, 2), tmp_path,
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


# ----------------------------------------------------------------------------------------------------
# Resume and sweeps never silently change or corrupt a run


def directory_bytes(directory):
    """Every file under `directory` with its bytes: what must not change when a resume is refused."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def cut_run(module, flags, run_dir, monkeypatch, chunks=1):
    """Run `module.main` and stop it after `chunks` of its checkpointed chunks, as a killed run stops."""
    with monkeypatch.context() as patch:
        patch.setattr(runner, "run_program", functools.partial(runner.run_program, stop_after_chunks=chunks))
        with pytest.raises(runner.RunInterrupted):
            module.main([*flags, "--run-dir", str(run_dir)])
    assert (run_dir / "resume.npz").exists()


def load_copy(tmp_path, monkeypatch, name, edit=lambda source: source):
    """A copy of algorithms/<name>.py saved as <name>_variant.py in a temporary checkout (after `edit`), imported."""
    copy = checkout_copy(tmp_path) / "algorithms" / f"{name}_variant.py"
    copy.write_text(edit((ROOT / "algorithms" / f"{name}.py").read_text()))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the copy puts its checkout first; undone after the test
    spec = importlib.util.spec_from_file_location(f"{name}_variant", copy)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, f"{name}_variant", module)
    spec.loader.exec_module(module)
    return module


DAMAGES = {  # file -> what is done to it: what a full disk, a killed copy or an editor leaves
    "resume.npz cut short": ("resume.npz", lambda data: data[:len(data) // 2]),
    "resume.npz overwritten": ("resume.npz", lambda data: b"not a zip archive"),
    "config.json cut short": ("config.json", lambda data: data[:len(data) // 2]),
    "config.json not an object": ("config.json", lambda data: b"[]"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_file_of_a_cut_run_is_one_line_and_changes_nothing(damage, tmp_path, monkeypatch):
    """--resume of a run whose resume.npz or config.json is damaged: one line naming the file and what to do
    (no zipfile or json traceback), and every file of the run as it was."""
    stream_x = import_module("algorithms.stream_x")
    run_dir = tmp_path / "run"
    cut_run(stream_x, [*TINY["stream_x"], "--num-checkpoints", "3", "--quiet"], run_dir, monkeypatch)
    name, change = DAMAGES[damage]
    (run_dir / name).write_bytes(change((run_dir / name).read_bytes()))
    before = directory_bytes(run_dir)
    with pytest.raises(SystemExit) as error:
        stream_x.main(["--resume", str(run_dir), "--quiet"])
    message = str(error.value)
    assert "\n" not in message and f"{run_dir / name} is damaged" in message and "nothing was changed" in message
    assert directory_bytes(run_dir) == before


@pytest.mark.slow
def test_resuming_another_files_run_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    """A copy of stream_x with a field of its own, cut after one chunk: `stream_x.py --resume` of its run is
    refused by name before anything is written (it used to rewrite config.json as stream_x, drop the copy's
    field and train the original rule)."""
    own_field = '    seed: int = 0\n    trace_bonus: float = 0.0\n    """A copy\'s own field."""\n'
    variant = load_copy(tmp_path, monkeypatch, "stream_x", lambda source: source.replace(
        "    seed: int = 0\n", own_field, 1))
    run_dir = tmp_path / "run"
    cut_run(variant, [*TINY["stream_x"], "--num-checkpoints", "3", "--quiet"], run_dir, monkeypatch)
    before = directory_bytes(run_dir)
    stream_x = import_module("algorithms.stream_x")
    with pytest.raises(SystemExit, match=r"made by stream_x_variant\.py, not by this file \(stream_x\.py\)"):
        stream_x.main(["--resume", str(run_dir), "--quiet"])
    assert directory_bytes(run_dir) == before


@pytest.mark.slow
def test_resuming_a_run_whose_config_fields_differ_is_refused(tmp_path, monkeypatch):
    """The same file, changed between cut and resume: a field it no longer has, or one the run never recorded."""
    pqn = import_module("algorithms.pqn")
    run_dir = tmp_path / "run"
    cut_run(pqn, [*TINY["pqn"], "--num-checkpoints", "2", "--quiet"], run_dir, monkeypatch)
    recorded = json.loads((run_dir / "config.json").read_text())
    for config, message in (({**recorded, "trace_bonus": 0.5}, "fields this file does not have: trace_bonus"),
                            ({k: v for k, v in recorded.items() if k != "td_lambda"}, "did not record: td_lambda")):
        (run_dir / "config.json").write_text(json.dumps(config))
        before = directory_bytes(run_dir)
        with pytest.raises(SystemExit, match=message):
            pqn.main(["--resume", str(run_dir), "--quiet"])
        assert directory_bytes(run_dir) == before


@pytest.mark.slow
def test_a_metric_added_between_cut_and_resume_is_refused_by_name(tmp_path, monkeypatch):
    """Metrics are saved and restored by name: a file that logs one more metric after the cut is refused, naming
    it, with nothing written (restored by position, the saved columns would shift under other names)."""
    pqn = import_module("algorithms.pqn")
    run_dir = tmp_path / "run"
    cut_run(pqn, [*TINY["pqn"], "--num-checkpoints", "2", "--quiet"], run_dir, monkeypatch)
    with np.load(run_dir / "resume.npz") as saved:
        assert "['td_loss']" in list(saved["metric_names"]) and len(saved["carry_names"]) > 0
    original = pqn.make_train

    def with_extra_metric(config, progress=None):
        program = original(config, progress)

        def update(carry, index):
            carry, metrics = program.update(carry, index)
            return carry, {**metrics, "aaa_new_metric": metrics["td_loss"] * 2}  # sorts first: shifts every column

        return dataclasses.replace(program, update=update)

    monkeypatch.setattr(pqn, "make_train", with_extra_metric)
    before = directory_bytes(run_dir)
    with pytest.raises(SystemExit, match=r"differing: metric \['aaa_new_metric'\]"):
        pqn.main(["--resume", str(run_dir), "--quiet"])
    assert directory_bytes(run_dir) == before


def test_integer_fields_sweep_whole_values_recorded_exactly_and_switches_not_at_all(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Config:
        updates: int = 1
        lr: float = 1e-3
        double_q: bool = True
        sweep: str = ""

    configs = runner.sweep_run_configs(tmp_path, Config(), "updates", (1.0, 4.0))
    assert [c.updates for c in configs.values()] == [1, 4] and all(type(c.updates) is int for c in configs.values())
    assert [d.name for d in configs] == ["updates=1", "updates=4"]
    assert [c.lr for c in runner.sweep_run_configs(tmp_path, Config(), "lr", (1e-4, 1.0)).values()] == [1e-4, 1.0]
    with pytest.raises(ValueError, match="updates is a whole number"):
        runner.sweep_run_configs(tmp_path, Config(), "updates", (1.0, 1.5))
    with pytest.raises(ValueError, match="double_q is a switch"):
        runner.sweep_run_configs(tmp_path, Config(), "double_q", (0.0, 1.0))


@pytest.mark.parametrize("field, values", [("num_epochs", "1,2"), ("eps_decay", "0.1,0.2")])
def test_a_swept_value_used_where_a_concrete_number_is_needed_is_one_line_and_writes_nothing(field, values, tmp_path,
                                                                                          monkeypatch):
    """PQN's num_epochs is a loop length and eps_decay goes through int() (the ε schedule's update count): made
    sweepable, each fails in tracing. That is one line naming the field and the rule, before any directory."""
    pqn = import_module("algorithms.pqn")
    monkeypatch.setattr(pqn, "SWEEPABLE", (*pqn.SWEEPABLE, field))
    with pytest.raises(ValueError, match=f"--sweep {field}=.*a swept field may only feed the arithmetic") as error:
        pqn.main([*TINY["pqn"], "--quiet", "--run-dir", str(tmp_path / "run"), "--sweep", f"{field}={values}"])
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_update_leaves_no_directory(tmp_path, monkeypatch):
    """A failure between writing the run directories and the first update (here: in compiling) removes them."""
    pqn = import_module("algorithms.pqn")
    real = runner.run_program

    def failing_compile(*args, before_compile, **kwargs):
        def write_then_fail():
            before_compile()
            assert (tmp_path / "run" / "lr=0.001" / "config.json").exists()
            raise RuntimeError("XLA ran out of memory while compiling")

        return real(*args, before_compile=write_then_fail, **kwargs)

    monkeypatch.setattr(runner, "run_program", failing_compile)
    with pytest.raises(RuntimeError, match="out of memory"):
        pqn.main([*TINY["pqn"], "--quiet", "--run-dir", str(tmp_path / "run"), "--sweep", "lr=1e-3,1e-2"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_stops_at_once_with_the_state_saved_and_prints_the_resume_command(tmp_path, monkeypatch):
    """SIGINT during a long run: the process exits (130) with the last finished chunk's state in resume.npz and
    the exact command to continue, which then continues it."""
    run_dir = tmp_path / "run"
    flags = ["--total-timesteps", "20000000", "--num-checkpoints", "2000", "--num-evals", "1",
             "--run-dir", str(run_dir)]
    # The script runs with Python's Ctrl-C handler installed even where the test suite was started in the
    # background (a shell then has SIGINT ignored for all it starts), as in a terminal.
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             f"sys.argv = ['algorithms/pqn.py', *{flags!r}]; runpy.run_path('algorithms/pqn.py', run_name='__main__')")
    process = subprocess.Popen([sys.executable, "-c", start], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        while not (run_dir / "resume.npz").exists() and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)  # seconds once it works: a hang guard only
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    with np.load(run_dir / "resume.npz") as saved:
        done = int(saved["updates_done"])
    total = 20_000_000 // (32 * 64)  # the cartpole preset's updates: 32 envs x 64 steps each
    length = total // runner.num_chunks(total, 2000)
    assert 0 < done < total  # stopped long before the end, after a saved chunk
    assert f"the state after {done:,} of {total:,} updates is in" in stderr
    assert f"continue with: python algorithms/pqn.py --resume {run_dir}" in stderr
    with monkeypatch.context() as patch:  # what the printed command runs continues it: one more chunk, then a cut
        patch.setattr(runner, "run_program", functools.partial(runner.run_program,
                                                               stop_after_chunks=done // length + 1))
        with pytest.raises(runner.RunInterrupted):
            import_module("algorithms.pqn").main(["--resume", str(run_dir), "--quiet"])
    with np.load(run_dir / "resume.npz") as saved:
        assert int(saved["updates_done"]) == done + length


def test_resume_continues_from_the_saved_state_not_from_the_start(tmp_path, monkeypatch):
    """Sentinels written into resume.npz come out of the resumed run: the saved metrics rows (td_loss set to
    -12345) are the output's first rows, and zeroed saved network weights change the final weights. A --resume
    that ignored the file and trained from the start would give the uninterrupted run's numbers instead (which
    `test_resume_ends_where_an_uninterrupted_run_ends` shows it matches when the file is left as saved)."""
    pqn = import_module("algorithms.pqn")
    flags = [*TINY["pqn"], "--num-checkpoints", "2", "--quiet"]
    pqn.main([*flags, "--run-dir", str(tmp_path / "whole")])
    cut_run(pqn, flags, tmp_path / "cut", monkeypatch)
    path = tmp_path / "cut" / "resume.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    metric_names, carry_names = list(arrays["metric_names"]), list(arrays["carry_names"])
    td_loss = "metric_%d" % metric_names.index("['td_loss']")
    saved_rows = arrays[td_loss].shape[-1]
    arrays[td_loss] = np.full_like(arrays[td_loss], -12345.0)
    weights = [i for i, name in enumerate(carry_names) if "kernel" in name]
    assert weights
    for i in weights:
        arrays[f"carry_{i}"] = np.zeros_like(arrays[f"carry_{i}"])
    np.savez(path, **arrays)
    pqn.main(["--resume", str(tmp_path / "cut"), "--quiet"])
    resumed = read_metrics(tmp_path / "cut", 1)[0]["td_loss"]
    assert 0 < saved_rows < len(resumed)
    np.testing.assert_array_equal(resumed[:saved_rows], -12345.0)
    assert np.all(resumed[saved_rows:] != -12345.0)
    whole, cut = leaves(tmp_path / "whole" / "checkpoint.msgpack"), leaves(tmp_path / "cut" / "checkpoint.msgpack")
    assert any(not np.array_equal(a, b) for a, b in zip(whole, cut, strict=True))


@pytest.mark.slow
def test_each_swept_directory_holds_the_run_of_its_own_value(tmp_path):
    """Through main: each value's directory of `--sweep lr=1e-4,3e-2` starts as a plain `--lr` run with that value
    (its logged learning rate and first update's TD loss), and not as the other value's. The first update only:
    a sweep (traced lr) and a plain run (constant lr) are different float32 programs, equal up to rounding
    (relative ~1e-6 after one update; rtol 1e-4), and learning would grow the difference."""
    pqn = import_module("algorithms.pqn")
    flags = [*TINY["pqn"], "--quiet"]
    pqn.main([*flags, "--run-dir", str(tmp_path / "sweep"), "--sweep", "lr=1e-4,3e-2"])
    first = {}
    for value in ("0.0001", "0.03"):
        pqn.main([*flags, "--run-dir", str(tmp_path / value), "--lr", value])
        plain = read_metrics(tmp_path / value, 1)[0]
        swept = read_metrics(tmp_path / "sweep" / f"lr={value}", 1)[0]
        assert json.loads((tmp_path / "sweep" / f"lr={value}" / "config.json").read_text())["lr"] == float(value)
        for column in ("learning_rate", "td_loss", "q_mean"):
            np.testing.assert_allclose(swept[column][0], plain[column][0], rtol=1e-4, err_msg=f"lr={value}: {column}")
        first[value] = plain["td_loss"][0]
    assert abs(first["0.0001"] - first["0.03"]) > 1e-2 * abs(first["0.03"])  # the two values' runs differ
