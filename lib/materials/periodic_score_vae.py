"""CDVAE in miniature: a periodic score network, a VAE latent, annealed Langevin generation.

Xie, Fu, Ganea, Barzilay, Jaakkola, *Crystal Diffusion Variational Autoencoder for Periodic
Material Generation*, ICLR 2022. The pieces mirror the paper's Sec. 3:

- ``PairNet``: message passing on all pairs of a cell with minimum-image vectors (the 2-D
  periodic multi-graph); scalar features only depend on distances and types, so the outputs are
  invariant to lattice shifts and permutations (the encoder) or equivariant (the score).
- ``CrystalVAE``: encoder -> (mu, log var) -> z; heads predict the number of atoms N and the
  composition (Sec. 3.2); the decoder is the score network conditioned on z and sigma.
- ``denoising_loss``: denoising score matching with *wrapped* Gaussian noise (Eq. 3 of the
  paper; CDVAE's ``coord_loss``): target = minimum-image (x - x~) / sigma.
- ``annealed_langevin``: Algorithm 1 (step eps * sigma_l^2 / sigma_L^2, positions wrapped).

``periodic=False`` gives the ablation without wrapping (Euclidean vectors, unwrapped noise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lib.materials.periodic_toy import Structures, cell_side
from lib.nn.mlp import mlp


def geometric_sigmas(sigma_max: float, sigma_min: float, levels: int) -> torch.Tensor:
    """Noise levels sigma_1 > ... > sigma_L, geometric (the paper's schedule)."""
    if not sigma_max > sigma_min > 0 or levels < 2:
        raise ValueError("need sigma_max > sigma_min > 0 and at least two levels")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), levels))


def to_tensors(s: Structures) -> dict[str, torch.Tensor]:
    return dict(frac=torch.tensor(s.frac, dtype=torch.float32),
                types=torch.tensor(s.types), mask=torch.tensor(s.mask),
                side=torch.tensor(s.side, dtype=torch.float32))


def pair_geometry(frac: torch.Tensor, side: torch.Tensor, periodic: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """d[b, i, j] = x_j - x_i in Cartesian units (minimum image if ``periodic``) and |d|."""
    d = frac[:, None, :, :] - frac[:, :, None, :]
    if periodic:
        d = d - torch.floor(d + 0.5)
    d = d * side[:, None, None, None]
    return d, torch.sqrt((d ** 2).sum(-1) + 1e-12)


class PairNet(nn.Module):
    """Pair message passing. ``forward`` returns node states h (B, N, H) and, for the score,
    the per-atom vector sum_j w_ij d_ij / |d_ij| (B, N, 2) with scalar pair weights w_ij."""

    def __init__(self, hidden: int = 64, n_rbf: int = 16, r_max: float = 3.0, layers: int = 2,
                 cond_dim: int = 0, periodic: bool = True) -> None:
        super().__init__()
        if hidden < 1 or n_rbf < 2 or layers < 1 or r_max <= 0 or cond_dim < 0:
            raise ValueError("hidden, n_rbf >= 2, layers, r_max must be positive")
        self.periodic, self.r_max, self.n_rbf = periodic, r_max, n_rbf
        self.embed = nn.Embedding(2, hidden)
        self.cond = nn.Linear(cond_dim, hidden) if cond_dim else None
        self.messages = nn.ModuleList(mlp([2 * hidden + n_rbf, hidden, hidden], "silu")
                                      for _ in range(layers))
        self.updates = nn.ModuleList(mlp([2 * hidden, hidden, hidden], "silu")
                                     for _ in range(layers))
        self.weight = mlp([2 * hidden + n_rbf, hidden, 1], "silu")

    def rbf(self, r: torch.Tensor) -> torch.Tensor:
        centers = torch.linspace(0, self.r_max, self.n_rbf, device=r.device)
        width = self.r_max / (self.n_rbf - 1)
        return torch.exp(-((r[..., None] - centers) / width) ** 2)

    def _pair_input(self, h: torch.Tensor, rbf: torch.Tensor) -> torch.Tensor:
        n = h.shape[1]
        return torch.cat([h[:, :, None].expand(-1, -1, n, -1),
                          h[:, None, :].expand(-1, n, -1, -1), rbf], -1)

    def forward(self, frac, types, mask, side, cond=None):
        d, r = pair_geometry(frac, side, self.periodic)
        n = frac.shape[1]
        pair_mask = (mask[:, :, None] & mask[:, None, :]
                     & ~torch.eye(n, dtype=torch.bool, device=frac.device)).float()
        rbf = self.rbf(r)
        h = self.embed(types)
        if self.cond is not None:
            h = h + self.cond(cond)[:, None, :]
        for message, update in zip(self.messages, self.updates):
            m = (message(self._pair_input(h, rbf)) * pair_mask[..., None]).sum(2)
            h = h + update(torch.cat([h, m], -1))
        w = self.weight(self._pair_input(h, rbf))[..., 0] * pair_mask
        vec = (w[..., None] * d / r[..., None]).sum(2)
        return h * mask[..., None].float(), vec * mask[..., None].float()


class CrystalVAE(nn.Module):
    """Encoder, N / composition heads and the z-conditioned score decoder (Sec. 3)."""

    def __init__(self, latent: int = 8, hidden: int = 48, n_max: int = 6,
                 periodic: bool = True) -> None:
        super().__init__()
        if latent < 1 or n_max < 2:
            raise ValueError("latent must be positive and n_max at least 2")
        self.latent, self.n_max, self.periodic = latent, n_max, periodic
        self.encoder = PairNet(hidden, cond_dim=0, periodic=periodic)
        self.to_latent = mlp([hidden, hidden, 2 * latent], "silu")
        self.n_head = mlp([latent, hidden, n_max + 1], "silu")
        self.comp_head = mlp([latent, hidden, 2], "silu")
        self.decoder = PairNet(hidden, cond_dim=latent + 1, periodic=periodic)

    def encode(self, frac, types, mask, side) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, log var of q(z | structure): a sum over atoms of the encoder states."""
        h, _ = self.encoder(frac, types, mask, side)
        out = self.to_latent(h.sum(1) / self.n_max)
        return out[:, : self.latent], out[:, self.latent:]

    def score(self, frac, types, mask, side, z, sigma) -> torch.Tensor:
        """The decoder's output s, which estimates sigma x the score: ~ (x - x~) / sigma."""
        cond = torch.cat([z, torch.log(sigma)[:, None]], -1)
        return self.decoder(frac, types, mask, side, cond)[1]

    def decode_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted number of atoms (argmax, at least 2) and number of type-1 atoms
        (the predicted composition fraction times N, rounded)."""
        logits = self.n_head(z)
        logits[:, :2] = -torch.inf
        n = logits.argmax(-1)
        frac_b = torch.softmax(self.comp_head(z), -1)[:, 1]
        n_b = torch.clamp(torch.round(frac_b * n), 0, None).long()
        return n, torch.minimum(n_b, n)


def wrapped_noise(frac, side, sigma, mask, periodic: bool = True):
    """x~ = x + sigma eps, wrapped back into the cell when ``periodic`` (fractional units)."""
    eps = torch.randn_like(frac) * sigma[:, None, None] / side[:, None, None]
    noisy = frac + eps * mask[..., None].float()
    return noisy % 1.0 if periodic else noisy


def denoising_loss(model: CrystalVAE, batch: dict, sigmas: torch.Tensor, beta: float = 0.01,
                   coord_cost: float = 10.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The CDVAE objective: coord DSM (Eq. 3; target min-image (x - x~)/sigma, weight sigma^2
    folded in) + cross-entropies for N and composition + beta KL(q(z|x) || N(0, I))."""
    frac, types, mask, side = batch["frac"], batch["types"], batch["mask"], batch["side"]
    mu, logvar = model.encode(frac, types, mask, side)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    sigma = sigmas[torch.randint(len(sigmas), (len(frac),))]
    noisy = wrapped_noise(frac, side, sigma, mask, model.periodic)
    diff = frac - noisy
    if model.periodic:
        diff = diff - torch.floor(diff + 0.5)
    target = diff * side[:, None, None] / sigma[:, None, None]
    pred = model.score(noisy, types, mask, side, z, sigma)
    m = mask.float()
    coord = (((pred - target) ** 2).sum(-1) * m).sum(1) / m.sum(1)
    n_atoms = mask.sum(1)
    n_loss = nn.functional.cross_entropy(model.n_head(z), n_atoms)
    frac_b = ((types == 1) & mask).sum(1) / n_atoms
    comp_t = torch.stack([1 - frac_b, frac_b], -1)
    comp_loss = -(comp_t * torch.log_softmax(model.comp_head(z), -1)).sum(-1).mean()
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1).mean()
    loss = coord_cost * 0.5 * coord.mean() + n_loss + comp_loss + beta * kl
    parts = dict(coord=coord.mean(), n=n_loss, comp=comp_loss, kl=kl)
    return loss, {k: round(v.item(), 4) for k, v in parts.items()}


def layout(n: torch.Tensor, n_b: torch.Tensor, n_max: int, generator: torch.Generator
           ) -> dict[str, torch.Tensor]:
    """Random initial coordinates for given N and n_B (types laid out 0s then 1s; the cell
    side from the composition)."""
    idx = torch.arange(n_max)[None, :]
    mask = idx < n[:, None]
    types = ((idx >= (n - n_b)[:, None]) & mask).long()
    side = torch.tensor(cell_side((n - n_b).numpy(), n_b.numpy()), dtype=torch.float32)
    frac = torch.rand((len(n), n_max, 2), generator=generator)
    return dict(frac=frac, types=types, mask=mask, side=side)


@torch.no_grad()
def annealed_langevin(model: CrystalVAE, z: torch.Tensor, start: dict, sigmas: torch.Tensor,
                      steps_per_level: int = 5, step_lr: float = 1e-4,
                      min_sigma: float = 0.0, generator: torch.Generator | None = None,
                      trajectory: bool = False):
    """Algorithm 1: for each sigma_l >= ``min_sigma``, ``steps_per_level`` updates
    x <- x + a_l s(x, z, sigma_l) / sigma_l + sqrt(2 a_l) eps, a_l = step_lr (sigma_l /
    sigma_L)^2, positions wrapped into the cell (left unwrapped when not ``model.periodic``,
    and wrapped once at the end). Returns the final fractional coordinates (and the path)."""
    if steps_per_level < 1 or step_lr <= 0:
        raise ValueError("steps_per_level and step_lr must be positive")
    frac, types, mask, side = start["frac"].clone(), start["types"], start["mask"], start["side"]
    path = [frac.clone()]
    m = mask[..., None].float()
    for sigma in sigmas:
        if sigma < min_sigma:
            break
        a = step_lr * (sigma / sigmas[-1]) ** 2
        sig = torch.full((len(frac),), float(sigma))
        for _ in range(steps_per_level):
            s = model.score(frac, types, mask, side, z, sig)
            noise = torch.randn(frac.shape, generator=generator) * torch.sqrt(2 * a)
            move = (a * s / sigma + noise) * m / side[:, None, None]
            frac = frac + move
            if model.periodic:
                frac = frac % 1.0
            if trajectory:
                path.append(frac.clone())
    frac = frac % 1.0
    return (frac, path) if trajectory else frac


def as_structures(frac: torch.Tensor, start: dict) -> Structures:
    return Structures(frac.numpy().astype(float), start["types"].numpy(),
                      start["mask"].numpy(), start["side"].numpy())


@torch.no_grad()
def generate(model: CrystalVAE, n: int, sigmas: torch.Tensor, seed: int,
             z: torch.Tensor | None = None, **langevin) -> Structures:
    """Sample z ~ N(0, I) (or use the given z), predict N and composition, run Langevin."""
    g = torch.Generator().manual_seed(seed)
    if z is None:
        z = torch.randn((n, model.latent), generator=g)
    n_atoms, n_b = model.decode_stats(z)
    start = layout(n_atoms, n_b, model.n_max, g)
    return as_structures(annealed_langevin(model, z, start, sigmas, generator=g, **langevin),
                         start)


@torch.no_grad()
def reconstruct(model: CrystalVAE, s: Structures, sigmas: torch.Tensor, seed: int,
                **langevin) -> Structures:
    """Encode (z = mu), decode N and composition, and regenerate the coordinates by Langevin."""
    t = to_tensors(s)
    mu, _ = model.encode(t["frac"], t["types"], t["mask"], t["side"])
    return generate(model, len(s), sigmas, seed, z=mu, **langevin)


class DirectDecoderVAE(nn.Module):
    """The direct-decoding baseline (FTCP-like): the same encoder and heads, and an MLP that
    maps z to N_max coordinates at once (no score, no Langevin)."""

    def __init__(self, latent: int = 8, hidden: int = 48, n_max: int = 6) -> None:
        super().__init__()
        self.vae = CrystalVAE(latent, hidden, n_max, periodic=True)
        self.coords = mlp([latent, 4 * hidden, 4 * hidden, 2 * n_max], "silu")
        self.latent, self.n_max = latent, n_max

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.coords(z).view(len(z), self.n_max, 2) % 1.0


def canonical_frame(s: Structures) -> Structures:
    """Shift each structure so that its first atom sits at the origin (the direct decoder's
    target frame; atoms keep their type-sorted order)."""
    return Structures((s.frac - s.frac[:, :1]) % 1.0, s.types, s.mask, s.side)


def direct_loss(model: DirectDecoderVAE, batch: dict, beta: float = 0.01):
    """Min-image squared error of the decoded coordinates in the canonical frame, plus the
    same N / composition / KL terms as CrystalVAE."""
    frac, types, mask, side = batch["frac"], batch["types"], batch["mask"], batch["side"]
    mu, logvar = model.vae.encode(frac, types, mask, side)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    diff = model.decode(z) - frac
    diff = (diff - torch.floor(diff + 0.5)) * side[:, None, None]
    m = mask.float()
    coord = (((diff ** 2).sum(-1)) * m).sum(1) / m.sum(1)
    n_atoms = mask.sum(1)
    frac_b = ((types == 1) & mask).sum(1) / n_atoms
    comp_t = torch.stack([1 - frac_b, frac_b], -1)
    loss = (10 * coord.mean() + nn.functional.cross_entropy(model.vae.n_head(z), n_atoms)
            - (comp_t * torch.log_softmax(model.vae.comp_head(z), -1)).sum(-1).mean()
            + beta * (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1).mean()))
    return loss, dict(coord=round(coord.mean().item(), 4))


@torch.no_grad()
def direct_generate(model: DirectDecoderVAE, n: int, seed: int,
                    z: torch.Tensor | None = None) -> Structures:
    g = torch.Generator().manual_seed(seed)
    if z is None:
        z = torch.randn((n, model.latent), generator=g)
    n_atoms, n_b = model.vae.decode_stats(z)
    start = layout(n_atoms, n_b, model.n_max, g)
    return as_structures(model.decode(z), start)


def batches(t: dict[str, torch.Tensor], size: int, rng: np.random.Generator):
    """Endless shuffled minibatches of a tensor dict."""
    n = len(t["side"])
    while True:
        for idx in np.array_split(rng.permutation(n), max(1, n // size)):
            yield {k: v[idx] for k, v in t.items()}
