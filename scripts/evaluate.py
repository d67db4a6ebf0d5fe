"""Load a finished run's trained policy, measure it, and watch it act.

    python scripts/evaluate.py RUN_DIR                          # 10 episodes per seed, a table, RUN_DIR/eval/
    python scripts/evaluate.py RUN_DIR --episodes 100 --seed-index 0
    python scripts/evaluate.py RUN_DIR --render agent.gif       # one episode as an animated GIF
    python scripts/evaluate.py RUN_DIR --env-id CartPole-v1/horizon200   # on another env with the same spaces
    python scripts/evaluate.py RUN_DIR --set sticky_action_prob=0.25     # a config field of the evaluation env
    python scripts/evaluate.py RUN_DIR --grid pendulum-2d --grid-points 11   # robustness grid (continuous)
    python scripts/evaluate.py RUN_DIR --final-return           # redo the run's final evaluation

RUN_DIR is a directory an algorithm file wrote (config.json, summary.json, checkpoint.msgpack). The policy is
rebuilt by that file's own `trained_policy(config, checkpoint, seed_index)`: PQN's greedy Q-network, SAC's
deterministic actor (tanh of the mean, with the run's observation statistics), stream Q's greedy / stream AC's
mean action (with the run's frozen observation statistics and time feature), SQIRL's per-timestep greedy
policies, QARL's protagonist (temperature feature 0, no adversary), IWOCS's robust policy (its bank of models
with their Q-networks, and its fallback). The file is found as algorithms/<algorithm>.py next to this script,
or given with --algorithm-file (a copy kept elsewhere).

--episodes N: each seed's policy acts for N episodes on fresh envs (keys from --eval-seed); the table gives
mean, std and IQM (interquartile mean, as rliable) of the episode returns per seed and over all seeds.
--final-return: the run's own final evaluation again (same protocol, same episodes), next to summary.json's
final_return: the two agree (up to float rounding of a different batch size). stream-x has none: its
final_return is the mean training return of the last 10% of the run.
--render PATH (.gif): one episode of one seed (--seed-index, default 0), drawn headless with matplotlib:
classic control and MinAtar from the env state, brax and dm_control bodies as a side view of their MuJoCo
geoms (no display, no OpenGL). The title says algorithm, env, seed, step and return.
--grid SET: the policy on every model of an uncertainty set's grid (envs.UNCERTAINTY_SETS, as QARL and IWOCS
evaluate), one episode per model: worst case, average, heatmap.

Writes RUN_DIR/eval/eval.json (or --out DIR) and prints a table. Bad input is one line that says what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's runner.py, runlog.py and envs/

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import runner  # noqa: E402
import runlog  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# LOADING A RUN


def load_run(run_dir: Path, algorithm_file: str | None = None):
    """(algorithm module, config, checkpoint, summary) of a finished run; SystemExit with a fix otherwise."""
    if not (run_dir / "config.json").exists():
        raise SystemExit(f"error: {run_dir} is not a run directory (no config.json): pass a directory an algorithm "
                         f"file wrote, e.g. runs/pqn_CartPole-v1_<time>.")
    values = sorted(d.name for d in run_dir.iterdir() if (d / "checkpoint.msgpack").exists())
    if not (run_dir / "checkpoint.msgpack").exists() and values:
        raise SystemExit(f"error: {run_dir} is a sweep: evaluate one value's run directory, e.g. "
                         f"{run_dir / values[0]}.")
    if not (run_dir / "checkpoint.msgpack").exists():
        raise SystemExit(f"error: {run_dir} has no checkpoint.msgpack: the run has not finished. Continue it with "
                         f"`python algorithms/<file>.py --resume {run_dir}`, then evaluate it.")
    recorded = runner.read_config_json(run_dir)
    name = recorded.get("algorithm")
    path = Path(algorithm_file) if algorithm_file else REPO / "algorithms" / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"error: the run was written by {name!r}, and {path} does not exist: pass the file that "
                         f"wrote it with --algorithm-file PATH.")
    spec = importlib.util.spec_from_file_location(f"evaluated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    if not hasattr(module, "trained_policy"):
        raise SystemExit(f"error: {path} has no trained_policy(config, checkpoint, seed_index): add one (see "
                         f"algorithms/pqn.py) to evaluate its runs.")
    config = runner.recorded_config(module.Config, run_dir, sweep="", quiet=True, resume=False, run_dir=str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    return module, config, runlog.load_checkpoint(run_dir / "checkpoint.msgpack"), summary


def spaces_of(policy: runner.Policy):
    """(observation shape, action space description) of a policy's env."""
    space = policy.env.action_space(policy.env_params)
    action = ("discrete", int(space.n)) if hasattr(space, "n") else ("continuous", tuple(space.shape))
    return tuple(policy.env.observation_space(policy.env_params).shape), action


def episode_limit(policy: runner.Policy, cap: int = 100_000) -> int:
    return int(min(getattr(policy.env_params, "max_steps_in_episode", cap), cap))


# ----------------------------------------------------------------------------------------------------
# EPISODES


def make_episodes(policy: runner.Policy, num_steps: int):
    """A jitted `episodes(keys) -> (returns, lengths)`: one episode per key, acting with the policy from a fresh
    reset for at most num_steps steps (the return of an unfinished episode is its sum so far)."""
    env, params = policy.env, policy.env_params

    def one(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)

        def step(carry, key):
            obs, state, memory, total, length, finished = carry
            key_act, key_step = jax.random.split(key)
            action, memory = policy.act(memory, obs, key_act)
            next_obs, next_state, reward, terminated, truncated, info = env.step(key_step, state, action, params)
            total = jnp.where(finished, total, total + reward)
            length = jnp.where(finished, length, length + 1)
            return (next_obs, next_state, memory, total, length, finished | terminated | truncated), None

        carry = (obs, state, policy.start(obs), jnp.float32(0.0), jnp.int32(0), jnp.bool_(False))
        (_, _, _, total, length, _), _ = jax.lax.scan(step, carry, jax.random.split(key_steps, num_steps))
        return total, length

    return jax.jit(jax.vmap(one))


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (rliable's definition, 25% cut each side)."""
    values = np.sort(np.asarray(values, np.float64).ravel())
    cut = int(np.floor(0.25 * len(values)))
    return float(values[cut:len(values) - cut].mean()) if len(values) > 2 * cut else float(values.mean())


def describe(returns: np.ndarray) -> dict:
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "iqm": iqm(returns),
            "min": float(np.min(returns)), "max": float(np.max(returns)), "episodes": int(np.size(returns))}


# ----------------------------------------------------------------------------------------------------
# RENDERING (matplotlib, headless)


def innermost(env, state):
    """The library env under every wrapper, and its state."""
    while hasattr(env, "_env"):
        env = env._env
    while hasattr(state, "env_state"):
        state = state.env_state
    return env, state


def frame_drawer(env, env_params):
    """draw(ax, raw env state) for the env under the wrappers, or SystemExit naming what can be drawn."""
    raw, _ = innermost(env, None)
    name = getattr(raw, "name", type(raw).__name__)
    if hasattr(raw, "brax_env") or hasattr(raw, "pg_env"):
        return body_drawer(raw)
    if name == "CartPole-v1":
        def draw(ax, s):
            x, theta, length = float(s.x), float(s.theta), 2 * float(env_params.length)
            ax.plot([-2.4, 2.4], [0, 0], color="0.3", lw=1)
            ax.add_patch(__import__("matplotlib").patches.Rectangle((x - 0.25, -0.08), 0.5, 0.16, color="tab:blue"))
            ax.plot([x, x + length * np.sin(theta)], [0, length * np.cos(theta)], color="tab:orange", lw=6,
                    solid_capstyle="round")
            ax.set(xlim=(-2.6, 2.6), ylim=(-0.5, 1.4))
        return draw
    if name == "Pendulum-v1":
        def draw(ax, s):
            theta = float(s.theta)
            ax.plot([0, np.sin(theta)], [0, np.cos(theta)], color="tab:orange", lw=8, solid_capstyle="round")
            ax.plot(0, 0, "o", color="k")
            ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3))
        return draw
    if name == "Acrobot-v1":
        def draw(ax, s):
            a, b = float(s.joint_angle1), float(s.joint_angle2)
            p1 = np.array([np.sin(a), -np.cos(a)])
            p2 = p1 + np.array([np.sin(a + b), -np.cos(a + b)])
            ax.plot([0, p1[0], p2[0]], [0, p1[1], p2[1]], color="tab:blue", lw=6, marker="o", solid_capstyle="round")
            ax.axhline(1.0, color="0.5", ls="--", lw=1)
            ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2))
        return draw
    if name.startswith("MountainCar"):
        def draw(ax, s):
            xs = np.linspace(-1.2, 0.6, 200)
            ax.plot(xs, 0.45 * np.sin(3 * xs) + 0.55, color="0.3")
            x = float(s.position)
            ax.plot(x, 0.45 * np.sin(3 * x) + 0.55, "o", color="tab:blue", ms=14)
            ax.plot([0.5, 0.5], [0.95, 1.1], color="tab:red", lw=2)
            ax.set(xlim=(-1.25, 0.65), ylim=(0, 1.2))
        return draw
    if name.endswith("MinAtar"):
        def draw(ax, s):
            grid = np.asarray(raw.get_obs(s), np.float32)  # (10, 10, channels) of 0/1
            colors = __import__("matplotlib").colormaps["tab20"](np.arange(grid.shape[-1]) % 20)[:, :3]
            image = np.ones(grid.shape[:2] + (3,)) * 0.05
            for channel in range(grid.shape[-1]):
                image[grid[..., channel] > 0] = colors[channel]
            ax.imshow(image, interpolation="nearest")
        return draw
    raise SystemExit(f"error: --render draws classic control (CartPole, Pendulum, Acrobot, MountainCar), MinAtar, "
                     f"brax and dmc/ tasks; {name} is none of them. Evaluate it without --render.")


def body_drawer(raw):
    """A side view (x right, z up) of every MuJoCo geom of a brax or Playground body, posed on the host."""
    import mujoco
    from matplotlib import patches

    model = raw.brax_env.sys.mj_model if hasattr(raw, "brax_env") else raw.pg_env.mj_model
    data = mujoco.MjData(model)

    def qpos(state):
        if hasattr(state, "pg_state"):
            return np.asarray(state.pg_state.data.qpos)
        pipeline = state.brax_state.pipeline_state
        return np.asarray(pipeline.q)

    def draw(ax, state):
        data.qpos[:] = qpos(state)
        mujoco.mj_kinematics(model, data)
        centre = data.xpos[1] if model.nbody > 1 else np.zeros(3)
        for g in range(model.ngeom):
            if model.geom_rgba[g, 3] == 0:
                continue
            kind, size = mujoco.mjtGeom(int(model.geom_type[g])), model.geom_size[g]
            pos, rot = data.geom_xpos[g], data.geom_xmat[g].reshape(3, 3)
            material = model.geom_matid[g]
            color = np.asarray((model.mat_rgba[material] if material >= 0 else model.geom_rgba[g])[:3], float)
            color = tuple(color * min(1.0, 0.7 / max(color.mean(), 1e-6)))  # pale bodies darkened on white
            if kind == mujoco.mjtGeom.mjGEOM_PLANE:
                ax.axhline(pos[2], color="0.4", lw=2, zorder=0)
            elif kind in (mujoco.mjtGeom.mjGEOM_CAPSULE, mujoco.mjtGeom.mjGEOM_CYLINDER):
                ends = [pos - size[1] * rot[:, 2], pos + size[1] * rot[:, 2]]
                width = size[0] * 2 * 72 * ax.figure.get_size_inches()[0] / 3.0  # radius in points, ~3 m view
                ax.plot([ends[0][0], ends[1][0]], [ends[0][2], ends[1][2]], color=color, lw=max(width, 1.5),
                        solid_capstyle="round" if kind == mujoco.mjtGeom.mjGEOM_CAPSULE else "butt")
            elif kind == mujoco.mjtGeom.mjGEOM_BOX:
                corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * size
                points = (pos + corners @ rot.T)[:, [0, 2]]
                hull = points[_convex_hull(points)]
                ax.add_patch(patches.Polygon(hull, color=color))
            else:  # sphere, ellipsoid, mesh: a disc of the geom's bounding radius
                ax.add_patch(patches.Circle((pos[0], pos[2]), float(model.geom_rbound[g] or size[0]), color=color))
        bottom = min(centre[2], 0.0) - 0.3  # the floor (z = 0) stays in view
        ax.set(xlim=(centre[0] - 1.5, centre[0] + 1.5), ylim=(bottom, bottom + 2.6), aspect="equal")

    return draw


def _convex_hull(points: np.ndarray) -> list[int]:
    """Indices of the 2-D convex hull, counter-clockwise (Andrew's monotone chain)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))

    def cross(o, a, b):
        return (points[a][0] - points[o][0]) * (points[b][1] - points[o][1]) - \
            (points[a][1] - points[o][1]) * (points[b][0] - points[o][0])

    hull = []
    for sequence in (order, order[::-1]):
        part = []
        for i in sequence:
            while len(part) >= 2 and cross(part[-2], part[-1], i) <= 0:
                part.pop()
            part.append(i)
        hull += part[:-1]
    return hull


def record(policy: runner.Policy, key, num_steps: int):
    """num_steps steps of the policy from a fresh reset, on through episode ends (the env resets itself): the env
    state before each step, the episode it belongs to (0, 1, ...) and that episode's return up to the step."""
    env, params = policy.env, policy.env_params

    def step(carry, key):
        obs, state, memory, episode, total = carry
        key_act, key_step = jax.random.split(key)
        action, memory = policy.act(memory, obs, key_act)
        next_obs, next_state, reward, terminated, truncated, _ = env.step(key_step, state, action, params)
        done = terminated | truncated
        memory = jax.tree.map(lambda fresh, kept: jnp.where(done, fresh, kept), policy.start(next_obs), memory)
        carry = (next_obs, next_state, memory, episode + done, jnp.where(done, 0.0, total + reward))
        return carry, (state, episode, total + reward)

    @jax.jit
    def run(key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = env.reset(key_reset, params)
        carry = (obs, state, policy.start(obs), jnp.int32(0), jnp.float32(0.0))
        return jax.lax.scan(step, carry, jax.random.split(key_steps, num_steps))[1]

    return run(key)


def drawer_for(policy: runner.Policy, path: Path):
    """The frame drawer of --render PATH, or SystemExit when PATH is not a GIF or the env cannot be drawn."""
    if path.suffix.lower() != ".gif":
        raise SystemExit(f"error: --render writes an animated GIF: give a path ending in .gif (got {path}).")
    return frame_drawer(policy.env, policy.env_params)


def render(policy: runner.Policy, key, path: Path, title: str, num_frames: int, size: int, fps: int) -> int:
    """num_frames steps of the policy (several episodes if they are short) as an animated GIF at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    draw = drawer_for(policy, path)
    states, episodes, returns = jax.device_get(record(policy, key, num_frames))
    _, raw_states = innermost(policy.env, states)
    frames = []
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    for t in range(num_frames):
        fig.clf()
        ax = fig.add_axes([0.02, 0.02, 0.96, 0.84])
        ax.set_axis_off()
        draw(ax, jax.tree.map(lambda x: x[t], raw_states))
        fig.suptitle(f"{title}\nepisode {int(episodes[t]) + 1}, return {float(returns[t]):.1f}", fontsize=8)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return len(frames)


# ----------------------------------------------------------------------------------------------------
# MAIN


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", help="a run directory (config.json, checkpoint.msgpack)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per seed (default 10; 0: none)")
    parser.add_argument("--seed-index", type=int, default=None, help="evaluate this seed only (default: all)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation episodes (default 0)")
    parser.add_argument("--env-id", default=None, help="evaluate on another env with the same spaces")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a config field of the evaluation env, e.g. sticky_action_prob=0.25 (repeatable)")
    parser.add_argument("--final-return", action="store_true",
                        help="redo the run's final evaluation and show summary.json's final_return beside it")
    parser.add_argument("--render", default=None, metavar="PATH", help="write one episode as an animated GIF")
    parser.add_argument("--frames", type=int, default=200,
                        help="frames of --render: env steps, through as many episodes as they take (default 200)")
    parser.add_argument("--fps", type=int, default=30, help="frames per second of --render (default 30)")
    parser.add_argument("--size", type=int, default=320, help="width and height of --render in pixels (default 320)")
    parser.add_argument("--grid", default=None, metavar="SET", help="an uncertainty set (envs.UNCERTAINTY_SETS)")
    parser.add_argument("--grid-points", type=int, default=11, help="grid points per axis (default 11)")
    parser.add_argument("--grid-steps", type=int, default=None,
                        help="steps per grid episode (default: the env's limit)")
    parser.add_argument("--algorithm-file", default=None, help="the algorithm file that wrote the run")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval)")
    args = parser.parse_args(argv)
    if args.episodes < 0 or args.frames < 1 or args.fps < 1 or args.size < 64 or args.grid_points < 2:
        raise SystemExit("error: --episodes must be >= 0, --frames and --fps >= 1, --size >= 64, --grid-points >= 2.")

    run_dir = Path(args.run_dir)
    module, config, checkpoint, summary = load_run(run_dir, args.algorithm_file)
    num_seeds = int(config.num_seeds)
    if args.seed_index is not None and not 0 <= args.seed_index < num_seeds:
        raise SystemExit(f"error: --seed-index {args.seed_index}: the run has {num_seeds} seed(s), "
                         f"0 to {num_seeds - 1}.")
    seeds = list(range(num_seeds)) if args.seed_index is None else [args.seed_index]
    changes = {"env_id": args.env_id} if args.env_id else {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(config)} or not value:
            raise SystemExit(f"error: --set {item}: write NAME=VALUE with NAME a field of {type(config).__name__} "
                             f"(see the algorithm file's --help).")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    eval_config = dataclasses.replace(config, **changes)

    def policy_of(seed: int, cfg=eval_config) -> runner.Policy:
        try:
            return module.trained_policy(cfg, runner.checkpoint_of_seed(checkpoint, seed), seed)
        except ValueError as error:  # the file's own checks (unknown env id, wrong action space)
            raise SystemExit(f"error: {error}") from None

    if changes:
        trained, other = spaces_of(policy_of(seeds[0], config)), spaces_of(policy_of(seeds[0]))
        if trained != other:
            raise SystemExit(f"error: {eval_config.env_id} has observations {other[0]} and actions {other[1]}, but "
                             f"the policy was trained on {config.env_id} with {trained[0]} and {trained[1]}: pick an "
                             f"env with the same spaces.")

    if args.render:  # refused before anything is evaluated
        drawer_for(policy_of(seeds[0]), Path(args.render))
    algorithm, env_id = summary.get("algorithm", module.__name__), eval_config.env_id
    out = Path(args.out) if args.out else run_dir / "eval"
    report = {"run_dir": str(run_dir), "algorithm": algorithm, "env_id": env_id, "seeds": seeds, "changes": changes}
    key = jax.random.PRNGKey(args.eval_seed)

    if args.final_return:
        if changes:
            raise SystemExit("error: --final-return redoes the run's own evaluation: drop --env-id and --set.")
        redone = []
        for seed in seeds:
            policy = policy_of(seed)
            if policy.final_return is None:
                raise SystemExit(f"error: {algorithm}'s final_return is not an evaluation (see its docstring): use "
                                 f"--episodes.")
            redone.append(float(jax.jit(policy.final_return)()))
        recorded = [summary.get("final_return", [None] * num_seeds)[s] for s in seeds]
        report["final_return"] = {"evaluated": redone, "summary": recorded}
        print(f"final return per seed: evaluated {[round(r, 3) for r in redone]}, "
              f"summary.json {[None if r is None else round(r, 3) for r in recorded]}")

    if args.episodes:
        per_seed = {}
        for seed in seeds:
            policy = policy_of(seed)
            keys = jax.random.split(jax.random.fold_in(key, seed), args.episodes)
            returns, lengths = make_episodes(policy, episode_limit(policy))(keys)
            per_seed[seed] = {**describe(np.asarray(returns)), "returns": np.asarray(returns).tolist(),
                              "mean_length": float(np.mean(lengths))}
        everything = np.concatenate([np.asarray(v["returns"]) for v in per_seed.values()])
        report["episodes"] = {"per_seed": per_seed, "all": describe(everything)}
        print(f"{algorithm} on {env_id}: {args.episodes} episodes per seed")
        print(f"{'seed':>6} {'mean':>10} {'std':>9} {'IQM':>10} {'min':>10} {'max':>10} {'length':>8}")
        for seed, row in per_seed.items():
            print(f"{seed:>6} {row['mean']:>10.2f} {row['std']:>9.2f} {row['iqm']:>10.2f} {row['min']:>10.2f} "
                  f"{row['max']:>10.2f} {row['mean_length']:>8.1f}")
        row = report["episodes"]["all"]
        print(f"{'all':>6} {row['mean']:>10.2f} {row['std']:>9.2f} {row['iqm']:>10.2f} {row['min']:>10.2f} "
              f"{row['max']:>10.2f}")

    if args.grid:
        import envs

        try:
            uset = envs.uncertainty_set(args.grid)
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        grids = []
        for seed in seeds:
            policy = policy_of(seed)
            fixed = jax.random.PRNGKey(0)
            try:
                evaluate = envs.make_grid_evaluator(
                    policy.env, policy.env_params, uset, lambda p, obs, memory: policy.act(memory, obs, fixed),
                    args.grid_points, args.grid_steps or episode_limit(policy), 1,
                    policy_init=lambda p, obs: policy.start(obs))
                grids.append(evaluate(None, jax.random.fold_in(key, seed)))
            except (ValueError, KeyError, AttributeError) as error:
                raise SystemExit(f"error: --grid {args.grid} does not fit {env_id} ({error}); the set's env is "
                                 f"{uset.env_id}.") from None
        stacked = jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *grids)
        out.mkdir(parents=True, exist_ok=True)
        table = envs.write_method_grids(out, uset, {algorithm: stacked})
        report["grid"] = {"set": uset.name, "points_per_axis": args.grid_points, **table[algorithm]}
        print(f"grid {uset.name} ({args.grid_points} per axis): worst {table[algorithm]['worst_mean']:.1f}, "
              f"average {table[algorithm]['average_mean']:.1f} (mean over {len(seeds)} seed(s)); heatmap in {out}")

    if args.render:
        seed = seeds[0]
        title = f"{algorithm} on {env_id}, seed {seed}"
        frames = render(policy_of(seed), jax.random.fold_in(key, 10_000 + seed), Path(args.render), title,
                        args.frames, args.size, args.fps)
        report["render"] = {"path": args.render, "frames": frames}
        print(f"{args.render}: {frames} frames")

    out.mkdir(parents=True, exist_ok=True)
    runlog.write_json(out / "eval.json", report)
    return report


if __name__ == "__main__":
    main()
