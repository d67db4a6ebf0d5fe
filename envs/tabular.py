"""Exact analysis of small deterministic environments: enumerate the MDP, then the quantities of
Laidlaw, Russell and Dragan (2023), "Bridging RL Theory and Practice with the Effective Horizon".

    mdp = enumerate_mdp(env, params)          # every state reachable within the horizon, by the env's own step
    facts = analyze(mdp.transitions, mdp.rewards, horizon=100)
    facts.optimal_return, facts.min_k, facts.effective_horizon_simple

`enumerate_mdp` runs the env's `step_env` (vmapped over states and actions) breadth-first from the reset state
and numbers each distinct state (its `time` field left out: the MDP is the same at every step, as BRIDGE's
MDPs are). The result has BRIDGE's tabular format: `transitions[s, a]` is the next state or -1 when the
episode ends, `rewards[s, a]` the reward, state 0 the start.

`analyze` follows the authors' Julia code (github.com/cassidylaidlaw/effective-horizon,
EffectiveHorizon.jl/src/value_iteration.jl and gorp_bounds.jl), over the finite horizon T with the uniformly
random exploration policy:
- Q^rand, Q* and Q^worst by backward induction (an ended episode earns 0 afterwards);
- `min_k`: the smallest k such that every action that is greedy on Q^k (Q^1 = Q^rand, Q^{j+1} = r + max Q^j
  of the next state, one backup per k) at every state that greedy play can reach is optimal (within 1e-4);
  the MDP is then k-QVI-solvable;
- `epw`, the effective planning window: the same, starting from Q^1 = r;
- `effective_horizon_simple`, the paper's Theorem 5.4 bound: for each k that works, H_k = k + log_A m_k,
  with m_k = max over reachable (t, s) of ceil(16 σ² / Δ² · log(2 T A^k)), where Δ is the gap between the
  greedy value and the best suboptimal action's value of Q^k and σ² bounds the variance of a random rollout
  ((Q^rand - Q^worst)(Q* - Q^worst), backed up by max); H = min(T, min_k H_k). The authors' dataset also
  reports a tighter bound (Appendix C, `consolidated_gorp_bounds.json`), which this module does not compute.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

REWARD_PRECISION = 1e-4  # the authors' tolerance for "optimal"


class TabularMDP(NamedTuple):
    transitions: np.ndarray  # (S, A) int64, next state or -1 when the episode ends
    rewards: np.ndarray  # (S, A) float32
    depth: np.ndarray  # (S,) the step at which each state is first reached


class MDPFacts(NamedTuple):
    num_states: int
    horizon: int
    num_actions: int
    optimal_return: float
    random_return: float
    worst_return: float
    min_k: int | None  # None: not k-QVI-solvable for any k <= horizon
    epw: int | None
    effective_horizon_simple: float
    ks: list[int]
    ms: list[int]


def enumerate_mdp(env, params, horizon: int | None = None, max_states: int = 500_000,
                  batch: int = 8192) -> TabularMDP:
    """Every state reachable within `horizon` steps (default: the params' episode length) of the reset state.
    The env must be deterministic (its step is run with one fixed key). States first reached at step `horizon`
    are numbered but not expanded (their rows loop to themselves with reward 0): no decision is taken there."""
    horizon = int(horizon or params.max_steps_in_episode)
    num_actions = env.num_actions
    key = jax.random.PRNGKey(0)
    _, start = env.reset_env(key, params)
    start = start.replace(time=jnp.zeros_like(start.time))
    leaves, treedef = jax.tree.flatten(start)

    @jax.jit
    def expand(states, actions):
        next_states, rewards, terminated = jax.vmap(lambda s, a: env.step_env(key, s, a, params)[1:4])(states, actions)
        return next_states.replace(time=jnp.zeros_like(next_states.time)), rewards, terminated

    def keys_of(leaf_batch: list[np.ndarray]) -> list[bytes]:
        n = leaf_batch[0].shape[0]
        rows = np.concatenate([np.ascontiguousarray(x).reshape(n, -1).view(np.uint8) for x in leaf_batch], axis=1)
        return [row.tobytes() for row in rows]

    index = {keys_of([np.asarray(x)[None] for x in leaves])[0]: 0}
    stored = [[np.asarray(x)[None]] for x in leaves]  # per leaf, a list of batches in state order
    transitions, rewards, depth = [], [], [0]
    frontier = (0, 1)  # states [lo, hi) are the current layer
    for step in range(horizon):
        lo, hi = frontier
        if lo == hi:
            break
        layer = [np.concatenate(parts)[lo:hi] for parts in stored]
        stored = [[np.concatenate(parts)] for parts in stored]
        for b in range(0, hi - lo, batch):
            chunk = [x[b:b + batch] for x in layer]
            n = chunk[0].shape[0]
            states = jax.tree.unflatten(treedef, [jnp.asarray(np.repeat(x, num_actions, axis=0)) for x in chunk])
            actions = jnp.tile(jnp.arange(num_actions), n)
            next_states, reward, terminated = jax.device_get(expand(states, actions))
            next_leaves = jax.tree.leaves(next_states)
            next_ids, new_rows = np.full(n * num_actions, -1), []
            for i, k in enumerate(keys_of(next_leaves)):
                if terminated[i]:
                    continue
                if k not in index:
                    index[k] = len(index)
                    depth.append(step + 1)
                    new_rows.append(i)
                next_ids[i] = index[k]
            if new_rows:
                for parts, x in zip(stored, next_leaves):
                    parts.append(np.asarray(x)[new_rows])
            if len(index) > max_states:
                raise ValueError(f"more than {max_states} states within {horizon} steps: too large to enumerate here")
            transitions.append(next_ids.reshape(n, num_actions))
            rewards.append(np.asarray(reward, np.float32).reshape(n, num_actions))
        frontier = (hi, len(index))
    unexpanded = len(index) - sum(len(t) for t in transitions)
    loops = np.repeat(np.arange(len(index) - unexpanded, len(index))[:, None], num_actions, axis=1)
    transitions.append(loops)
    rewards.append(np.zeros((unexpanded, num_actions), np.float32))
    return TabularMDP(np.concatenate(transitions).astype(np.int64), np.concatenate(rewards),
                      np.asarray(depth, np.int64))


def _with_end_state(transitions: np.ndarray, rewards: np.ndarray):
    """BRIDGE's loading convention: one extra absorbing state, reward 0, stands for "the episode ended"."""
    num_states, num_actions = transitions.shape
    nxt = np.where(transitions < 0, num_states, transitions)
    nxt = np.concatenate([nxt, np.full((1, num_actions), num_states)])
    rew = np.concatenate([rewards.astype(np.float64), np.zeros((1, num_actions))])
    return nxt, rew


def _reachable(nxt: np.ndarray, horizon: int, allowed=None) -> np.ndarray:
    """(T, S) bool: states visited at timestep t (1-based t = index + 1) following actions where allowed[t]."""
    num_states, num_actions = nxt.shape
    reach = np.zeros((horizon, num_states), bool)
    reach[0, 0] = True
    for t in range(horizon - 1):
        take = np.broadcast_to(reach[t][:, None], nxt.shape)
        if allowed is not None:
            take = take & allowed[t]
        reach[t + 1, nxt[take]] = True
    return reach


def _value_iteration(nxt, rew, horizon):
    """Q^rand, Q*, Q^worst, each (T, S, A), for timesteps 1..T (index 0..T-1)."""
    shape = (horizon,) + nxt.shape
    q_rand, q_opt, q_worst = np.empty(shape), np.empty(shape), np.empty(shape)
    v_rand = v_opt = v_worst = np.zeros(nxt.shape[0])
    for t in reversed(range(horizon)):
        q_rand[t], q_opt[t], q_worst[t] = rew + v_rand[nxt], rew + v_opt[nxt], rew + v_worst[nxt]
        v_opt, v_worst = q_opt[t].max(axis=1), q_worst[t].min(axis=1)
        v_rand = np.clip(q_rand[t].sum(axis=1) / nxt.shape[1], v_worst, v_opt)  # the authors' clip of rounding
    return q_rand, q_opt, q_worst


def _backup(q, nxt, rew):
    """One step of value iteration on a (T, S, A) table: Q[t] <- r + max_a Q[t+1](s', a); the last timestep keeps
    its values (the authors' code backs up timesteps 1..T-1 only)."""
    out = q.copy()
    out[:-1] = rew[None] + q[1:].max(axis=2)[:, nxt]
    return out


def _min_k(q, q_opt, nxt, rew, horizon) -> int | None:
    optimal = q_opt >= q_opt.max(axis=2, keepdims=True) - REWARD_PRECISION
    for k in range(1, horizon + 1):
        greedy = q >= q.max(axis=2, keepdims=True)
        reach = _reachable(nxt, horizon, greedy)
        if not (reach[..., None] & greedy & ~optimal).any():
            return k
        q = _backup(q, nxt, rew)
    return None


def analyze(transitions: np.ndarray, rewards: np.ndarray, horizon: int) -> MDPFacts:
    """Optimal, random and worst returns, min_k, EPW and the Theorem 5.4 effective horizon of a deterministic
    tabular MDP in BRIDGE's format (state 0 the start, -1 the end of an episode)."""
    nxt, rew = _with_end_state(transitions, rewards)
    num_actions = nxt.shape[1]
    q_rand, q_opt, q_worst = _value_iteration(nxt, rew, horizon)
    min_k = _min_k(q_rand, q_opt, nxt, rew, horizon)
    epw = _min_k(np.broadcast_to(rew, q_rand.shape).copy(), q_opt, nxt, rew, horizon)

    suboptimal = q_opt < q_opt.max(axis=2, keepdims=True) - REWARD_PRECISION
    var = (q_rand - q_worst) * (q_opt - q_worst)
    q = q_rand
    effective_horizon, ks, ms = float(horizon), [], []
    k = 1
    while k < effective_horizon:
        best = q.max(axis=2)
        best_sub = np.where(suboptimal, q, -np.inf).max(axis=2)
        allowed = q > best_sub[..., None]
        reach = _reachable(nxt, horizon, allowed)
        if not (reach & (best == best_sub)).any():
            with np.errstate(divide="ignore", invalid="ignore"):
                gap = best - best_sub
                bound = 16 * var.max(axis=2) / gap**2 * math.log(2 * horizon * float(num_actions) ** k)
            bound = np.where(np.isfinite(gap), bound, 0.0)
            m = max(1, math.ceil(float(np.where(reach, bound, 0.0).max())))
            ks.append(k)
            ms.append(m)
            effective_horizon = min(effective_horizon, k + math.log(m, num_actions))
        q = _backup(q, nxt, rew)
        var_next = var.copy()
        var_next[:-1] = var[1:].max(axis=2)[:, nxt]
        var = var_next
        k += 1
    return MDPFacts(
        num_states=int(transitions.shape[0]), horizon=int(horizon), num_actions=int(num_actions),
        optimal_return=float(q_opt[0, 0].max()), random_return=float(q_rand[0, 0].mean()),
        worst_return=float(q_worst[0, 0].min()), min_k=min_k, epw=epw,
        effective_horizon_simple=float(effective_horizon), ks=ks, ms=ms,
    )
