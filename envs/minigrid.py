"""BRIDGE's MiniGrid MDPs in JAX (ids `minigrid/<name>`, e.g. `minigrid/DoorKey-5x5`).

Laidlaw, Russell and Dragan (2023), "Bridging RL Theory and Practice with the Effective Horizon", build
BRIDGE's MiniGrid MDPs from MiniGrid (github.com/Farama-Foundation/Minigrid) with the wrappers of
github.com/cassidylaidlaw/effective-horizon (effective_horizon/envs/minigrid.py and
deterministic_registration.py). This file re-implements the MiniGrid rules those MDPs use, with BRIDGE's
settings:

- one fixed layout: BRIDGE resets every episode with seed 0 (its DeterministicWrapper), so each MDP is one
  grid. LAYOUTS below is MiniGrid's seed-0 layout of each env (read from minigrid 3.2.0; BRIDGE used
  minigrid 2.2, whose seed-0 layout agrees where BRIDGE's repository stores the start screen:
  KeyCorridorS3R1 and UnlockPickup);
- horizon 100 (BRIDGE's `max_episode_steps=100`): an episode is truncated at 100 steps. MiniGrid's own
  `max_steps` never ends an episode, because BRIDGE's TimeInvariantWrapper resets MiniGrid's step counter
  after every step; the same wrapper makes the reward of success always 1 (BRIDGE's DeterministicWrapper
  maps any positive reward to 1), not MiniGrid's 1 - 0.9 t / max_steps;
- actions: `Empty*` MDPs keep the three navigation actions (turn left, turn right, forward); every other MDP
  keeps six (also pick up, drop, toggle), without MiniGrid's no-op "done" (BRIDGE's NavigationOnlyWrapper and
  NoDoneActionWrapper);
- the task of the MiniGrid env: reach the goal square (Empty, DoorKey, LavaGap, crossings, DistShift,
  FourRooms, MultiRoom; stepping into lava ends the episode with reward 0), open the door (Unlock), or pick
  up the target object (UnlockPickup, BlockedUnlockPickup, KeyCorridor).

The rules (MiniGrid's MiniGridEnv.step): "forward" moves onto an empty, goal or lava square or an open door;
"pick up" takes the key, ball or box in front when the hands are empty; "drop" puts the carried object on
the empty square in front; "toggle" opens or closes an unlocked door, opens a locked door when carrying the
key of its colour, and opens a box (every box here is empty, so it disappears). Directions: 0 east (+x),
1 south (+y), 2 west, 3 north; the agent starts where the layout shows `>`, `v`, `<` or `^`.

Differences from BRIDGE's MiniGrid MDPs, and why:
- Observation: a one-hot encoding of the full grid (object kind, colour and door state per square), the
  agent's square, its direction and what it carries, flattened. BRIDGE's deep RL runs observe MiniGrid's
  FlatObsWrapper (the full grid's integer codes and a one-hot of the mission text); both describe the whole
  state. One-hot codes suit the small networks this collection trains; the MDP (states, transitions,
  rewards) is the same.
- MultiRoom's 25 x 25 grid is cut to the squares its seed-0 layout uses (walls included): the rest is out of
  reach, so only the observation's size changes.
- Left out: Dynamic-Obstacles (its obstacles move by MiniGrid's random generator, which the state would have
  to carry), and the envs whose seed-0 layout was not read here (Fetch, GoToDoor, GoToObject, PutNear,
  RedBlueDoors, LockedRoom, Memory, ObstructedMaze, KeyCorridorS4R3 and larger, MultiRoom-N4-S5 and N6):
  BRIDGE's full list is in its paper's appendix.

scripts/effective_horizon.py --exact enumerates these MDPs (envs/tabular.py) and computes their optimal
return, the smallest k for which they are k-QVI-solvable and the effective horizon's bound of the paper's
Theorem 5.4; tests/test_minigrid.py checks the rules against BRIDGE's own analysis of KeyCorridorS3R1.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from envs.errors import ConfigError

MINIGRID_PREFIX = "minigrid/"
HORIZON = 100  # BRIDGE: max_episode_steps=100

# MiniGrid's object codes (minigrid.core.constants), kept so the encodings read the same.
EMPTY, WALL, GOAL, LAVA, DOOR, KEY, BALL, BOX = 1, 2, 8, 9, 4, 5, 6, 7
KINDS = (EMPTY, WALL, DOOR, KEY, BALL, BOX, GOAL, LAVA)
COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
OPEN, CLOSED, LOCKED = 0, 1, 2  # MiniGrid's door states
DOOR_STATES = {"open": OPEN, "closed": CLOSED, "locked": LOCKED}
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = range(6)
DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)  # (dx, dy) for east, south, west, north
AGENT_MARKS = ">v<^"
MARKS = {"#": WALL, "G": GOAL, "~": LAVA, "D": DOOR, "K": KEY, "B": BALL, "X": BOX, " ": EMPTY}
OBJECT_KINDS = {"key": KEY, "ball": BALL, "box": BOX}


class Layout(NamedTuple):
    """One MDP: its grid (rows, agent mark included), its colored objects `(x, y, colour[, door state])` in
    reading order, its task (`goal`, `unlock` or `pickup`) and, for `pickup`, the target `(kind, colour)`."""
    rows: tuple[str, ...]
    objects: tuple[tuple, ...]
    task: str
    target: tuple[str, str] | None = None


# MiniGrid's seed-0 layouts (minigrid 3.2.0, `gym.make("MiniGrid-<name>-v0").reset(seed=0)`).
LAYOUTS: dict[str, Layout] = {
    "Empty-5x5": Layout(
        ("#####",
         "#>  #",
         "#   #",
         "#  G#",
         "#####"),
        (), 'goal'),
    "Empty-Random-5x5": Layout(
        ("#####",
         "# v #",
         "#   #",
         "#  G#",
         "#####"),
        (), 'goal'),
    "Empty-6x6": Layout(
        ("######",
         "#>   #",
         "#    #",
         "#    #",
         "#   G#",
         "######"),
        (), 'goal'),
    "Empty-Random-6x6": Layout(
        ("######",
         "#  v #",
         "#    #",
         "#    #",
         "#   G#",
         "######"),
        (), 'goal'),
    "Empty-8x8": Layout(
        ("########",
         "#>     #",
         "#      #",
         "#      #",
         "#      #",
         "#      #",
         "#     G#",
         "########"),
        (), 'goal'),
    "Empty-16x16": Layout(
        ("################",
         "#>             #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#              #",
         "#             G#",
         "################"),
        (), 'goal'),
    "DoorKey-5x5": Layout(
        ("#####",
         "# D #",
         "#K# #",
         "#<#G#",
         "#####"),
        ((2, 1, 'yellow', 'locked'), (1, 2, 'yellow')), 'goal'),
    "DoorKey-6x6": Layout(
        ("######",
         "#  D #",
         "#  # #",
         "#vK# #",
         "#  #G#",
         "######"),
        ((3, 1, 'yellow', 'locked'), (2, 3, 'yellow')), 'goal'),
    "DoorKey-8x8": Layout(
        ("########",
         "#    # #",
         "#    D #",
         "#    # #",
         "#  v # #",
         "#   K# #",
         "#    #G#",
         "########"),
        ((5, 2, 'yellow', 'locked'), (4, 5, 'yellow')), 'goal'),
    "DoorKey-16x16": Layout(
        ("################",
         "#           #  #",
         "#           #  #",
         "#           #  #",
         "#           #  #",
         "#           D  #",
         "#           #  #",
         "#           #  #",
         "#      v    #  #",
         "#           #  #",
         "#        K  #  #",
         "#           #  #",
         "#           #  #",
         "#           #  #",
         "#           # G#",
         "################"),
        ((12, 5, 'yellow', 'locked'), (9, 10, 'yellow')), 'goal'),
    "LavaGapS5": Layout(
        ("#####",
         "#>~ #",
         "# ~ #",
         "#  G#",
         "#####"),
        (), 'goal'),
    "LavaGapS6": Layout(
        ("######",
         "#> ~ #",
         "#  ~ #",
         "#    #",
         "#  ~G#",
         "######"),
        (), 'goal'),
    "LavaGapS7": Layout(
        ("#######",
         "#>  ~ #",
         "#   ~ #",
         "#   ~ #",
         "#     #",
         "#   ~G#",
         "#######"),
        (), 'goal'),
    "SimpleCrossingS9N1": Layout(
        ("#########",
         "#>      #",
         "# #######",
         "#       #",
         "#       #",
         "#       #",
         "#       #",
         "#      G#",
         "#########"),
        (), 'goal'),
    "SimpleCrossingS9N2": Layout(
        ("#########",
         "#>    # #",
         "# #######",
         "#     # #",
         "#     # #",
         "#     # #",
         "#     # #",
         "#      G#",
         "#########"),
        (), 'goal'),
    "SimpleCrossingS9N3": Layout(
        ("#########",
         "#>      #",
         "####### #",
         "#     # #",
         "#     # #",
         "#     # #",
         "####### #",
         "#     #G#",
         "#########"),
        (), 'goal'),
    "SimpleCrossingS11N5": Layout(
        ("###########",
         "#>    # # #",
         "### #######",
         "#       # #",
         "####### ###",
         "#     #   #",
         "######### #",
         "#     # # #",
         "#     # # #",
         "#     # #G#",
         "###########"),
        (), 'goal'),
    "LavaCrossingS9N1": Layout(
        ("#########",
         "#>      #",
         "# ~~~~~~#",
         "#       #",
         "#       #",
         "#       #",
         "#       #",
         "#      G#",
         "#########"),
        (), 'goal'),
    "LavaCrossingS9N2": Layout(
        ("#########",
         "#>    ~ #",
         "# ~~~~~~#",
         "#     ~ #",
         "#     ~ #",
         "#     ~ #",
         "#     ~ #",
         "#      G#",
         "#########"),
        (), 'goal'),
    "LavaCrossingS9N3": Layout(
        ("#########",
         "#>      #",
         "#~~~~~~ #",
         "#     ~ #",
         "#     ~ #",
         "#     ~ #",
         "#~~~~~~ #",
         "#     ~G#",
         "#########"),
        (), 'goal'),
    "LavaCrossingS11N5": Layout(
        ("###########",
         "#>    ~ ~ #",
         "#~~ ~~~~~~#",
         "#       ~ #",
         "#~~~~~~ ~~#",
         "#     ~   #",
         "#~~~~~~~~ #",
         "#     ~ ~ #",
         "#     ~ ~ #",
         "#     ~ ~G#",
         "###########"),
        (), 'goal'),
    "DistShift1": Layout(
        ("#########",
         "#> ~~~ G#",
         "#  ~~~  #",
         "#       #",
         "#       #",
         "#       #",
         "#########"),
        (), 'goal'),
    "DistShift2": Layout(
        ("#########",
         "#> ~~~ G#",
         "#       #",
         "#       #",
         "#       #",
         "#  ~~~  #",
         "#########"),
        (), 'goal'),
    "FourRooms": Layout(
        ("###################",
         "#        #        #",
         "#        #        #",
         "#        #        #",
         "#        #        #",
         "#        #        #",
         "#        #        #",
         "#                 #",
         "#        #        #",
         "###### ####### ####",
         "#        #        #",
         "#        #        #",
         "#            G    #",
         "#        #        #",
         "#        #        #",
         "#  <     #        #",
         "#        #        #",
         "#        #        #",
         "###################"),
        (), 'goal'),
    "Unlock": Layout(
        ("###########",
         "#  K #    #",
         "#    #    #",
         "#    #    #",
         "#<   D    #",
         "###########"),
        ((3, 1, 'purple'), (5, 4, 'purple', 'locked')), 'unlock'),
    "UnlockPickup": Layout(
        ("###########",
         "#    #  X #",
         "#    #    #",
         "#  ^K#    #",
         "#    D    #",
         "###########"),
        ((8, 1, 'purple'), (4, 3, 'green'), (5, 4, 'green', 'locked')), 'pickup', target=('box', 'purple')),
    "BlockedUnlockPickup": Layout(
        ("###########",
         "#    #  X #",
         "#    #    #",
         "#  ^ #    #",
         "#K  BD    #",
         "###########"),
        ((8, 1, 'purple'), (1, 4, 'green'), (4, 4, 'blue'), (5, 4, 'green', 'locked')), 'pickup', target=('box', 'purple')),
    "KeyCorridorS3R1": Layout(
        ("#######",
         "#KDvDB#",
         "#######"),
        ((1, 1, 'yellow'), (2, 1, 'blue', 'closed'), (4, 1, 'yellow', 'locked'), (5, 1, 'purple')), 'pickup', target=('ball', 'purple')),
    "KeyCorridorS3R2": Layout(
        ("#######",
         "# D D #",
         "###>###",
         "#KD DB#",
         "#######"),
        ((2, 1, 'yellow', 'closed'), (4, 1, 'yellow', 'closed'), (1, 3, 'purple'), (2, 3, 'red', 'closed'), (4, 3, 'purple', 'locked'), (5, 3, 'purple')), 'pickup', target=('ball', 'purple')),
    "KeyCorridorS3R3": Layout(
        ("#######",
         "# # # #",
         "#D#>#D#",
         "# D D #",
         "#D# ###",
         "#KD DB#",
         "#######"),
        ((1, 2, 'grey', 'closed'), (5, 2, 'purple', 'closed'), (2, 3, 'yellow', 'closed'), (4, 3, 'yellow', 'closed'), (1, 4, 'yellow', 'closed'), (1, 5, 'purple'), (2, 5, 'red', 'closed'), (4, 5, 'purple', 'locked'), (5, 5, 'purple')), 'pickup', target=('ball', 'purple')),
    "MultiRoom-N2-S4": Layout(
        (" ####",
         " #  #",
         " # ^#",
         "##D##",
         "#  # ",
         "# G# ",
         "#### "),
        ((2, 3, 'blue', 'closed'),), 'goal'),
}


@struct.dataclass
class GridState(environment.EnvState):
    position: jax.Array  # (x, y)
    direction: jax.Array  # 0 east, 1 south, 2 west, 3 north
    kind: jax.Array  # (height, width) MiniGrid object codes
    color: jax.Array  # (height, width) index into COLORS (0 where the square has no colour)
    door: jax.Array  # (height, width) door state (0 elsewhere)
    carry_kind: jax.Array  # EMPTY when the hands are empty
    carry_color: jax.Array
    time: jax.Array


@struct.dataclass
class GridParams(environment.EnvParams):
    max_steps_in_episode: int = HORIZON


def parse_layout(layout: Layout) -> dict[str, np.ndarray]:
    """The layout's start state as numpy arrays (kind, color, door, position, direction)."""
    height, width = len(layout.rows), len(layout.rows[0])
    kind = np.full((height, width), EMPTY, np.int32)
    color = np.zeros((height, width), np.int32)
    door = np.zeros((height, width), np.int32)
    position, direction = None, None
    for y, row in enumerate(layout.rows):
        if len(row) != width:
            raise ValueError(f"layout rows differ in length: {layout.rows}")
        for x, mark in enumerate(row):
            if mark in AGENT_MARKS:
                position, direction = (x, y), AGENT_MARKS.index(mark)
            else:
                kind[y, x] = MARKS[mark]
    for x, y, colour, *state in layout.objects:
        if kind[y, x] not in (DOOR, KEY, BALL, BOX):
            raise ValueError(f"object at ({x}, {y}) is not a door, key, ball or box")
        color[y, x] = COLORS.index(colour)
        if state:
            door[y, x] = DOOR_STATES[state[0]]
    colored = np.isin(kind, (DOOR, KEY, BALL, BOX))
    if position is None or colored.sum() != len(layout.objects):
        raise ValueError("a layout needs one agent mark and one colour per door, key, ball and box")
    return {"kind": kind, "color": color, "door": door, "position": np.array(position, np.int32),
            "direction": np.int32(direction)}


class MiniGrid(environment.Environment[GridState, GridParams]):
    """One of BRIDGE's MiniGrid MDPs: `MiniGrid("DoorKey-5x5")`. See the module docstring for the rules."""

    def __init__(self, name: str):
        super().__init__()
        if name not in LAYOUTS:
            raise ConfigError(f"Unknown MiniGrid MDP {name!r}; known: {', '.join(LAYOUTS)}.")
        self.grid_name = name
        self.layout = LAYOUTS[name]
        self.start = parse_layout(self.layout)
        self.height, self.width = self.start["kind"].shape
        self.actions = 3 if name.startswith("Empty") else 6  # BRIDGE: navigation only for Empty-*
        target = self.layout.target or ("key", "red")
        self.target_kind, self.target_color = OBJECT_KINDS[target[0]], COLORS.index(target[1])

    @property
    def default_params(self) -> GridParams:
        return GridParams()

    def reset_env(self, key, params: GridParams):
        s = self.start
        state = GridState(position=jnp.asarray(s["position"]), direction=jnp.asarray(s["direction"]),
                          kind=jnp.asarray(s["kind"]), color=jnp.asarray(s["color"]), door=jnp.asarray(s["door"]),
                          carry_kind=jnp.int32(EMPTY), carry_color=jnp.int32(0), time=jnp.int32(0))
        return self.get_obs(state), state

    def step_env(self, key, state: GridState, action, params: GridParams):
        front = state.position + jnp.asarray(DIRECTIONS)[state.direction]
        fx, fy = front[0], front[1]
        f_kind, f_color, f_door = state.kind[fy, fx], state.color[fy, fx], state.door[fy, fx]
        hands_empty = state.carry_kind == EMPTY

        walkable = ((f_kind == EMPTY) | (f_kind == GOAL) | (f_kind == LAVA) | ((f_kind == DOOR) & (f_door == OPEN)))
        moves = (action == FORWARD) & walkable
        picks = (action == PICKUP) & hands_empty & ((f_kind == KEY) | (f_kind == BALL) | (f_kind == BOX))
        drops = (action == DROP) & ~hands_empty & (f_kind == EMPTY)
        toggles = action == TOGGLE
        has_key = (state.carry_kind == KEY) & (state.carry_color == f_color)
        door_after = jnp.where(f_door == LOCKED, jnp.where(has_key, OPEN, LOCKED),
                               jnp.where(f_door == OPEN, CLOSED, OPEN))
        opens_box = toggles & (f_kind == BOX)  # every box here is empty: opening it leaves an empty square

        kind_after = jnp.where(picks | opens_box, EMPTY, jnp.where(drops, state.carry_kind, f_kind))
        color_after = jnp.where(picks | opens_box, 0, jnp.where(drops, state.carry_color, f_color))
        door_now = jnp.where(toggles & (f_kind == DOOR), door_after, f_door)
        direction = jnp.where(action == LEFT, (state.direction + 3) % 4,
                              jnp.where(action == RIGHT, (state.direction + 1) % 4, state.direction))
        next_state = GridState(
            position=jnp.where(moves, front, state.position),
            direction=direction,
            kind=state.kind.at[fy, fx].set(kind_after),
            color=state.color.at[fy, fx].set(color_after),
            door=state.door.at[fy, fx].set(door_now),
            carry_kind=jnp.where(picks, f_kind, jnp.where(drops, EMPTY, state.carry_kind)),
            carry_color=jnp.where(picks, f_color, jnp.where(drops, 0, state.carry_color)),
            time=state.time + 1,
        )
        if self.layout.task == "goal":
            success = moves & (f_kind == GOAL)
        elif self.layout.task == "unlock":  # MiniGrid's UnlockEnv: a toggle that leaves the door open
            success = toggles & (f_kind == DOOR) & (door_now == OPEN)
        else:  # pick up the target object (MiniGrid compares the carried object with it after every pick-up)
            success = ((action == PICKUP) & (next_state.carry_kind == self.target_kind)
                       & (next_state.carry_color == self.target_color))
        terminated = success | (moves & (f_kind == LAVA))
        reward = success.astype(jnp.float32)
        return self.get_obs(next_state), next_state, reward, terminated, {}

    def get_obs(self, state: GridState, params=None, key=None) -> jax.Array:
        def kind_one_hot(kind):  # MiniGrid's codes are not contiguous: one slot per code in KINDS, in code order
            return jax.nn.one_hot(jnp.searchsorted(jnp.asarray(sorted(KINDS)), kind), len(KINDS))

        colored = jnp.isin(state.kind, jnp.array([DOOR, KEY, BALL, BOX]))
        cells = jnp.concatenate([
            kind_one_hot(state.kind),
            jax.nn.one_hot(state.color, len(COLORS)) * colored[..., None],
            jax.nn.one_hot(state.door, 3) * (state.kind == DOOR)[..., None],
        ], axis=-1)
        agent = jnp.zeros((self.height, self.width)).at[state.position[1], state.position[0]].set(1.0)
        carry = jnp.concatenate([kind_one_hot(state.carry_kind),
                                 jax.nn.one_hot(state.carry_color, len(COLORS)) * (state.carry_kind != EMPTY)])
        return jnp.concatenate([cells.ravel(), agent.ravel(), jax.nn.one_hot(state.direction, 4), carry]
                               ).astype(jnp.float32)

    def is_terminated(self, state: GridState, params: GridParams) -> jax.Array:
        return jnp.bool_(False)  # decided by the action in step_env

    def is_truncated(self, state: GridState, params: GridParams) -> jax.Array:
        return state.time >= params.max_steps_in_episode

    @property
    def name(self) -> str:
        return MINIGRID_PREFIX + self.grid_name

    @property
    def num_actions(self) -> int:
        return self.actions

    def action_space(self, params: Any = None) -> spaces.Discrete:
        return spaces.Discrete(self.actions)

    def observation_space(self, params: Any) -> spaces.Box:
        cells = self.height * self.width
        return spaces.Box(0.0, 1.0, (cells * (len(KINDS) + len(COLORS) + 3) + cells + 4 + len(KINDS) + len(COLORS),),
                          jnp.float32)


def minigrid_ids() -> list[str]:
    return [MINIGRID_PREFIX + name for name in LAYOUTS]


def make_minigrid(name: str, **kwargs):
    """`<name>` (without the `minigrid/` prefix) -> (env, params); kwargs go to the params (e.g.
    max_steps_in_episode=50 for a shorter horizon than BRIDGE's 100)."""
    env = MiniGrid(name)
    return env, env.default_params.replace(**kwargs) if kwargs else env.default_params
