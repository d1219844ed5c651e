"""Exact planning and evaluation over the history tree of a latent MDP (alpha vectors).

An optimal LMDP policy is history dependent: it acts on what the history says about the
hidden context. Zhou, Wang and Du (ICML 2023, Sec. 3) handle such policies through alpha
vectors, one value per context, as in POMDPs: for a history tau_h ending in state s,

    alpha_m(tau_h) = E_pi[ sum_{t >= h} R_m(s_t, a_t) | tau_h, context m ],

and the value of pi is V(pi) = sum_m sum_s w_m nu_m(s) alpha_m(s). Writing
beta_m(tau_h) = w_m nu_m(s_1) prod_t L_m(o_t | s_t, a_t) for the unnormalised posterior weight
of context m (L from :meth:`lib.rl.latent_mdp.LMDP.likelihood`), the value is linear in the alpha
vectors of every node, so backward induction is exact:

    Q_m(tau_h, a) = R_m(s, a) + sum_o L_m(o | s, a) alpha_m(tau_h a o),          (Bellman)
    pi(tau_h) = argmax_a sum_m beta_m(tau_h) Q_m(tau_h, a),  alpha_m(tau_h) = Q_m(tau_h, pi(tau_h)).

An optimistic learner (:mod:`lib.rl.optimistic_lmdp`) adds a bonus to Q and truncates it at 1;
the recursion is the same, with ``bonus`` passed in.

The tree is stored level by level, keeping only the histories of positive weight under the
model planned on (the others change no value). A history is an integer id: the length-one
history is its state s, and the children of history i are i * A * O + a * O + o, with O the
number of observation codes. A policy takes action 0 on histories it does not store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lib.rl.latent_mdp import LMDP

#: bonus(h, states, Q_mean, second_moment) -> (bonus, forced): arrays of shape (N_h, A, M).
BonusFn = Callable[[int, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

MAX_NODES = 2_000_000


@dataclass
class HistoryPlan:
    """A history-dependent policy with its alpha vectors, on the histories the model reaches.

    ``nodes[h]`` (sorted int64 ids), ``actions[h]`` and ``alpha[h]`` (nodes, M) describe level h
    (the histories (s_1, a_1, o_1, ..., s_{h+1})); ``value`` = sum_m,s w_m nu_m(s) alpha_m(s).
    Histories the model gives probability zero are not stored: the policy takes action 0 there
    (:meth:`act`), which changes no value under that model.
    """

    nodes: list[np.ndarray]
    actions: list[np.ndarray]
    alpha: list[np.ndarray]
    value: float

    def act(self, h: int, ids: np.ndarray) -> np.ndarray:
        """The action at the level-h histories ``ids`` (0 where the plan has no entry)."""
        ids = np.asarray(ids, dtype=np.int64)
        nodes = self.nodes[h]
        if len(nodes) == 0:
            return np.zeros(ids.shape, dtype=int)
        pos = np.minimum(np.searchsorted(nodes, ids), len(nodes) - 1)
        return np.where(nodes[pos] == ids, self.actions[h][pos], 0)


@dataclass
class HistoryLevel:
    """The histories of one level with positive weight: ids, last states, weights, parents."""

    ids: np.ndarray
    states: np.ndarray
    beta: np.ndarray
    parent: np.ndarray


def _check_model(likelihood: np.ndarray, rewards: np.ndarray, root: np.ndarray, H: int) -> None:
    if likelihood.ndim != 4 or rewards.shape != likelihood.shape[:3]:
        raise ValueError("likelihood must have shape (M, S, A, O) and rewards (M, S, A), got "
                         f"{likelihood.shape} and {rewards.shape}")
    M, S, A, n_obs = likelihood.shape
    if n_obs % S:
        raise ValueError(f"the number of observation codes ({n_obs}) must be a multiple of "
                         f"S ({S})")
    if root.shape != (M, S):
        raise ValueError(f"root weights must have shape ({M}, {S}), got {root.shape}")
    if int(H) != H or H < 1:
        raise ValueError(f"the horizon must be a positive integer, got {H}")
    if np.log2(S) + (H - 1) * np.log2(A * n_obs) > 62:
        raise ValueError("the history tree is too deep to index with 64-bit integers")


def forward_weights(likelihood: np.ndarray, root: np.ndarray, H: int,
                    policy: HistoryPlan | None = None) -> list[HistoryLevel]:
    """The histories of positive weight beta_m(tau_h), level by level (module docstring).

    ``root`` (M, S) holds the weights of the length-one histories. With ``policy`` only the
    histories the policy can produce are followed (its action on each path).
    """
    M, S, A, n_obs = likelihood.shape
    ids = np.flatnonzero(root.sum(0) > 0).astype(np.int64)
    levels = [HistoryLevel(ids, ids.copy(), root.T[ids].copy(), np.zeros(len(ids), dtype=int))]
    codes = np.arange(A * n_obs)
    for h in range(H - 1):
        cur = levels[-1]
        lik = likelihood[:, cur.states].transpose(1, 2, 3, 0)  # (N, A, n_obs, M)
        child = cur.beta[:, None, None, :] * lik
        if policy is not None:
            chosen = policy.act(h, cur.ids)
            child = child * (np.arange(A)[None, :] == chosen[:, None])[:, :, None, None]
        flat = child.reshape(-1, M)
        keep = np.flatnonzero(flat.max(1) > 0)
        if len(keep) > MAX_NODES:
            raise ValueError(f"{len(keep)} histories at step {h + 2}: more than {MAX_NODES}; "
                             "exact planning is only for tiny LMDPs")
        parent = keep // (A * n_obs)
        code = codes[keep % (A * n_obs)]
        levels.append(HistoryLevel(cur.ids[parent] * (A * n_obs) + code, code % n_obs % S,
                                   flat[keep], parent))
    return levels


def plan_histories(likelihood: np.ndarray, rewards: np.ndarray, root: np.ndarray, H: int,
                   bonus: BonusFn | None = None, cap: float = 1.0) -> HistoryPlan:
    """Backward induction over the history tree: the exact planner the paper assumes.

    Without ``bonus`` this is the exact optimal history-dependent policy of the model
    (``likelihood``, ``rewards``, root weights w_m nu_m(s)); ``cap`` truncates Q (returns lie in
    [0, 1], so the cap never binds then). ``bonus`` returns an additive bonus and a boolean mask
    of entries forced to ``cap`` (pairs never visited), both of shape (N_h, A, M).
    """
    likelihood = np.asarray(likelihood, dtype=float)
    rewards = np.asarray(rewards, dtype=float)
    root = np.asarray(root, dtype=float)
    _check_model(likelihood, rewards, root, H)
    M, S, A, n_obs = likelihood.shape
    levels = forward_weights(likelihood, root, H)
    actions: list[np.ndarray] = [None] * H  # type: ignore[list-item]
    alphas: list[np.ndarray] = [None] * H  # type: ignore[list-item]
    for h in range(H - 1, -1, -1):
        lev = levels[h]
        N = len(lev.ids)
        r = rewards[:, lev.states].transpose(1, 2, 0)  # (N, A, M)
        if h == H - 1:
            mean = np.zeros((N, A, M))
            second = np.zeros((N, A, M))
        else:
            nxt = levels[h + 1]
            child = np.zeros((N, A * n_obs, M))  # children of zero weight keep alpha 0: unused
            child[nxt.parent, nxt.ids % (A * n_obs)] = alphas[h + 1]
            child = child.reshape(N, A, n_obs, M)
            lik = likelihood[:, lev.states].transpose(1, 2, 3, 0)  # (N, A, n_obs, M)
            mean = (lik * child).sum(2)
            second = (lik * child**2).sum(2)
        q = r + mean
        if bonus is not None:
            extra, forced = bonus(h, lev.states, mean, second)
            q = np.where(forced, cap, np.minimum(q + extra, cap))
        else:
            q = np.minimum(q, cap)
        a_star = np.einsum("nm,nam->na", lev.beta, q).argmax(1)
        actions[h] = a_star
        alphas[h] = q[np.arange(N), a_star]
    value = float((levels[0].beta * alphas[0]).sum())
    return HistoryPlan([lev.ids for lev in levels], actions, alphas, value)


def optimal_plan(lmdp: LMDP) -> HistoryPlan:
    """The exact optimal history-dependent policy of a known LMDP (no bonus)."""
    return plan_histories(lmdp.likelihood(), lmdp.rewards, lmdp.weights[:, None] * lmdp.initial,
                          lmdp.H)


def policy_value(lmdp: LMDP, policy: HistoryPlan, per_context: bool = False):
    """Exact expected return of a history-dependent policy on ``lmdp`` (forward recursion).

    V(pi) = sum_h sum_tau sum_m P_m(tau reached under pi) w_m R_m(s_tau, pi(tau)): the
    probability of reaching each history in each context, times the reward collected there.
    With ``per_context`` also return the per-context values (M,) (alpha at the root, averaged
    over nu_m).
    """
    M, S, A, H = lmdp.shape
    if len(policy.nodes) != H:
        raise ValueError(f"the policy must cover H = {H} steps, got {len(policy.nodes)}")
    levels = forward_weights(lmdp.likelihood(), lmdp.initial, H, policy)
    collected = np.zeros(M)
    for h, lev in enumerate(levels):
        a = policy.act(h, lev.ids)
        collected += (lev.beta * lmdp.rewards[:, lev.states, a].T).sum(0)
    value = float(lmdp.weights @ collected)
    return (value, collected) if per_context else value


def markov_policy(lmdp: LMDP, table: np.ndarray) -> HistoryPlan:
    """The history policy that plays ``table[h, s]`` at step h in state s, ignoring the rest of
    the history (a memoryless, Markov policy; the baseline the paper's history-dependent
    optimum improves on). Its ``alpha`` and ``value`` are left empty (use policy_value)."""
    M, S, A, H = lmdp.shape
    table = np.asarray(table)
    if table.shape != (H, S) or table.min() < 0 or table.max() >= A:
        raise ValueError(f"table must be an ({H}, {S}) array of actions in [0, {A})")
    levels = forward_weights(lmdp.likelihood(), lmdp.initial, H)
    return HistoryPlan([lev.ids for lev in levels],
                       [table[h, lev.states] for h, lev in enumerate(levels)], [], float("nan"))


def best_markov_value(lmdp: LMDP, max_policies: int = 2**16) -> float:
    """max over all deterministic Markov policies (step and state only), by enumeration."""
    M, S, A, H = lmdp.shape
    if A ** (H * S) > max_policies:
        raise ValueError(f"{A ** (H * S)} Markov policies exceed max_policies = {max_policies}")
    best = -np.inf
    for code in range(A ** (H * S)):
        table = (code // A ** np.arange(H * S)) % A
        best = max(best, policy_value(lmdp, markov_policy(lmdp, table.reshape(H, S))))
    return float(best)


def brute_force_optimal_value(lmdp: LMDP, max_policies: int = 2**22) -> tuple[float, int]:
    """max over ALL deterministic history-dependent policies, by enumeration (a cross-check).

    Independent of :func:`plan_histories`: it lists the reachable histories as explicit tuples
    (s_1, a_1, r_1, s_2, ...), enumerates every assignment of an action to each of them, and
    scores all assignments at once as sums over paths of probability times reward. Returns the
    best value and the number of policies enumerated; raises ``ValueError`` above
    ``max_policies``.
    """
    M, S, A, H = lmdp.shape
    P, R, w, nu = lmdp.transitions, lmdp.rewards, lmdp.weights, lmdp.initial
    # reachable histories (as tuples) with, per context, their probability
    level = {}
    for s in range(S):
        prob = w * nu[:, s]
        if prob.sum() > 0:
            level[(s,)] = prob
    histories: dict[tuple, np.ndarray] = {}
    paths = []  # (list of (history id, action) along the path, prob over contexts, return)
    frontier = [((s,), prob, [], np.zeros(M)) for (s,), prob in level.items()]
    hist_id: dict[tuple, int] = {}
    for h in range(H):
        new_frontier = []
        for hist, prob, choices, ret in frontier:
            hid = hist_id.setdefault(hist, len(hist_id))
            histories[hist] = prob
            s = hist[-1]
            for a in range(A):
                ret_a = ret + R[:, s, a]
                picks = choices + [(hid, a)]
                if h == H - 1:
                    paths.append((picks, prob, ret_a))
                    continue
                for r_val in np.unique(R[:, s, a]):
                    for s2 in range(S):
                        p2 = prob * P[:, s, a, s2] * (R[:, s, a] == r_val)
                        if p2.sum() > 0:
                            new_frontier.append((hist + (a, float(r_val), s2), p2, picks,
                                                 ret_a))
        frontier = new_frontier
    n_hist = len(hist_id)
    n_policies = A**n_hist
    if n_policies > max_policies:
        raise ValueError(f"{n_policies} policies ({n_hist} reachable histories) exceed "
                         f"max_policies = {max_policies}")
    codes = np.arange(n_policies)
    table = np.stack([(codes // A**j) % A for j in range(n_hist)], axis=1)
    values = np.zeros(n_policies)
    for picks, prob, ret in paths:
        taken = np.ones(n_policies, dtype=bool)
        for hid, a in picks:
            taken &= table[:, hid] == a
        values += taken * float(prob @ ret)
    return float(values.max()), n_policies
