"""The set-based value network: one network on instances of any size, lowered exactly to the
two-branch form the CCG MILPs embed, stored as hashed safetensors."""

import numpy as np
import pytest

from lib.robust.capital_budgeting import make_instance, second_stage_value
from lib.robust.ccg import encoding_errors, neur2ro_ccg
from lib.robust.set_value_network import (
    SetValueNetwork,
    load,
    make_set_dataset,
    save,
    train_set_value_network,
)
from lib.robust.train_set_value_network import WEIGHTS
from lib.robust.training_data import sample_plans, sample_scenarios


def random_set_network(rng, hidden=6, embed=3):
    def mlp(sizes):
        return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
                for i, o in zip(sizes[:-1], sizes[1:])]
    return SetValueNetwork(mlp([5, hidden, 4]), mlp([4, hidden, embed]), mlp([5, hidden, 4]),
                           mlp([4, hidden, embed]), mlp([2 * embed, hidden, 1]))


def instance(seed, n):
    return make_instance(np.random.default_rng(seed), n=n, kappa=2, gamma=1.5)


@pytest.mark.parametrize("n", [3, 5, 9])
def test_lowered_network_equals_the_set_network_on_binary_plans(n):
    rng = np.random.default_rng(n)
    net, inst = random_set_network(rng), instance(n, n)
    X = sample_plans(inst, 20, rng)
    XI = sample_scenarios(inst.kappa, 20, rng, inst.gamma)
    low = net.lower(inst)
    np.testing.assert_allclose(low.forward(X, XI), net.forward(inst, X, XI), atol=1e-12)
    # broadcasting one plan against many scenarios
    np.testing.assert_allclose(low.forward(X[0], XI), net.forward(inst, X[0], XI), atol=1e-12)


def test_one_network_serves_every_size():
    rng = np.random.default_rng(0)
    net = random_set_network(rng)
    for n in (2, 4, 7, 11):
        inst = instance(n, n)
        assert net.forward(inst, np.zeros(n), np.zeros(2)).shape == (1,)


def test_the_lowered_network_is_embedded_exactly():
    rng = np.random.default_rng(3)
    net, inst = random_set_network(rng), instance(3, 5)
    assert encoding_errors(net.lower(inst), inst, rng, count=2).max() <= 1e-6


def test_save_and_load_round_trip_and_detect_tampering(tmp_path):
    net = random_set_network(np.random.default_rng(1))
    net.meta = {"note": "test"}
    path = save(net, tmp_path)
    back = load(tmp_path)
    inst = instance(1, 4)
    x, xi = np.array([1.0, 0, 0, 1]), np.array([0.3, -0.2])
    assert back.forward(inst, x, xi) == pytest.approx(net.forward(inst, x, xi), abs=0)
    assert back.meta == {"note": "test"}
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256"):
        load(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load(tmp_path / "nowhere")


def test_shipped_weights_verify_and_predict_unseen_sizes():
    net = load(WEIGHTS)
    assert set(net.meta["train_sizes"]).isdisjoint({7, 9, 10})
    rng = np.random.default_rng(0)
    inst = make_instance(rng, n=7, kappa=2, gamma=2.0, late_factor=0.9, budget_fraction=0.4)
    X = sample_plans(inst, 10, rng)
    XI = sample_scenarios(2, 10, rng)
    true = np.array([second_stage_value(inst, x, xi)[0] for x, xi in zip(X, XI)])
    rel = np.abs(net.forward(inst, X, XI) - true).mean() / np.abs(true).mean()
    assert rel < 0.15


def test_training_reduces_the_loss_and_ccg_runs_on_the_result():
    rng = np.random.default_rng(0)
    insts = [instance(s, n) for s, n in enumerate((4, 5, 4, 5))]
    data = make_set_dataset(insts, 8, 5, rng)
    net, report = train_set_value_network(data, item_hidden=6, item_embed=4, post_hidden=6,
                                          embed=3, head_hidden=4, epochs=30, batch_size=64,
                                          lr=1e-2)
    assert report.losses[-1] < report.losses[0]
    inst = instance(9, 6)  # a size the network never saw
    trace = neur2ro_ccg(net.lower(inst), inst, max_iter=10)
    assert inst.cost @ trace.x <= inst.budget + 1e-9


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    net = random_set_network(rng)
    inst = instance(0, 4)
    with pytest.raises(ValueError, match="columns"):
        net.forward(inst, np.zeros(5), np.zeros(2))
    with pytest.raises(ValueError, match="risk factors"):
        net.forward(make_instance(rng, n=4, kappa=3), np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="hidden layer"):
        SetValueNetwork(net.phi_x[-1:], net.rho_x, net.phi_xi, net.rho_xi, net.head)
    with pytest.raises(ValueError, match="3 \\+ kappa"):
        SetValueNetwork([(np.ones((6, 2)), np.ones(6)), *net.phi_x[1:]], net.rho_x,
                        net.phi_xi, net.rho_xi, net.head)
    with pytest.raises(ValueError, match="head"):
        SetValueNetwork(net.phi_x, net.rho_x, net.phi_xi, net.rho_xi, net.head[:1])
    with pytest.raises(ValueError, match="risk factors"):
        make_set_dataset([inst, make_instance(rng, n=4, kappa=3)], 2, 2, rng)
    with pytest.raises(ValueError, match="at least one"):
        make_set_dataset([], 2, 2, rng)
