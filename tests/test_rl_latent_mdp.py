"""Tests for lib.rl: latent MDPs, exact history planning, the optimistic learner."""

import numpy as np
import pytest

from lib.rl.history_planning import (
    best_markov_value,
    brute_force_optimal_value,
    markov_policy,
    optimal_plan,
    plan_histories,
    policy_value,
)
from lib.rl.latent_mdp import LMDP, latent_bandit_lmdp, two_point_lmdp
from lib.rl.optimistic_lmdp import OptimisticLMDPLearner, run_learner


def test_generators_keep_returns_in_unit_interval():
    rng = np.random.default_rng(0)
    for H in (1, 3, 6):
        lmdp = two_point_lmdp(2, 3, 2, H, rng, noise=0.2, reward_fraction=1.0)
        assert lmdp.max_return() == pytest.approx(1.0)
        assert lmdp.gamma == 2
    assert two_point_lmdp(2, 3, 2, 3, rng, noise=0.0).gamma == 1
    bandit = latent_bandit_lmdp(np.array([[0.9, 0.1], [0.1, 0.9]]), 5)
    assert bandit.max_return() == pytest.approx(4 / 5)


@pytest.mark.parametrize("seed", range(4))
def test_planner_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    lmdp = two_point_lmdp(2, 3, 2, 2, rng, noise=0.3)
    plan = optimal_plan(lmdp)
    best, n = brute_force_optimal_value(lmdp)
    assert n >= 2**5
    assert plan.value == pytest.approx(best, abs=1e-12)
    assert policy_value(lmdp, plan) == pytest.approx(plan.value, abs=1e-12)
    assert best_markov_value(lmdp) <= plan.value + 1e-12


def test_history_dependence_beats_markov_and_monte_carlo_agrees():
    # the first reward reveals the context, which decides the second action: V* = 0.75, while
    # a Markov policy cannot tell the contexts apart in state 1 and gets 0.5
    P = np.zeros((2, 2, 2, 2))
    P[..., 1] = 1.0
    R = np.zeros((2, 2, 2))
    R[1, 0, :] = 0.5
    R[0, 1, 0] = R[1, 1, 1] = 0.5
    lmdp = LMDP(np.array([0.5, 0.5]), np.array([[1.0, 0.0], [1.0, 0.0]]), P, R, 2)
    plan = optimal_plan(lmdp)
    assert plan.value == pytest.approx(0.75)
    assert best_markov_value(lmdp) == pytest.approx(0.5)
    assert brute_force_optimal_value(lmdp)[0] == pytest.approx(0.75)
    _, returns = lmdp.sample_episodes(plan, 200_000, np.random.default_rng(0))
    se = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - plan.value) < 4 * se


def test_markov_policy_value_by_hand():
    bandit = latent_bandit_lmdp(np.array([[0.9, 0.2], [0.3, 0.8]]), 2)
    always0 = markov_policy(bandit, np.zeros((2, 2), dtype=int))
    # one pull with arm 0, paid 1/2 if it succeeds: (0.9 + 0.3) / 2 * 1/2
    assert policy_value(bandit, always0) == pytest.approx(0.3)


def test_bernstein_variance_term_vanishes_on_deterministic_lmdp():
    lmdp = two_point_lmdp(2, 3, 2, 3, np.random.default_rng(2), noise=0.0)
    learner = OptimisticLMDPLearner(2, 3, 2, 3, lmdp.levels, K=100, bonus="bernstein",
                                    c_var=1.0, c_lin=0.0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = int(rng.integers(2))
        s, states, acts, rews = 0, [], [], []
        for _ in range(3):
            a = int(rng.integers(2))
            states.append(s)
            acts.append(a)
            rews.append(float(lmdp.rewards[m, s, a]))
            s = int(lmdp.transitions[m, s, a].argmax())
        learner.update(m, states, acts, rews)
    lik, rewards, root = learner.empirical_model()
    seen = []

    def spy(h, states, mean, second):
        extra, forced = learner.bonus_fn()(h, states, mean, second)
        seen.append(np.where(forced, 0.0, extra).max())
        return extra, forced

    plan_histories(lik, rewards, root, 3, bonus=spy)
    assert max(seen) == 0.0  # deterministic transitions: the empirical variance is exactly 0


def test_learner_regret_decreases_and_replans_are_logarithmic():
    lmdp = two_point_lmdp(2, 3, 2, 3, np.random.default_rng(3), noise=0.1)
    run = run_learner(lmdp, 600, np.random.default_rng(0), bonus="bernstein", c_lin=0.25)
    assert run.regret[-100:].mean() <= 0.2 * run.regret[:60].mean() + 1e-12
    assert len(run.replans) <= 2 * 3 * 2 * (np.log2(600 * 3) + 1)
    assert np.all(run.regret >= -1e-12)
    hoeff = run_learner(lmdp, 600, np.random.default_rng(0), bonus="hoeffding")
    assert hoeff.root_bonus[-1] > run.root_bonus[-1]


def test_bad_inputs():
    rng = np.random.default_rng(0)
    P = np.full((1, 2, 1, 2), 0.5)
    with pytest.raises(ValueError, match="shape"):
        LMDP(np.ones(1), np.array([[1.0, 0.0]]), P[..., :1], np.zeros((1, 2, 1)), 2)
    with pytest.raises(ValueError, match="probability"):
        LMDP(np.ones(1), np.array([[0.5, 0.6]]), P, np.zeros((1, 2, 1)), 2)
    with pytest.raises(ValueError, match="horizon-free"):
        LMDP(np.ones(1), np.array([[1.0, 0.0]]), P, np.full((1, 2, 1), 0.6), 2)
    with pytest.raises(ValueError, match="positive integer"):
        LMDP(np.ones(1), np.array([[1.0, 0.0]]), P, np.zeros((1, 2, 1)), 0)
    with pytest.raises(ValueError, match="levels"):
        LMDP(np.ones(1), np.array([[1.0, 0.0]]), P, np.full((1, 2, 1), 0.2), 2,
             levels=np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="noise"):
        two_point_lmdp(2, 3, 2, 2, rng, noise=0.7)
    with pytest.raises(ValueError, match="S at least 2"):
        two_point_lmdp(2, 1, 2, 2, rng)
    with pytest.raises(ValueError, match="success"):
        latent_bandit_lmdp(np.array([1.2, 0.1]), 3)
    lmdp = two_point_lmdp(2, 3, 2, 2, rng)
    with pytest.raises(ValueError, match="root weights"):
        plan_histories(lmdp.likelihood(), lmdp.rewards, np.ones((2, 2)), 2)
    with pytest.raises(ValueError, match="max_policies"):
        brute_force_optimal_value(two_point_lmdp(2, 3, 2, 4, rng), max_policies=100)
    with pytest.raises(ValueError, match="table"):
        markov_policy(lmdp, np.full((2, 3), 5))
    with pytest.raises(ValueError, match="bonus"):
        OptimisticLMDPLearner(2, 3, 2, 2, lmdp.levels, 10, bonus="ucb")
    with pytest.raises(ValueError, match="delta"):
        OptimisticLMDPLearner(2, 3, 2, 2, lmdp.levels, 10, delta=2.0)
    learner = OptimisticLMDPLearner(2, 3, 2, 2, lmdp.levels, 10)
    with pytest.raises(ValueError, match="H = 2"):
        learner.update(0, [0], [0], [0.0])
    with pytest.raises(ValueError, match="cover"):
        policy_value(two_point_lmdp(2, 3, 2, 3, rng), optimal_plan(lmdp))
