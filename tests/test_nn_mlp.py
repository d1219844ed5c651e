import pytest
import torch

from lib.nn.mlp import mlp


def test_mlp_layers_and_state_dict_keys():
    net = mlp([3, 8, 8, 1], activation="tanh")
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert list(net.state_dict())[0] == "0.weight"
    assert net(torch.zeros(5, 3)).shape == (5, 1)


@pytest.mark.parametrize("sizes", [[3], [3, 0, 1]])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="at least two positive layer sizes"):
        mlp(sizes)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp([2, 2], activation="gelu")
