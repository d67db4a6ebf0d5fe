"""BRIDGE's MiniGrid MDPs (envs/minigrid.py) and the exact analysis (envs/tabular.py)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import tabular
from envs.minigrid import FORWARD, LEFT, PICKUP, RIGHT, TOGGLE, DROP

ROOT = Path(__file__).resolve().parents[1]


def run(env_id, actions):
    """Step `env_id` through `actions` with the common interface; (rewards, terminated, truncated) per step."""
    env, params = envs.make(env_id)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step)
    out = []
    for i, a in enumerate(actions):
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(i), state, a, params)
        assert obs.shape == env.observation_space(params).shape
        out.append((float(reward), bool(terminated), bool(truncated)))
    return out


@pytest.mark.parametrize("env_id", envs.minigrid_ids())
def test_every_id_steps_under_the_common_interface(env_id):
    env, params = envs.make(env_id)
    assert params.max_steps_in_episode == 100  # BRIDGE's horizon
    assert env.num_actions == (3 if "/Empty" in env_id else 6)
    steps = run(env_id, [LEFT, LEFT, RIGHT])  # turning never ends an episode
    assert all(r == 0.0 and not term and not trunc for r, term, trunc in steps)


def test_truncates_at_the_horizon_and_terminates_at_the_goal():
    turning = run("minigrid/Empty-5x5", [LEFT] * 100)
    assert [trunc for _, _, trunc in turning] == [False] * 99 + [True]
    assert not any(term for _, term, _ in turning)
    # start (1, 1) facing east, goal (3, 3): two squares east, turn south, two squares south
    to_goal = run("minigrid/Empty-5x5", [FORWARD, FORWARD, RIGHT, FORWARD, FORWARD])
    assert to_goal[-1] == (1.0, True, False) and all(r == 0.0 and not t for r, t, _ in to_goal[:-1])


def test_keys_doors_and_pickups_follow_minigrid():
    # KeyCorridorS3R1: "#KDvDB#": key, closed blue door, agent facing south, locked yellow door, the purple ball
    route = [RIGHT, TOGGLE, FORWARD, PICKUP,  # open the blue door, step in, take the key
             LEFT, LEFT, FORWARD, TOGGLE,      # back, unlock the yellow door with the key
             RIGHT, RIGHT, FORWARD, DROP,       # the hands must be empty to take the ball: drop the key west
             LEFT, LEFT, FORWARD, FORWARD, PICKUP]  # into the open doorway, take the ball
    steps = run("minigrid/KeyCorridorS3R1", route)
    assert steps[-1] == (1.0, True, False)
    assert all(r == 0.0 and not t for r, t, _ in steps[:-1])
    # without dropping the key the ball cannot be taken
    assert run("minigrid/KeyCorridorS3R1", route[:8] + [FORWARD, PICKUP])[-1] == (0.0, False, False)
    # Unlock ("#<   L    #" on row 4, the purple key at (3, 1)): the locked door does not open without its
    # key; with it, the toggle that opens the door ends the episode
    assert run("minigrid/Unlock", [RIGHT, RIGHT, FORWARD, FORWARD, FORWARD, TOGGLE])[-1] == (0.0, False, False)
    key_then_door = [RIGHT, FORWARD, FORWARD, RIGHT, FORWARD, FORWARD, LEFT, PICKUP,
                     RIGHT, RIGHT, FORWARD, FORWARD, LEFT, FORWARD, TOGGLE]
    steps = run("minigrid/Unlock", key_then_door)
    assert steps[-1] == (1.0, True, False) and not any(t for _, t, _ in steps[:-1])


def test_lava_ends_the_episode_without_reward():
    # LavaGapS5: the agent starts west of the lava column, facing it
    assert run("minigrid/LavaGapS5", [FORWARD])[-1] == (0.0, True, False)


def test_the_exact_solver_on_hand_checked_mdps():
    env, params = envs.make("minigrid/Empty-5x5")
    mdp = tabular.enumerate_mdp(env, params)
    assert mdp.transitions.shape == (3 * 3 * 4 - 4, 3)  # 9 squares x 4 directions, less the goal's 4
    facts = tabular.analyze(mdp.transitions, mdp.rewards, 100)
    assert facts.optimal_return == 1.0 and facts.worst_return == 0.0 and facts.min_k == 1
    for n in (2, 4):  # the locks are k-QVI-solvable exactly from k = n (envs/combination_lock.py)
        lock, lock_params = envs.make(f"CombinationLock-H{n}")
        lock_mdp = tabular.enumerate_mdp(lock, lock_params)
        lock_facts = tabular.analyze(lock_mdp.transitions, lock_mdp.rewards, n)
        assert lock_facts.min_k == n
        assert lock_facts.optimal_return == pytest.approx(lock.optimal_return(lock_params), abs=1e-6)


@pytest.mark.slow
def test_keycorridor_s3r1_matches_the_authors_analysis():
    """BRIDGE's data/mdps/MiniGrid-KeyCorridorS3R1-v0/consolidated_analyzed.json (github.com/cassidylaidlaw/
    effective-horizon): min_k 1, EPW 15, and for k = 1..16 the sample counts m_k of Theorem 5.4, whence the
    effective horizon's simple bound 16. Enumerating this file's env and analysing it gives the same integers."""
    env, params = envs.make("minigrid/KeyCorridorS3R1")
    mdp = tabular.enumerate_mdp(env, params)
    facts = tabular.analyze(mdp.transitions, mdp.rewards, 100)
    assert (facts.min_k, facts.epw, facts.effective_horizon_simple, facts.optimal_return) == (1, 15, 16.0, 1.0)
    assert facts.ks == list(range(1, 17))
    # the m_k are ceil(16 σ² / Δ² log(2 T A^k)) of float64 quantities; compare to 1e-9 relative, far above the
    # rounding of sums of at most 100 rewards in {0, 1} and below any change of the MDP
    authors = [6667295335345, 1392035355359, 278809136916, 54268730212, 10344878490, 3881656204, 719169930,
               131899527, 23989567, 4332647, 1555678, 277857, 49406, 17501, 3089, 1]
    np.testing.assert_allclose(facts.ms, authors, rtol=1e-9)


def test_bad_minigrid_id_gives_one_line_with_suggestions():
    with pytest.raises(envs.ConfigError) as error:
        envs.make("minigrid/DoorKey-5x6")
    message = str(error.value)
    assert "\n" not in message and "'minigrid/DoorKey-5x5'" in message


@pytest.mark.slow
@pytest.mark.optimised
def test_sqirl_solves_the_smallest_mdp(tmp_path):
    """SQIRL with k = 1 (BRIDGE: Empty-5x5 is 1-QVI-solvable) reaches the optimal return 1 within 40k env
    steps; a random policy's return is 0.76 and a do-nothing policy's (turning on the spot) 0."""
    cmd = [sys.executable, str(ROOT / "algorithms" / "sqirl.py"), "--preset", "lock", "--env-id", "minigrid/Empty-5x5",
           "--horizon", "100", "--num-heads", "1", "--replay-iterations", "2", "--episodes-per-iteration", "64",
           "--total-timesteps", "40000", "--num-seeds", "2", "--solve-threshold", "1", "--run-dir", str(tmp_path),
           "--quiet"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_return"] == [1.0, 1.0]
    assert all(s is not None and s <= 40_000 for s in summary["steps_to_solve"])


@pytest.mark.slow
def test_exact_mode_of_the_script(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "effective_horizon.py"), "--exact", "--envs",
                    "minigrid/LavaGapS5", "CombinationLock-H3", "--out-dir", str(tmp_path)], check=True, cwd=ROOT)
    table = (tmp_path / "exact.md").read_text()
    assert "| minigrid/LavaGapS5 | 100 | 6 | 16 | 1 |" in table and "| CombinationLock-H3 | 3 | 3 | 3 | 0.8 |" in table
