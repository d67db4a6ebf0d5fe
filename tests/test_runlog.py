"""The shared run-output module: progress, seeds, trackers, and that batched and unbatched seeds agree."""

import csv
import dataclasses
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import runner
import runlog
from algorithms import pqn


def test_progress_waits_for_every_seed_and_averages(tmp_path, capsys):
    progress = runlog.Progress(tmp_path, total_env_steps=200, num_seeds=2, every_seconds=0.0)
    progress(env_steps=100, episode_return=1.0, eval_return=float("nan"))
    assert not (tmp_path / "progress.csv").exists()  # seed 1 has not reported yet
    progress(env_steps=100, episode_return=3.0, eval_return=float("nan"))
    progress(env_steps=200, episode_return=5.0, eval_return=10.0)
    progress(env_steps=200, episode_return=7.0, eval_return=float("nan"))
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert [int(r["env_steps"]) for r in rows] == [100, 200]
    assert float(rows[0]["episode_return"]) == 2.0 and np.isnan(float(rows[0]["eval_return"]))
    assert float(rows[1]["episode_return"]) == 6.0 and float(rows[1]["eval_return"]) == 10.0
    assert "100.0%" in capsys.readouterr().out


def test_quiet_progress_prints_nothing(tmp_path, capsys):
    progress = runlog.Progress(tmp_path, total_env_steps=10, num_seeds=1, quiet=True, every_seconds=0.0)
    progress(env_steps=10, episode_return=1.0)
    assert capsys.readouterr().out == "" and (tmp_path / "progress.csv").exists()


def test_seed_keys_do_not_depend_on_the_number_of_seeds():
    np.testing.assert_array_equal(runner.seed_keys(7, 1)[0], runner.seed_keys(7, 8)[0])
    keys = runner.seed_keys(7, 8)
    assert len({tuple(np.asarray(k)) for k in keys}) == 8


def test_checkpoint_of_seed_takes_that_seeds_slice_of_every_array():
    """scripts/evaluate.py --seed-index i rebuilds seed i's policy from a checkpoint whose arrays all lead with the
    seed axis (as finish_run saves them): every leaf, nested or not, gives its row i."""
    checkpoint = {"params": {"w": np.arange(24.0).reshape(3, 2, 4), "b": np.arange(3.0)}, "step": np.array([5, 6, 7])}
    for index in range(3):
        seed = runner.checkpoint_of_seed(checkpoint, index)
        np.testing.assert_array_equal(seed["params"]["w"], checkpoint["params"]["w"][index])
        assert float(seed["params"]["b"]) == index and int(seed["step"]) == 5 + index


def test_final_evaluation_key_follows_the_seed_and_is_not_a_training_key():
    """--seed picks the final evaluation's episodes (another seed, other episodes; the same seed, the same ones), and
    they are not the episodes of any of the run's training keys."""
    keys = [np.asarray(jax.random.key_data(runner.final_eval_key(seed))).tolist() for seed in (0, 1, 0)]
    assert keys[0] == keys[2] and keys[0] != keys[1]
    training = np.asarray(jax.random.key_data(runner.seed_keys(0, 4))).tolist()
    assert keys[0] not in training


@pytest.mark.slow
def test_one_seed_unbatched_matches_the_batched_run():
    config = runner.parse_config(pqn.Config, pqn.PRESETS, ["--total-timesteps", "4096", "--num-evals", "1"])
    train = pqn.make_train(config)
    keys = runner.seed_keys(0, 2)
    single_state, single = jax.jit(runner.vmap_seeds(train))(keys[:1])
    batched_state, batched = jax.jit(runner.vmap_seeds(train))(keys)
    assert single["td_loss"].shape == (1, 2) and batched["td_loss"].shape == (2, 2)
    # Same run, other matmul kernels: equal up to float rounding.
    np.testing.assert_allclose(single["td_loss"][0], batched["td_loss"][0], rtol=1e-3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[0], atol=1e-4),
                 single_state.params, batched_state.params)


@dataclasses.dataclass
class _Config:
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "test"


def _metrics():
    return {"env_steps": jnp.array([[10, 20], [10, 20]]), "episode_return": jnp.array([[1.0, jnp.nan], [3.0, 4.0]])}


def test_tensorboard_writes_one_series_per_seed(tmp_path):
    runlog.log_trackers(tmp_path, _Config(tensorboard=True), _metrics())
    for seed in (0, 1):
        files = list((tmp_path / "tensorboard" / f"seed{seed}").glob("events.out.tfevents.*"))
        assert files and files[0].stat().st_size > 0


def test_wandb_logs_one_run_per_seed(tmp_path, monkeypatch):
    logged = []

    class FakeRun:
        def __init__(self, name):
            self.name = name

        def log(self, values, step):
            logged.append((self.name, step, values))

        def finish(self):
            logged.append((self.name, "finished", None))

    fake = types.SimpleNamespace(init=lambda **kwargs: FakeRun(kwargs["name"]))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    runlog.log_trackers(tmp_path, _Config(wandb=True), _metrics())
    names = {name for name, *_ in logged}
    assert len(names) == 2 and all(name.endswith(("seed0", "seed1")) for name in names)
    seed1 = [values for name, step, values in logged if name.endswith("seed1") and values]
    assert [v["episode_return"] for v in seed1] == [3.0, 4.0]


def test_schedule_note_says_how_steps_and_checkpoints_were_rounded():
    assert runner.schedule_note(8, 4, 4096, 4096) == "4,096 steps per seed, 4 checkpoints"
    # 10 checkpoints of 12 updates: 6 equal chunks; 5000 steps in whole updates of 512: 4,608
    assert runner.schedule_note(12, 10, 4608, 5000) == (
        "4,608 steps per seed (--total-timesteps 5,000 rounded down to whole updates), 6 checkpoints "
        "(--num-checkpoints 10 rounded down to a divisor of the 12 updates)")
    assert runner.num_chunks(12, 10) == 6 and runner.num_chunks(7, 10) == 7 and runner.num_chunks(13, 10) == 1
    assert runner.schedule_note(13, 10) == "1 checkpoint (--num-checkpoints 10 rounded down to a divisor of the 13 updates)"
