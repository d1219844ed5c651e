"""Latent Markov decision processes (LMDPs) with context revealed in hindsight.

Zhou, Wang and Du (ICML 2023), Section 3.1: an LMDP is a collection of M MDPs that share the
state set S, the action set A and the horizon H. MDP m has an initial distribution nu_m, a
transition model P_m(. | s, a) and a deterministic reward R_m(s, a) in [0, 1]; w is the vector of
mixing weights. Each episode draws a hidden context m ~ w, runs MDP m for H steps, and reveals m
to the learner only after the episode ends. Gamma = max_{m,s,a} |supp P_m(. | s, a)|.

The horizon-free setting asks that the total reward of any episode lies in [0, 1]; the
constructor checks it (a longest-path recursion over the transition supports).

Observations. The agent sees (s_1, a_1, r_1, s_2, ..., s_h). We encode what it sees after
(s, a) as one integer o = j * S + s', where j indexes the reward value r in the instance's finite
reward alphabet ``levels``. The likelihood of o in context m,

    L_m(o | s, a) = P_m(s' | s, a) * 1[R_m(s, a) = levels[j]],

is what a belief over contexts is updated with; :mod:`lib.rl.history_planning` plans on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LMDP:
    """A latent MDP (paper Sec. 3.1) with a finite reward alphabet.

    Attributes: ``weights`` (M,), ``initial`` (M, S) = nu_m, ``transitions`` (M, S, A, S) = P_m,
    ``rewards`` (M, S, A) = R_m with values in ``levels`` (a sorted array containing 0), ``H``.
    """

    weights: np.ndarray
    initial: np.ndarray
    transitions: np.ndarray
    rewards: np.ndarray
    H: int
    levels: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=float)
        self.initial = np.asarray(self.initial, dtype=float)
        self.transitions = np.asarray(self.transitions, dtype=float)
        self.rewards = np.asarray(self.rewards, dtype=float)
        if self.transitions.ndim != 4 or self.transitions.shape[1] != self.transitions.shape[3]:
            raise ValueError("transitions must have shape (M, S, A, S), "
                             f"got {self.transitions.shape}")
        M, S, A, _ = self.transitions.shape
        if self.weights.shape != (M,) or self.initial.shape != (M, S):
            raise ValueError(f"weights must have shape ({M},) and initial ({M}, {S}), got "
                             f"{self.weights.shape} and {self.initial.shape}")
        if self.rewards.shape != (M, S, A):
            raise ValueError(f"rewards must have shape ({M}, {S}, {A}), got {self.rewards.shape}")
        if int(self.H) != self.H or self.H < 1:
            raise ValueError(f"the horizon H must be a positive integer, got {self.H}")
        self.H = int(self.H)
        for name, dist, axis in (("weights", self.weights, 0), ("initial", self.initial, 1),
                                 ("transitions", self.transitions, 3)):
            if np.any(dist < 0) or not np.allclose(dist.sum(axis=axis), 1.0, atol=1e-9):
                raise ValueError(f"{name} must be probability distributions (non-negative, "
                                 "summing to 1)")
        if np.any(self.weights <= 0):
            raise ValueError("mixing weights must be positive (paper Sec. 3.1: w_m > 0)")
        if np.any(self.rewards < 0) or np.any(self.rewards > 1):
            raise ValueError("rewards must lie in [0, 1]")
        if self.levels is None:
            self.levels = np.unique(np.concatenate([[0.0], self.rewards.ravel()]))
        self.levels = np.asarray(self.levels, dtype=float)
        index = np.abs(self.rewards[..., None] - self.levels).argmin(-1)
        if not np.allclose(self.levels[index], self.rewards, atol=1e-12):
            raise ValueError("every reward must be one of the values in levels")
        self.reward_index = index
        if self.max_return() > 1 + 1e-9:
            raise ValueError(f"the total reward of an episode can reach {self.max_return():.3f} "
                             "> 1; the horizon-free setting needs returns in [0, 1]")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(M, S, A, H)."""
        M, S, A, _ = self.transitions.shape
        return M, S, A, self.H

    @property
    def n_obs(self) -> int:
        """Number of observation codes o = j * S + s'."""
        return len(self.levels) * self.transitions.shape[1]

    @property
    def gamma(self) -> int:
        """Gamma, the largest support size of any P_m(. | s, a) (the paper's transition degree)."""
        return int((self.transitions > 0).sum(-1).max())

    def max_return(self) -> float:
        """Largest total reward along any feasible path of any context (longest-path recursion)."""
        best = np.zeros(self.transitions.shape[:2])  # (M, S): best reward-to-go
        support = self.transitions > 0
        for _ in range(self.H):
            nxt = np.where(support, best[:, None, None, :], -np.inf).max(-1)  # (M, S, A)
            best = (self.rewards + nxt).max(-1)
        reachable = self.initial > 0
        return float(best[reachable].max())

    def likelihood(self) -> np.ndarray:
        """L_m(o | s, a) of the module docstring, shape (M, S, A, len(levels) * S)."""
        M, S, A, _ = self.transitions.shape
        J = len(self.levels)
        L = np.zeros((M, S, A, J, S))
        onehot = np.eye(J)[self.reward_index]  # (M, S, A, J)
        L[:] = onehot[..., None] * self.transitions[:, :, :, None, :]
        return L.reshape(M, S, A, J * S)

    def sample_episodes(self, policy, n: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Run a history-dependent policy for n episodes at once; return (contexts, returns).

        ``policy`` is a :class:`lib.rl.history_planning.HistoryPlan` (histories indexed as
        there: the children of history i are i * A * O + a * O + o).
        """
        M, S, A, H = self.shape
        n_obs = self.n_obs
        if len(policy.nodes) != H:
            raise ValueError(f"the policy must cover H = {H} steps, got {len(policy.nodes)}")
        if n < 1:
            raise ValueError(f"the number of episodes must be positive, got {n}")
        m = rng.choice(M, size=n, p=self.weights)
        s = _sample_rows(self.initial[m], rng)
        node = s.copy()
        ret = np.zeros(n)
        for h in range(H):
            a = policy.act(h, node)
            ret += self.rewards[m, s, a]
            if h + 1 < H:
                s_next = _sample_rows(self.transitions[m, s, a], rng)
                o = self.reward_index[m, s, a] * S + s_next
                node = node * (A * n_obs) + a * n_obs + o
                s = s_next
        return m, ret


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of ``probs``."""
    cum = probs.cumsum(-1)
    u = rng.random(len(probs))[:, None] * cum[:, -1:]
    return np.minimum((u >= cum).sum(-1), probs.shape[-1] - 1)


def two_point_lmdp(M: int, S: int, A: int, H: int, rng: np.random.Generator,
                   noise: float = 0.1, reward_fraction: float = 0.5) -> LMDP:
    """A random LMDP with Gamma <= 2 and per-step rewards 0 or 1/H (so returns lie in [0, 1]).

    Each P_m(. | s, a) puts 1 - noise on a main successor and ``noise`` on a second one, both drawn
    at random: ``noise = 0`` gives a deterministic LMDP (Var* = 0), and the variance of the
    returns grows with ``noise``. A ``reward_fraction`` of the (m, s, a) pay 1/H; every context
    starts in state 0, and the contexts are equally likely.
    """
    if min(M, A, H) < 1 or S < 2:
        raise ValueError(f"M, A and H must be positive and S at least 2, got {(M, S, A, H)}")
    if not 0 <= noise <= 0.5:
        raise ValueError(f"noise must lie in [0, 0.5], got {noise}")
    if not 0 <= reward_fraction <= 1:
        raise ValueError(f"reward_fraction must lie in [0, 1], got {reward_fraction}")
    P = np.zeros((M, S, A, S))
    main = rng.integers(S, size=(M, S, A))
    other = (main + rng.integers(1, S, size=(M, S, A))) % S
    idx = np.indices((M, S, A))
    P[idx[0], idx[1], idx[2], main] += 1 - noise
    P[idx[0], idx[1], idx[2], other] += noise
    R = (rng.random((M, S, A)) < reward_fraction) / H
    nu = np.zeros((M, S))
    nu[:, 0] = 1.0
    return LMDP(np.full(M, 1 / M), nu, P, R, H, levels=np.array([0.0, 1 / H]))


def latent_bandit_lmdp(success: np.ndarray, H: int, weights: np.ndarray | None = None) -> LMDP:
    """A two-armed bandit with a hidden context, pulled H - 1 times, as an LMDP (S = 2, Gamma = 2).

    State 1 means "the last pull succeeded" and pays 1/H (whatever the action); state 0 pays 0.
    In context m, action a leads to state 1 with probability ``success[m, a]`` and to state 0
    otherwise; episodes start in state 0. The return is (number of successes) / H, in [0, 1] for
    every H, and its variance shrinks like 1/H: the horizon-free regime of the paper, where
    rewards are normalised per episode. With success probabilities 1 - eps and eps the instance
    is near-deterministic for small eps.
    """
    success = np.asarray(success, dtype=float)
    if success.ndim != 2 or np.any(success < 0) or np.any(success > 1):
        raise ValueError("success must be an (M, A) array of probabilities")
    M, A = success.shape
    if weights is None:
        weights = np.full(M, 1 / M)
    P = np.zeros((M, 2, A, 2))
    P[:, :, :, 1] = success[:, None, :]
    P[:, :, :, 0] = 1 - success[:, None, :]
    R = np.zeros((M, 2, A))
    R[:, 1, :] = 1 / H
    nu = np.zeros((M, 2))
    nu[:, 0] = 1.0
    return LMDP(weights, nu, P, R, H, levels=np.array([0.0, 1 / H]))
