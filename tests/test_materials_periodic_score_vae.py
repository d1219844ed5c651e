import numpy as np
import pytest
import torch

from lib.materials.periodic_score_vae import (
    CrystalVAE,
    PairNet,
    annealed_langevin,
    geometric_sigmas,
    layout,
    to_tensors,
)
from lib.materials.periodic_toy import (
    Structures,
    cell_side,
    energy_gradient,
    make_periodic_toy,
    min_image,
    pair_energy,
    place_atoms,
    relax,
    structural_validity,
)
from lib.materials.structure_matching import SQUARE_SYMMETRIES, match_rate, rms_distance
from lib.materials.weights_io import WEIGHTS, load_models, manifest
from lib.util.shipped_weights import sha256_file


def _toy(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return place_atoms(np.full(n, 5), np.full(n, 2), 6, rng)


def test_min_image_is_the_nearest_of_the_3x3_images():
    rng = np.random.default_rng(0)
    d = rng.uniform(-1, 1, (500, 2))
    shifts = np.array([[i, j] for i in (-2, -1, 0, 1, 2) for j in (-2, -1, 0, 1, 2)])
    brute = np.linalg.norm(d[:, None] + shifts[None], axis=-1).min(1)
    assert np.allclose(np.linalg.norm(min_image(d), axis=-1), brute)


def test_energy_gradient_matches_finite_differences():
    s = _toy()
    g = energy_gradient(s)
    h = 1e-6
    k, i, c = 1, 2, 0
    plus, minus = s.frac.copy(), s.frac.copy()
    plus[k, i, c] += h / s.side[k]
    minus[k, i, c] -= h / s.side[k]
    e = lambda f: (pair_energy(Structures(f, s.types, s.mask, s.side)) * s.n_atoms)[k]  # noqa: E731
    assert abs((e(plus) - e(minus)) / (2 * h) - g[k, i, c]) < 1e-5


def test_relaxation_reaches_minima_with_valid_distances():
    s = make_periodic_toy(20, 0)
    assert len(s) == 20
    assert np.linalg.norm(energy_gradient(s), axis=-1).max() < 1e-4
    assert structural_validity(s).all()
    relaxed, ok = relax(_toy(1), steps=5)
    assert relaxed.frac.shape == (4, 6, 2) and ok.dtype == bool


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        cell_side(0, 0)
    with pytest.raises(ValueError):
        structural_validity(_toy(), threshold=1.5)
    with pytest.raises(ValueError):
        Structures(np.zeros((1, 3, 2)), np.zeros((1, 3)), np.ones((1, 2)), np.ones(1))
    with pytest.raises(ValueError):
        place_atoms(np.array([7]), np.array([1]), 6, np.random.default_rng(0))
    with pytest.raises(ValueError):
        geometric_sigmas(0.1, 1.0, 10)
    with pytest.raises(ValueError):
        PairNet(hidden=0)
    with pytest.raises(ValueError):
        rms_distance(np.zeros((3, 3)), np.zeros(3), np.zeros((3, 3)), np.zeros(3), 1.0)
    with pytest.raises(ValueError):
        match_rate(_toy(), _toy(), tol=0)


def test_matcher_ignores_shifts_permutations_and_square_symmetries():
    s = make_periodic_toy(3, 1)
    m = s.mask[0]
    a, ta = s.frac[0][m], s.types[0][m]
    perm = np.random.default_rng(0).permutation(len(a))
    b = ((a @ SQUARE_SYMMETRIES[5].T) + np.array([0.3, 0.71]))[perm] % 1.0
    assert rms_distance(a, ta, b, ta[perm], s.side[0]) < 1e-9
    assert rms_distance(a, ta, b[:-1], ta[perm][:-1], s.side[0]) == np.inf
    assert match_rate(s, s) == 1.0


@pytest.mark.parametrize("periodic", [True, False])
def test_score_is_permutation_equivariant_and_periodic_one_shift_invariant(periodic):
    torch.manual_seed(0)
    model = CrystalVAE(periodic=periodic).eval()
    t = to_tensors(_toy(2))
    z, sigma = torch.randn(4, model.latent), torch.full((4,), 0.1)
    base = model.score(t["frac"], t["types"], t["mask"], t["side"], z, sigma)
    perm = torch.tensor([4, 2, 0, 1, 3, 5])
    permuted = model.score(t["frac"][:, perm], t["types"][:, perm], t["mask"][:, perm],
                           t["side"], z, sigma)
    assert torch.allclose(permuted, base[:, perm], atol=1e-5)
    shifted = model.score((t["frac"] + 0.37) % 1.0, t["types"], t["mask"], t["side"], z, sigma)
    assert torch.allclose(shifted, base, atol=1e-4) == periodic


def test_langevin_keeps_atoms_in_the_cell_and_rejects_bad_steps():
    torch.manual_seed(0)
    model = CrystalVAE().eval()
    g = torch.Generator().manual_seed(0)
    start = layout(torch.tensor([4, 6]), torch.tensor([1, 3]), model.n_max, g)
    out = annealed_langevin(model, torch.zeros(2, model.latent), start,
                            geometric_sigmas(1.0, 0.01, 3), steps_per_level=2, generator=g)
    assert out.shape == (2, 6, 2) and (out >= 0).all() and (out < 1).all()
    with pytest.raises(ValueError):
        annealed_langevin(model, torch.zeros(2, model.latent), start,
                          geometric_sigmas(1.0, 0.01, 3), steps_per_level=0)


def test_shipped_weights_match_their_manifest():
    info = manifest()
    for name, digest in info["sha256"].items():
        assert sha256_file(WEIGHTS / name) == digest
    models = load_models()
    assert set(models) == {"periodic", "nonperiodic", "direct"}
    total = sum((WEIGHTS / name).stat().st_size for name in info["sha256"])
    assert total < 2_000_000
