"""An optimistic model-based learner for latent MDPs with context in hindsight.

Zhou, Wang and Du (ICML 2023): the model-based framework with its value-optimistic solver:

1. Because the context m is revealed after each episode, the learner keeps per-context counts
   N_m(s, a), empirical transitions P_hat_m(s' | s, a), the observed rewards R_m(s, a), and the
   empirical context weights and initial distributions.
2. Doubling trick: it re-plans only when some N_m(s, a) reaches a power of two (1, 2, 4, ...),
   so there are O(M S A log(K H)) policy switches.
3. Value optimism: backward induction over the history tree (:mod:`lib.rl.history_planning`) on
   the empirical model, with a bonus added to every Q_m(tau, a) and Q truncated at 1 (returns
   lie in [0, 1]). The bonus is one of

   - ``"bernstein"`` (the paper's variance-dependent bonus):
         b = c_var * sqrt(V(P_hat_m(.|s,a), alpha_next) * iota / N) + c_lin * iota / N,
     with V(p, x) = p^T x^2 - (p^T x)^2 the empirical variance of the next-step alpha vector;
   - ``"hoeffding"`` (the baseline): b = c_var * sqrt(iota / N), the range of the values (1)
     times the Hoeffding width;
   - ``"none"``: certainty equivalence (greedy in the empirical model).

   Pairs never visited are forced to the cap (Q = 1) for both optimistic bonuses, and to 0 for
   ``"none"``. iota = ln(M S A H K / delta).

The constants of the paper's analysis are far too large for a miniature of a few thousand
episodes; ``c_var`` and ``c_lin`` are exposed and the chapter states its values.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from lib.rl.history_planning import (
    HistoryPlan,
    forward_weights,
    optimal_plan,
    plan_histories,
    policy_value,
)
from lib.rl.latent_mdp import LMDP

BONUSES = ("bernstein", "hoeffding", "none")


@dataclass
class LearningRun:
    """What one run of the learner produced.

    ``regret`` (K,) is the exact expected regret V* - V(pi_k) of every episode's policy,
    ``replans`` the episodes (0-based) before which the learner re-planned, ``root_bonus`` the
    planned value minus the empirical model's value of the same policy at each re-plan.
    """

    regret: np.ndarray
    replans: list[int] = field(default_factory=list)
    root_bonus: list[float] = field(default_factory=list)
    returns: np.ndarray | None = None


class OptimisticLMDPLearner:
    """The value-optimistic learner of the module docstring, for an LMDP of a given shape."""

    def __init__(self, M: int, S: int, A: int, H: int, levels: np.ndarray, K: int,
                 bonus: str = "bernstein", c_var: float = 1.0, c_lin: float = 1.0,
                 delta: float = 0.1) -> None:
        if bonus not in BONUSES:
            raise ValueError(f"bonus must be one of {BONUSES}, got {bonus!r}")
        if min(M, S, A, H, K) < 1:
            raise ValueError(f"M, S, A, H and K must be positive, got {(M, S, A, H, K)}")
        if c_var < 0 or c_lin < 0:
            raise ValueError(f"bonus constants must be non-negative, got {c_var}, {c_lin}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        self.M, self.S, self.A, self.H = M, S, A, H
        self.levels = np.asarray(levels, dtype=float)
        self.bonus, self.c_var, self.c_lin = bonus, float(c_var), float(c_lin)
        self.iota = float(np.log(M * S * A * H * K / delta))
        self.n_sas = np.zeros((M, S, A, S))
        self.visits = np.zeros((M, S, A))
        self.reward_index = np.zeros((M, S, A), dtype=int)
        self.n_context = np.zeros(M)
        self.n_initial = np.zeros((M, S))

    @property
    def counts(self) -> np.ndarray:
        """N_m(s, a), the observed transitions out of (s, a) in context m, shape (M, S, A)."""
        return self.n_sas.sum(-1)

    def empirical_model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(likelihood L_hat (M, S, A, O), rewards R_hat (M, S, A), root weights (M, S)).

        Unvisited (m, s, a) get an all-zero likelihood row: beyond them the context is not
        tracked, since their Q is fixed (to the cap or to 0) whatever follows.
        """
        M, S, A = self.M, self.S, self.A
        n = self.counts
        p_hat = np.divide(self.n_sas, n[..., None], out=np.zeros_like(self.n_sas),
                          where=n[..., None] > 0)
        J = len(self.levels)
        onehot = np.eye(J)[self.reward_index] * (n > 0)[..., None]
        lik = (onehot[..., None] * p_hat[:, :, :, None, :]).reshape(M, S, A, J * S)
        rewards = self.levels[self.reward_index] * (self.visits > 0)
        total = self.n_context.sum()
        root = self.n_initial / total if total > 0 else np.zeros((M, S))
        return lik, rewards, root

    def bonus_fn(self):
        """The bonus of the module docstring as a callback for :func:`plan_histories`."""
        n = self.counts  # (M, S, A)
        visits = self.visits
        kind, c_var, c_lin, iota, H = self.bonus, self.c_var, self.c_lin, self.iota, self.H

        def bonus(h: int, states: np.ndarray, mean: np.ndarray, second: np.ndarray):
            if h == H - 1:  # last step: no transition; a deterministic reward seen once is known
                unseen = visits[:, states].transpose(1, 2, 0) == 0
                return np.zeros_like(mean), unseen if kind != "none" else np.zeros_like(unseen)
            n_here = n[:, states].transpose(1, 2, 0)  # (N, A, M)
            unvisited = n_here == 0
            safe = np.maximum(n_here, 1)
            if kind == "bernstein":
                var = np.maximum(second - mean**2, 0.0)
                extra = c_var * np.sqrt(var * iota / safe) + c_lin * iota / safe
            elif kind == "hoeffding":
                extra = c_var * np.sqrt(iota / safe)
            else:
                extra = np.zeros_like(mean)
            forced = unvisited if kind != "none" else np.zeros_like(unvisited)
            return extra, forced

        return bonus

    def plan(self) -> tuple[HistoryPlan, float]:
        """Plan the optimistic model; return the plan and its root bonus (planned value minus
        the empirical model's value of the same policy)."""
        lik, rewards, root = self.empirical_model()
        plan = plan_histories(lik, rewards, root, self.H, bonus=self.bonus_fn())
        return plan, plan.value - _model_value(lik, rewards, root, self.H, plan)

    def update(self, m: int, states: list[int], actions: list[int], rewards: list[float]) -> bool:
        """Record one episode (context revealed in hindsight); return True when some N_m(s, a)
        reached a power of two (the doubling trick's re-plan trigger)."""
        if not 0 <= m < self.M:
            raise ValueError(f"context {m} out of range")
        if not len(states) == len(actions) == len(rewards) == self.H:
            raise ValueError(f"an episode has H = {self.H} states, actions and rewards")
        self.n_context[m] += 1
        self.n_initial[m, states[0]] += 1
        crossed = False
        for h, (s, a) in enumerate(zip(states, actions)):
            self.reward_index[m, s, a] = int(np.abs(self.levels - rewards[h]).argmin())
            n = int(self.visits[m, s, a]) + 1
            self.visits[m, s, a] = n
            crossed |= n & (n - 1) == 0  # N_m(s, a) reached a power of two
            if h + 1 < self.H:
                self.n_sas[m, s, a, states[h + 1]] += 1
        return crossed


def _model_value(lik: np.ndarray, rewards: np.ndarray, root: np.ndarray, H: int,
                 plan: HistoryPlan) -> float:
    """Value of a history policy in the empirical model (a forward pass, as policy_value)."""
    total = 0.0
    for h, lev in enumerate(forward_weights(lik, root, H, plan)):
        total += float((lev.beta * rewards[:, lev.states, plan.act(h, lev.ids)].T).sum())
    return total


def run_learner(lmdp: LMDP, K: int, rng: np.random.Generator, bonus: str = "bernstein",
                c_var: float = 1.0, c_lin: float = 1.0, v_star: float | None = None) -> LearningRun:
    """Run the learner for K episodes on ``lmdp``; the regret is exact, V* - V(pi_k).

    ``v_star`` (the optimal history-dependent value) is computed when not given.
    """
    M, S, A, H = lmdp.shape
    n_obs = lmdp.n_obs
    learner = OptimisticLMDPLearner(M, S, A, H, lmdp.levels, K, bonus, c_var, c_lin)
    if v_star is None:
        v_star = optimal_plan(lmdp).value
    regret = np.zeros(K)
    returns = np.zeros(K)
    # plain Python lists for the per-step sampling loop (inverse-CDF draws with bisect)
    cum_w = np.cumsum(lmdp.weights).tolist()
    cum_nu = np.cumsum(lmdp.initial, -1).tolist()
    cum_p = np.cumsum(lmdp.transitions, -1).tolist()
    rew = lmdp.rewards.tolist()
    r_idx = lmdp.reward_index.tolist()
    run = LearningRun(regret=regret, returns=returns)
    replan = True
    for k in range(K):
        if replan:
            plan, root_bonus = learner.plan()
            value = policy_value(lmdp, plan)
            lookup = [dict(zip(ids.tolist(), act.tolist()))
                      for ids, act in zip(plan.nodes, plan.actions)]
            run.replans.append(k)
            run.root_bonus.append(root_bonus)
        regret[k] = v_star - value
        u = rng.random(H + 1).tolist()
        m = min(bisect_right(cum_w, u[0] * cum_w[-1]), M - 1)
        s = min(bisect_right(cum_nu[m], u[1] * cum_nu[m][-1]), S - 1)
        node, states, acts, rews = s, [s], [], []
        for h in range(H):
            a = lookup[h].get(node, 0)
            acts.append(a)
            rews.append(rew[m][s][a])
            if h + 1 < H:
                row = cum_p[m][s][a]
                s2 = min(bisect_right(row, u[h + 2] * row[-1]), S - 1)
                node = node * (A * n_obs) + a * n_obs + r_idx[m][s][a] * S + s2
                s = s2
                states.append(s)
        returns[k] = sum(rews)
        replan = learner.update(m, states, acts, rews)
    return run
