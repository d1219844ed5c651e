"""Comp-sum losses: the loss family, conditional regrets, the paper's bound functions, PGD."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.losses.comp_sum import (
    adv_comp_sum_loss,
    bayes_conditional_risk,
    calibration_function,
    comp_sum_loss,
    conditional_regret_01,
    conditional_regret_surrogate,
    conditional_risk,
    gamma_tau,
    margin_vector,
    min_risk_predicting,
    pgd_linf,
    phi_tau,
    psi_tau,
    random_conditionals,
    tight_calibration,
    trades_loss,
)

TAUS = (0.0, 0.5, 1.0, 1.5, 2.0)


def test_named_members_of_the_family():
    u = np.array([0.0, 0.3, 2.0, 10.0])
    np.testing.assert_allclose(phi_tau(u, 0.0), u)  # sum-exponential
    np.testing.assert_allclose(phi_tau(u, 1.0), np.log1p(u))  # logistic
    np.testing.assert_allclose(phi_tau(u, 2.0), 1 - 1 / (1 + u))  # MAE = 1 - s_y
    s = 1 / (1 + u)
    for tau in TAUS:
        np.testing.assert_allclose(psi_tau(s, tau), phi_tau(u, tau), rtol=1e-12, atol=1e-15)
    # continuity in tau at tau = 1
    np.testing.assert_allclose(phi_tau(u, 1 + 1e-7), np.log1p(u), rtol=1e-5)


@pytest.mark.parametrize("tau", TAUS)
def test_torch_loss_matches_definition_and_is_stable(tau):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 4, (7,), generator=g)
    u = (logits - logits.gather(1, y[:, None])).exp().sum(1) - 1  # sum over y' != y
    expected = phi_tau(u.numpy(), tau)
    got = comp_sum_loss(logits, y, tau, reduction="none").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    if tau == 1.0:
        torch.testing.assert_close(comp_sum_loss(logits, y, 1.0), F.cross_entropy(logits, y))
    big = torch.tensor([[1000.0, -1000.0]])
    assert torch.isfinite(comp_sum_loss(big, torch.tensor([0]), tau))


@pytest.mark.parametrize("tau", (0.0, 0.5, 1.0, 1.5))
def test_bayes_risk_is_the_minimum_and_its_argmin(tau):
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4))
    alpha = 1 / (2 - tau)
    s_star = p**alpha / (p**alpha).sum()
    c_star = bayes_conditional_risk(p, tau)
    np.testing.assert_allclose(conditional_risk(p, s_star, tau), c_star, rtol=1e-12)
    for _ in range(200):  # no random score vector does better
        s = rng.dirichlet(np.ones(4))
        assert conditional_risk(p, s, tau) >= c_star - 1e-12
    # finite differences along the simplex (e_i - e_0): every directional derivative vanishes
    h = 1e-6
    for i in range(1, 4):
        d = np.eye(4)[i] - np.eye(4)[0]
        slope = (conditional_risk(p, s_star + h * d, tau)
                 - conditional_risk(p, s_star - h * d, tau)) / (2 * h)
        assert abs(slope) < 1e-6


def test_bayes_risk_closed_forms():
    p = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(bayes_conditional_risk(p, 1.0), -(p * np.log(p)).sum())
    np.testing.assert_allclose(bayes_conditional_risk(p, 2.0), 0.5)
    np.testing.assert_allclose(bayes_conditional_risk(p, 0.0), np.sqrt(p).sum() ** 2 - 1)


@pytest.mark.parametrize("tau", TAUS)
def test_exact_constrained_minimum_matches_numeric_solver(tau):
    rng = np.random.default_rng(2)
    for n in (2, 3, 4):
        for _ in range(3):
            p = rng.dirichlet(np.ones(n))
            for predicted in range(n):
                exact = min_risk_predicting(p, tau, predicted)
                numeric = min_risk_predicting(p, tau, predicted, method="numeric")
                assert abs(exact - numeric) <= 1e-7 * max(1, abs(exact))
    # predicting the most likely class costs nothing extra
    p = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(min_risk_predicting(p, tau, 0), bayes_conditional_risk(p, tau))


def test_binary_closed_forms_of_the_calibration_function():
    t = np.array([0.0, 0.1, 0.5, 0.9])
    np.testing.assert_allclose(calibration_function(t, 0.0, 2), 1 - np.sqrt(1 - t**2))
    np.testing.assert_allclose(
        calibration_function(t, 1.0, 2), (1 + t) / 2 * np.log1p(t) + (1 - t) / 2 * np.log1p(-t)
    )
    np.testing.assert_allclose(calibration_function(t, 2.0, 5), t / 5)
    np.testing.assert_allclose(calibration_function(1.0, 1.0, 2), np.log(2))


@pytest.mark.parametrize("tau", TAUS)
def test_gamma_inverts_the_calibration_function(tau):
    t = np.linspace(0, 1, 23)
    for n in (2, 5):
        np.testing.assert_allclose(gamma_tau(calibration_function(t, tau, n), tau, n), t,
                                   atol=1e-9)
    assert gamma_tau(10.0, tau, 3) == 1.0


@pytest.mark.parametrize("tau", TAUS)
def test_binary_tightness(tau):
    for t in (0.1, 0.3, 0.5, 0.9):
        numeric = tight_calibration(t, tau, 2)
        assert abs(numeric / calibration_function(t, tau, 2) - 1) < 1e-6


@pytest.mark.parametrize("n", (2, 3, 5))
@pytest.mark.parametrize("tau", TAUS)
def test_bound_holds_on_random_pairs(n, tau):
    p, s = random_conditionals(n, 3000, np.random.default_rng(n))
    r01 = conditional_regret_01(p, s)
    assert np.all(r01 <= gamma_tau(conditional_regret_surrogate(p, s, tau), tau, n) + 1e-9)


def test_a_sign_error_in_u_breaks_the_bound():
    # the "loss" Phi(1/u) rewards the wrong class: zero surrogate regret, positive 0-1 regret
    p, s = np.array([0.7, 0.3]), np.array([0.3, 0.7])
    assert conditional_regret_01(p, s) > 0
    wrong = (p * psi_tau(1 - s, 1.0)).sum() - bayes_conditional_risk(p, 1.0)
    assert gamma_tau(max(wrong, 0.0), 1.0, 2) < conditional_regret_01(p, s)


def test_tight_calibration_many_classes_is_not_below_the_bound():
    for tau in TAUS:
        for t in (0.1, 0.6):
            assert tight_calibration(t, tau, 4, n_samples=3000) >= calibration_function(
                t, tau, 4) - 1e-12


def test_pgd_stays_in_the_ball_and_increases_the_objective():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    objective = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    x_adv = pgd_linf(objective, x, 0.1, 10, 0.03, random_start=False)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert objective(x_adv).sum() > objective(x).sum()


def test_adversarial_losses_reduce_to_clean_ones_at_zero_radius():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(adv_comp_sum_loss(model, x, y, tau=1.5, eps=0.0),
                               comp_sum_loss(model(x), y, 1.5))
    assert adv_comp_sum_loss(model, x, y, eps=0.2) >= comp_sum_loss(model(x), y, 1.0)
    assert trades_loss(model, x, y, eps=0.2) >= F.cross_entropy(model(x), y) - 1e-6
    assert torch.all(margin_vector(model(x), y).gather(1, y[:, None]) == 0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="tau"):
        phi_tau(1.0, -0.5)
    with pytest.raises(ValueError, match="tau"):
        calibration_function(0.5, 3.0, 2)
    with pytest.raises(ValueError, match="classes n"):
        calibration_function(0.5, 1.0, 1)
    with pytest.raises(ValueError, match="lies in"):
        calibration_function(1.5, 1.0, 2)
    with pytest.raises(ValueError, match="sum to 1"):
        conditional_risk(np.array([0.5, 0.6]), np.array([0.5, 0.5]), 1.0)
    with pytest.raises(ValueError, match="strictly positive"):
        conditional_risk(np.array([0.5, 0.5]), np.array([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        gamma_tau(-0.1, 1.0, 2)
    with pytest.raises(ValueError, match="class index"):
        min_risk_predicting(np.array([0.5, 0.5]), 1.0, 2)
    with pytest.raises(ValueError, match="logits"):
        comp_sum_loss(torch.zeros(3), torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        comp_sum_loss(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 1.0, reduction="max")
    with pytest.raises(ValueError, match="nu"):
        adv_comp_sum_loss(torch.nn.Linear(2, 2), torch.rand(1, 2), torch.tensor([0]), nu=-1.0)
