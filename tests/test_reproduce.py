"""scripts/reproduce.py and scripts/plot.py: the registry's commands, tiny runs of its figures, resume, IQM and
bootstrap. Tiny runs of a few hundred steps (one figure's as reproduce.py's subprocesses, the others'
in the test process); of the brax entries only sac-brax runs (brax
compiles for 30-90 s on a 2-core CPU, marked slow), stream-ac-brax is checked through its resolved commands."""

import importlib
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import plot  # noqa: E402
import reproduce  # noqa: E402

import runner  # noqa: E402


def test_iqm_by_hand():
    # 8 runs: the middle 50% are 3, 4, 5, 6 -> 4.5; one outlier among 4 runs is trimmed: mean(2, 3) = 2.5
    assert plot.iqm(np.arange(1.0, 9.0)[:, None]) == pytest.approx(4.5)
    assert plot.iqm(np.array([[1.0], [2.0], [3.0], [100.0]])) == pytest.approx(2.5)
    # per curve point, over runs x tasks (stratified: 2 tasks of 4 runs each = 8 scores per point)
    scores = np.stack([np.arange(1.0, 9.0).reshape(4, 2), 10 * np.arange(1.0, 9.0).reshape(4, 2)], axis=-1)
    np.testing.assert_allclose(plot.iqm(scores), [4.5, 45.0])
    from rliable import metrics

    rng = np.random.default_rng(0)
    random_scores = rng.normal(size=(10, 3))
    assert plot.iqm(random_scores) == pytest.approx(metrics.aggregate_iqm(random_scores))


def test_bootstrap_interval_contains_estimate_and_shrinks_with_seeds():
    rng = np.random.default_rng(1)
    widths = []
    for runs in (4, 16, 64):
        scores = rng.normal(loc=10.0, scale=2.0, size=(runs, 2))
        low, high = plot.stratified_bootstrap_ci(scores, reps=2000, seed=0)
        assert low <= plot.iqm(scores) <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # all runs equal: no spread; fixed seed: the same interval
    assert plot.stratified_bootstrap_ci(np.ones((5, 2))) == (1.0, 1.0)
    curves = rng.normal(size=(6, 1, 3))  # 6 runs, 1 task, 3 curve points: one interval per point
    first, second = plot.stratified_bootstrap_ci(curves, seed=3), plot.stratified_bootstrap_ci(curves, seed=3)
    assert first[0].shape == (3,)
    np.testing.assert_array_equal(first, second)


def test_stratified_bootstrap_resamples_within_tasks():
    # task 0 always scores 0, task 1 always 1: every resample keeps half the scores at each, so the IQM stays 0.5
    scores = np.stack([np.zeros(6), np.ones(6)], axis=1)
    low, high = plot.stratified_bootstrap_ci(scores)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)


@pytest.mark.parametrize("scale", reproduce.SCALES)
def test_every_command_parses_at_every_scale(scale):
    """Each run's flags are valid for its algorithm file (parsed by its own CLI, nothing compiled)."""
    for figure in reproduce.REGISTRY.values():
        runs = figure.runs(scale)
        assert runs and len({run.name for run in runs}) == len(runs)
        for run in runs:
            module = importlib.import_module(f"algorithms.{run.algorithm}")
            cmd = reproduce.command(run, figure.seeds[scale], Path("/tmp/unused"))
            config = runner.parse_config(module.Config, module.PRESETS, cmd[2:])
            assert config.num_seeds == figure.seeds[scale]


@pytest.mark.parametrize("scale", reproduce.SCALES)
def test_every_figure_has_a_caption_at_every_scale(scale):
    for figure in reproduce.REGISTRY.values():
        caption = plot.figure_caption(figure, scale, figure.seeds[scale], [run.env for run in figure.runs(scale)])
        assert figure.steps[scale] in caption and figure.title in caption


def test_stream_ac_brax_resolved_commands():
    runs = reproduce.REGISTRY["stream-ac-brax"].runs("full")
    assert [run.env for run in runs] == ["brax/hopper", "brax/walker2d", "brax/halfcheetah"]
    assert reproduce.REGISTRY["stream-ac-brax"].runs("paper") == runs  # the paper's budget, fewer seeds
    assert reproduce.REGISTRY["stream-ac-brax"].seeds["paper"] == 4
    cmd = reproduce.command(runs[0], 8, Path("out"))
    assert cmd[2:4] == ["--preset", "brax-hopper-ac"] and "2000000" in cmd
    assert reproduce.REGISTRY["stream-ac-brax"].runs("cpu")[0].args[-1] == "100000"


def test_unknown_figure_lists_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match="Unknown figure.*pqn-cartpole"):
        reproduce.reproduce("no-such-figure", "tiny", out=tmp_path)


def test_killed_run_is_continued_with_resume(tmp_path, monkeypatch):
    run_dir = tmp_path / "pqn-cartpole" / "tiny" / "pqn"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"num_seeds": 2}')
    (run_dir / "resume.npz").write_bytes(b"")
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda cmd, **k: calls.append(cmd) or SimpleNamespace(returncode=0))
    reproduce.train(reproduce.REGISTRY["pqn-cartpole"], "tiny", 2, run_dir.parent, log=lambda _: None)
    assert calls[0][2:] == ["--resume", str(run_dir), "--quiet"]
    calls.clear()  # another seed count is another run: started afresh
    reproduce.train(reproduce.REGISTRY["pqn-cartpole"], "tiny", 3, run_dir.parent, log=lambda _: None)
    assert "--resume" not in calls[0] and "--num-seeds" in calls[0]


@pytest.fixture(scope="module")
def cartpole_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    path = reproduce.reproduce("pqn-cartpole", "tiny", out=out, log=lambda _: None)
    return out, path


@pytest.mark.slow
def test_tiny_figure_is_written(cartpole_out):
    out, path = cartpole_out
    assert path == out / "pqn-cartpole" / "tiny" / "pqn-cartpole.png" and path.stat().st_size > 1000
    assert reproduce.is_done(out / "pqn-cartpole" / "tiny" / "pqn", 2)


@pytest.mark.slow
def test_resume_does_not_retrain(cartpole_out, monkeypatch):
    out, path = cartpole_out
    summary = out / "pqn-cartpole" / "tiny" / "pqn" / "summary.json"
    mtime = summary.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run", lambda *a, **k: calls.append(a))
    messages = []
    assert reproduce.reproduce("pqn-cartpole", "tiny", out=out, log=messages.append) == path
    assert calls == [] and summary.stat().st_mtime_ns == mtime
    assert "not rerun" in messages[0]
    assert not reproduce.is_done(summary.parent, 3)  # more seeds than are there: that run would be redone


# sac-brax and stream-ac-brax draw as the others do; their brax runs are compiled by the SAC and stream AC tests.
def run_in_this_process(cmd, **kwargs):
    """reproduce.train's `subprocess.run(cmd)` as a call of the file's main(args) in the test process, which skips
    a Python start and a JAX import per run. The run's command is the same; test_tiny_figure_is_written runs
    reproduce.py's own subprocesses."""
    module = importlib.import_module(f"algorithms.{Path(cmd[1]).stem}")
    try:
        module.main(cmd[2:])
    except SystemExit as error:
        return SimpleNamespace(returncode=error.code or 0)
    return SimpleNamespace(returncode=0)


@pytest.mark.parametrize("name", ["pqn-minatar", "pqn-normalization", "stream-q-minatar", "sqirl-horizon",
                                  "qarl-robustness", "iwocs-worst-case"])
@pytest.mark.slow
def test_tiny_run_of_each_figure(name, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce.subprocess, "run", run_in_this_process)
    path = reproduce.reproduce(name, "tiny", out=tmp_path, log=lambda _: None)
    assert path.exists() and path.stat().st_size > 1000
    if name == "qarl-robustness":  # the table beside a QARL figure: one row per variant; SAC has no adversary
        rows = path.with_suffix(".md").read_text().strip().splitlines()
        assert rows[0].split(" | ")[1:] == ["nominal", "vs adversary", "worst", "average |"]
        assert len(rows) == 2 + 2 and rows[-1].startswith("| SAC") and "| n/a |" in rows[-1]


@pytest.mark.slow
def test_qarl_dmc_runs_the_papers_variants_on_its_tasks():
    """qarl-dmc: QARL, linear, RARL and SAC with one budget on the dmc presets (built, not compiled: a dmc QARL
    program compiles for minutes on 2 cores); the CPU scale is 12 of the authors' 200 iterations."""
    qarl = importlib.import_module("algorithms.qarl")
    figure = reproduce.REGISTRY["qarl-dmc"]
    for scale, envs in (("cpu", ["dmc/CartpoleBalance"]), ("full", ["dmc/CartpoleBalance", "dmc/CheetahRun"])):
        runs = figure.runs(scale)
        assert sorted({run.env for run in runs}) == envs and len(runs) == 4 * len(envs)
        configs = [runner.parse_config(qarl.Config, qarl.PRESETS, list(run.args)) for run in runs]
        assert [(c.curriculum, c.adversary) for c in configs[:4]] == [
            ("self-paced", "on"), ("linear", "on"), ("rarl", "on"), ("self-paced", "off")]
        assert len({c.total_timesteps for c in configs}) == 1
        assert configs[0].total_timesteps == (12 if scale == "cpu" else 200) * 5 * 500
        assert configs[0].phase_steps == 500 and configs[0].grid_set == "dmc-cartpole-balance-qarl"
        assert callable(qarl.make_train(configs[0]))


@pytest.mark.slow
def test_a_figure_redraws_from_its_kept_curve_files_alone(cartpole_out, tmp_path, monkeypatch):
    """results/paper/ keeps of each run only summary.json, config.json and curve_<key>.csv: the curve file holds
    exactly the series the figure draws from the run's metrics, and the figure redraws from those files alone
    (nothing is trained again)."""
    out, _ = cartpole_out
    run_dir = out / "pqn-cartpole" / "tiny" / "pqn"
    steps, values = plot.binned_curve(*plot.read_metrics(run_dir, "eval_return"))
    kept = tmp_path / "pqn-cartpole" / "tiny" / "pqn"
    kept.mkdir(parents=True)
    for name in ("summary.json", "config.json", "curve_eval_return.csv"):
        shutil.copy(run_dir / name, kept / name)
    kept_steps, kept_values = plot.read_metrics(kept, "eval_return")
    np.testing.assert_allclose(kept_steps, steps, rtol=1e-8)
    np.testing.assert_allclose(kept_values, values, rtol=1e-7)
    drawn = []  # what the figure's panel is given to draw: the run's series, unchanged
    real_panel = plot.curve_panel

    def recording_panel(ax, x, y, *args, **kwargs):
        drawn.append((x, y))
        return real_panel(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(plot, "curve_panel", recording_panel)
    path = reproduce.reproduce("pqn-cartpole", "tiny", out=tmp_path, log=lambda _: None)
    assert len(drawn) == 1
    np.testing.assert_allclose(drawn[0][0], steps, rtol=1e-8)
    np.testing.assert_allclose(drawn[0][1], values, rtol=1e-7)
    assert path.exists() and sorted(p.name for p in kept.iterdir()) == ["config.json", "curve_eval_return.csv",
                                                                         "summary.json"]


def test_sqirl_bridge_gives_both_methods_the_same_cap_and_bridges_settings():
    """sqirl-bridge: per MDP one SQIRL and one PQN run on the same minigrid id and cap; SQIRL with BRIDGE's
    horizon 100 and γ = 1, k = 1 and the optimal return 1 as its solve threshold; the full scale takes every
    MDP the exact analysis can enumerate, the CPU scale a subset of it."""
    import envs

    sqirl, pqn = importlib.import_module("algorithms.sqirl"), importlib.import_module("algorithms.pqn")
    figure = reproduce.REGISTRY["sqirl-bridge"]
    assert set(reproduce.BRIDGE_CPU) < set(reproduce.BRIDGE_FULL)
    assert {f"minigrid/{name}" for name in reproduce.BRIDGE_FULL} == set(envs.minigrid_ids()) - {
        "minigrid/DoorKey-16x16", "minigrid/BlockedUnlockPickup"}  # > 200k states: not enumerated
    for scale in ("cpu", "full"):
        runs = figure.runs(scale)
        assert [run.algorithm for run in runs] == ["sqirl", "pqn"] * (len(runs) // 2)
        for first, second in zip(runs[::2], runs[1::2]):
            a = runner.parse_config(sqirl.Config, sqirl.PRESETS, list(first.args))
            b = runner.parse_config(pqn.Config, pqn.PRESETS, list(second.args))
            assert a.env_id == b.env_id == first.env and a.total_timesteps == b.total_timesteps
            assert (a.horizon, a.gamma, a.num_heads, a.solve_threshold) == (100, 1.0, 1, 1.0)
        assert a.total_timesteps == {"cpu": 100_000, "full": 5_000_000}[scale]


def _fake_run(run_dir: Path, steps_per_seed: list[list[int]], returns_per_seed: list[list[float]], cap: int):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(f'{{"total_timesteps": {cap}}}')
    for seed, (steps, returns) in enumerate(zip(steps_per_seed, returns_per_seed)):
        rows = ["env_steps,eval_return", *[f"{s},{'' if np.isnan(r) else r}" for s, r in zip(steps, returns)]]
        (run_dir / f"metrics_seed{seed}.csv").write_text("\n".join(rows) + "\n")


def test_steps_to_solve_reads_each_seeds_own_env_steps(tmp_path):
    """SQIRL's seeds spend different env steps per iteration: each seed's first optimal evaluation is read
    against its own env_steps column, as sqirl.py's own steps_to_solve counts it."""
    sqirl = importlib.import_module("algorithms.sqirl")
    steps = [[100, 230, 350], [120, 210, 330], [90, 200, 310]]
    returns = [[0.0, 1.0, 1.0], [0.0, np.nan, 1.0], [0.0, 0.0, 0.5]]
    _fake_run(tmp_path / "run", steps, returns, cap=400)
    assert plot.steps_to_solve(tmp_path / "run", 3) == [230, 330, None]
    assert plot.steps_to_solve(tmp_path / "run", 3) == sqirl.steps_to_solve(np.array(returns), np.array(steps), 1.0)


@pytest.mark.slow
def test_sample_complexity_figure_and_table(tmp_path):
    """The figure's table: exact facts of the MDP (Empty-5x5: 32 states, min k 1, bound 6), per method the seeds
    solved and the median over all seeds (beyond the cap when fewer than half solved, BRIDGE's inf)."""
    figure = reproduce.REGISTRY["sqirl-bridge"]
    runs = figure.runs("tiny")
    out = tmp_path / "sqirl-bridge" / "tiny"
    _fake_run(out / runs[0].name, [[10, 20, 30]] * 3, [[0, 1, 1], [0, 0, 1], [0, 0, 0]], cap=30)
    _fake_run(out / runs[1].name, [[10, 20, 30]] * 3, [[0, 0, 1], [0, 0, 0], [0, 0, 0]], cap=30)
    runs = [(run, out / run.name) for run in runs]
    path = plot.plot_figure(figure, "tiny", 3, runs, out / "sqirl-bridge.png")
    assert path.stat().st_size > 1000
    rows = path.with_suffix(".md").read_text().strip().splitlines()
    assert rows[2] == "| minigrid/Empty-5x5 | 32 | 1 | 6.00 | not available | 2/3, 0.0k | 1/3, > 0k |"
    table = path.with_suffix(".csv").read_text().strip().splitlines()
    assert table[1:] == ["minigrid/Empty-5x5,SQIRL (k=1),32,1,6.0,30,20,30,", "minigrid/Empty-5x5,PQN,32,1,6.0,30,30,,"]
    # results/paper/ keeps the table, not the metrics: the figure redraws from it alone, the same
    for _, run_dir in runs:
        for metrics in run_dir.glob("metrics_seed*.csv"):
            metrics.unlink()
    plot.plot_figure(figure, "tiny", 3, runs, out / "sqirl-bridge.png")
    assert path.with_suffix(".md").read_text().strip().splitlines() == rows
    assert path.with_suffix(".csv").read_text().strip().splitlines() == table


@pytest.mark.parametrize("damage", ["cut mid-row", "a seed's rows cut"])
def test_a_damaged_metrics_file_is_one_line_and_resume_writes_it_again(damage, tmp_path):
    """plot.py on a run whose metrics_seed<i>.csv is damaged: one line naming it and the fix (no KeyError or
    ValueError traceback); the fix (--resume of the finished run) writes the same file again, byte for byte."""
    stream_x = importlib.import_module("algorithms.stream_x")
    run_dir = tmp_path / "run"
    stream_x.main(["--total-timesteps", "600", "--num-log-rows", "3", "--num-seeds", "2", "--num-checkpoints", "3",
                   "--quiet", "--run-dir", str(run_dir)])
    path = run_dir / "metrics_seed1.csv"
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    path.write_bytes(whole[:len(whole) - len(lines[-1]) // 2] if damage == "cut mid-row" else b"".join(lines[:-1]))
    with pytest.raises(SystemExit) as error:
        plot.read_metrics(run_dir, "episode_return")
    message = str(error.value)
    assert "\n" not in message and f"{path} is damaged" in message and f"--resume {run_dir}" in message
    stream_x.main(["--resume", str(run_dir), "--quiet"])
    assert path.read_bytes() == whole

