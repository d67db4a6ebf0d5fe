"""scripts/evaluate.py rebuilds any algorithm's trained policy from its run directory alone: evaluating a
finished run with the run's own settings gives its final_return again, episodes are measured on fresh envs,
on another env with the same spaces and over a robustness grid, one episode renders as a GIF, and bad input
is one line.

Each algorithm trains once (one seed) for the whole module, long enough to learn where the final return is an
evaluation (LEARNED: returns that a trivial policy cannot reach, asserted), so that a rebuilt policy that acted
at random, or not at all, could not give the run's final return again. The run computed
its final evaluation inside its jitted training program; evaluate.py computes it in a program of its own, on
the same episodes (runner.final_eval_key, or the file's own keys). The two are different XLA programs, so
they may round differently, and a different rounding can flip a greedy action: the tolerance is loose enough
for rounding (1e-4 relative) and the runs are unbatched (one seed) on both sides, where they agree exactly
on the machines measured.
"""

import json
import shutil
import sys
from importlib import import_module
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import runner
from tests.test_cli import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate  # noqa: E402

# QARL's and IWOCS's runs are evaluated where those runs are trained already (tests/test_qarl.py,
# tests/test_iwocs.py, with the robustness grid); stream-x's final_return is a training return.
EVALUATED = ["pqn", "sac", "sqirl"]
# Flags of each module-wide run: a learned policy for the evaluated three (measured on the 2-core CPU: PQN 500,
# SAC -123 at the suite's level-0 compiles (-314 at 4000 steps, -961 at 3000), SQIRL 0.9, the lock's optimum), and for each the return it must reach, far above a trivial policy's.
LEARNED = {
    "pqn": ["--total-timesteps", "100000", "--num-evals", "1"],  # CartPole: random about 22, one action held 9-10
    "sac": ["--total-timesteps", "5000", "--num-evals", "1"],  # Pendulum: zero torque about -1200 (test_qarl)
    "sqirl": ["--env-id", "CombinationLock-H2", "--horizon", "2", "--num-heads", "2", "--total-timesteps", "4096"],
    # lock H2: walking away 0, a random policy 0.9 / 9 = 0.1 on average, the right code 0.9
}
# PQN's bar is 9x a random policy's: built at the suite's XLA optimisation level 0 (tests/conftest.py) this run
# ends at 341, under XLA's defaults at 500 (the same operations, rounded differently, learn differently).
BAR = {"pqn": 200.0, "sac": -600.0, "sqirl": 0.85}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """run_dir(name): a finished one-seed tiny run of the algorithm (trained on first use)."""
    runs = {}

    def run_dir(name):
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp(name) / "run"
            flags = LEARNED.get(name, TINY[name])
            import_module(f"algorithms.{name}").main([*flags, "--quiet", "--run-dir", str(runs[name])])
        return runs[name]

    return run_dir


@pytest.mark.parametrize("name", EVALUATED)
@pytest.mark.slow
def test_evaluating_a_run_gives_its_final_return_again(name, trained, tmp_path):
    run_dir = trained(name)
    report = evaluate.main([str(run_dir), "--final-return", "--episodes", "2", "--out", str(tmp_path)])
    recorded = json.loads((run_dir / "summary.json").read_text())["final_return"]
    assert recorded[0] >= BAR[name], (name, recorded)  # a learned policy: a trivial one would not match it
    np.testing.assert_allclose(report["final_return"]["evaluated"], recorded, rtol=1e-4, atol=1e-4)
    episodes = report["episodes"]["per_seed"][0]
    assert len(episodes["returns"]) == 2 and np.isfinite(episodes["returns"]).all()
    assert json.loads((tmp_path / "eval.json").read_text())["final_return"]["summary"] == recorded


@pytest.mark.slow
def test_stream_x_policy_is_evaluated_and_has_no_final_evaluation(trained, tmp_path):
    run_dir = trained("stream_x")
    report = evaluate.main([str(run_dir), "--episodes", "3", "--out", str(tmp_path)])
    returns = report["episodes"]["per_seed"][0]["returns"]
    assert len(returns) == 3 and min(returns) >= 8  # CartPole pays 1 per step; no episode ends before step 8
    with pytest.raises(SystemExit, match="not an evaluation"):
        evaluate.main([str(run_dir), "--final-return", "--episodes", "0", "--out", str(tmp_path)])


@pytest.mark.slow
def test_episodes_on_another_env_with_the_same_spaces(trained, tmp_path):
    """PQN's CartPole policy on CartPole capped at 20 steps: every episode ends by step 20."""
    report = evaluate.main([str(trained("pqn")), "--env-id", "CartPole-v1/horizon20", "--episodes", "4",
                            "--out", str(tmp_path)])
    assert report["env_id"] == "CartPole-v1/horizon20"
    per_seed = report["episodes"]["per_seed"][0]
    assert per_seed["max"] <= 20 and per_seed["mean_length"] <= 20


@pytest.mark.slow
def test_set_changes_the_evaluation_env(trained, tmp_path):
    """--set sticky_action_prob=1: the env repeats its first action forever; the same episodes play differently."""
    flags = [str(trained("pqn")), "--episodes", "4", "--out", str(tmp_path)]
    plain = evaluate.main(flags)["episodes"]["per_seed"][0]["returns"]
    report = evaluate.main([*flags, "--set", "sticky_action_prob=1.0"])
    assert report["changes"] == {"sticky_action_prob": 1.0}
    assert report["episodes"]["per_seed"][0]["returns"] != plain


@pytest.mark.slow
def test_render_writes_a_gif_of_the_requested_frames(trained, tmp_path):
    report = evaluate.main([str(trained("pqn")), "--episodes", "0", "--render", str(tmp_path / "agent.gif"),
                            "--frames", "30", "--size", "96", "--out", str(tmp_path)])
    gif = Image.open(tmp_path / "agent.gif")
    assert report["render"]["frames"] == gif.n_frames == 30 and gif.size == (96, 96)
    first, last = np.asarray(gif.convert("RGB")), (gif.seek(29), np.asarray(gif.convert("RGB")))[1]
    assert not np.array_equal(first, last)  # the pole moves


@pytest.mark.slow
def test_render_draws_a_mujoco_body(tmp_path):
    """A dm_control cartpole, posed on the host from the MJX state: the pole and cart are drawn, in color."""
    import envs

    env, params = envs.make("dmc/CartpoleBalance")
    env = envs.EpisodeStatistics(env)
    policy = runner.Policy(env, params, act=lambda memory, obs, key: (jax.numpy.ones(1), memory))
    frames = evaluate.render(policy, jax.random.PRNGKey(0), tmp_path / "body.gif", "cartpole", 3, 96, 10)
    image = np.asarray(Image.open(tmp_path / "body.gif").convert("RGB")).astype(int)
    assert frames == 3 and (np.abs(image - 255).sum(-1) > 30).mean() > 0.02  # more than a blank page


@pytest.mark.parametrize("case", ["not_a_run", "unfinished", "sweep", "other_spaces", "unknown_env", "seed_index",
                                  "gif", "set"])
@pytest.mark.slow
def test_bad_input_is_one_line(case, trained, tmp_path):
    run_dir = trained("pqn")
    args, message = {
        "not_a_run": ([str(tmp_path)], "is not a run directory"),
        "unfinished": (None, "has no checkpoint.msgpack"),
        "sweep": (None, "is a sweep: evaluate one value's run directory"),
        "other_spaces": ([str(run_dir), "--env-id", "Acrobot-v1"], "pick an env with the same spaces"),
        "unknown_env": ([str(run_dir), "--env-id", "CartPole-v9"], "CartPole-v9"),
        "seed_index": ([str(run_dir), "--seed-index", "3"], "the run has 1 seed"),
        "gif": ([str(run_dir), "--episodes", "0", "--render", str(tmp_path / "a.mp4")], "ending in .gif"),
        "set": ([str(run_dir), "--set", "stickiness=1"], "a field of Config"),
    }[case]
    if case in ("unfinished", "sweep"):  # a killed run; a sweep's directory, whose values are runs of their own
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.json").write_text((run_dir / "config.json").read_text())
        args = [str(tmp_path / "run")]
        if case == "sweep":
            shutil.copytree(run_dir, tmp_path / "run" / "lr=0.001")
    with pytest.raises(SystemExit) as error:
        evaluate.main([*args, "--out", str(tmp_path / "out")])
    text = str(error.value)
    assert text.startswith("error: ") and message in text and "\n" not in text


def test_a_damaged_checkpoint_is_one_line_and_resume_writes_it_again(tmp_path):
    """evaluate.py on a run whose checkpoint.msgpack is cut short: one line naming it and the fix (no msgpack
    traceback), nothing changed; the fix (--resume of the finished run, from its last saved state) writes the
    same checkpoint again, byte for byte."""
    stream_x = import_module("algorithms.stream_x")
    run_dir = tmp_path / "run"
    stream_x.main([*TINY["stream_x"], "--num-checkpoints", "3", "--quiet", "--run-dir", str(run_dir)])
    checkpoint = run_dir / "checkpoint.msgpack"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[:len(whole) // 2])
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as error:
        evaluate.main([str(run_dir), "--episodes", "1", "--out", str(tmp_path / "eval")])
    message = str(error.value)
    assert "\n" not in message and f"{checkpoint} is damaged" in message and f"--resume {run_dir}" in message
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    stream_x.main(["--resume", str(run_dir), "--quiet"])
    assert checkpoint.read_bytes() == whole


def test_render_of_an_env_it_cannot_draw_is_refused_before_evaluating(tmp_path, monkeypatch):
    """--render on a task no drawer knows (bsuite's Catch) is one line before any episode runs."""
    stream_x = import_module("algorithms.stream_x")
    run_dir = tmp_path / "run"
    stream_x.main([*TINY["stream_x"], "--env-id", "Catch-bsuite", "--quiet", "--run-dir", str(run_dir)])
    monkeypatch.setattr(evaluate, "make_episodes", lambda *a: pytest.fail("evaluated before refusing"))
    with pytest.raises(SystemExit, match="none of them. Evaluate it without --render"):
        evaluate.main([str(run_dir), "--episodes", "2", "--render", str(tmp_path / "walk.gif"),
                       "--out", str(tmp_path / "out")])

