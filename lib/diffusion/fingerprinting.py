"""User fingerprints carried by weight modulation of a latent decoder (WOUAF).

Kim et al., *WOUAF: Weight Modulation for User Attribution and Fingerprinting in Text-to-Image
Diffusion Models*, CVPR 2024. A model distributor gives user ``u`` a copy of the autoencoder
decoder whose weights are scaled by the user's fingerprint ``phi_u in {0, 1}^d``:

* a mapping network turns the bits into a style vector, ``w = M(phi)`` (paper Sec. 3.2);
* per modulated layer ``l`` an affine head gives per-input-channel scales
  ``s_l = A_l w`` (initialised at 1), and the layer's weights become
  ``W'_{o,i,k} = s_{l,i} W_{o,i,k}`` (paper Eq. 2; the official code scales, it does not
  demodulate);
* a fingerprint decoder ``E`` reads the bits back from an image (paper Sec. 3.3), and a user is
  attributed by the closest registered fingerprint in Hamming distance.

The modulated layers are those the official ``customize_vae_decoder`` wraps: both 3x3 convolutions
of every ``ResnetBlock2D`` in the decoder and the query/key/value projections of its attention.
Scaling a layer's input channels by ``s`` is the same linear map as scaling the weights' input
axis by ``s`` (``sum_i W_i (s_i x_i) = sum_i (s_i W_i) x_i``, zero padding included), so a batch of
users is decoded with one pass of the shared weights, and :meth:`ModulatedDecoder.bake` writes
one user's weights into a plain diffusers ``AutoencoderKL``: the copy a user would receive.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from lib.nn.mlp import mlp


def modulated_layer_names(decoder: nn.Module) -> list[tuple[str, int]]:
    """``(module path, input channels)`` of every layer WOUAF modulates in ``decoder``: conv1 and
    conv2 of each ``ResnetBlock2D`` and the attention's ``to_q``, ``to_k``, ``to_v``."""
    out: list[tuple[str, int]] = []
    for name, module in decoder.named_modules():
        if isinstance(module, ResnetBlock2D):
            out += [(f"{name}.conv1", module.conv1.in_channels),
                    (f"{name}.conv2", module.conv2.in_channels)]  # fmt: skip
        elif all(hasattr(module, p) for p in ("to_q", "to_k", "to_v")):
            out += [(f"{name}.{p}", getattr(module, p).in_features)
                    for p in ("to_q", "to_k", "to_v")]
    if not out:
        raise ValueError("the decoder has no ResnetBlock2D or attention layers to modulate")
    return out


class FingerprintDecoder(nn.Module):
    """``E``: a small CNN from images in [0, 1] to one logit per fingerprint bit (the paper's
    ResNet-50 scaled to 32x32 images)."""

    def __init__(self, bits: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.SiLU(), nn.Conv2d(2 * w, 4 * w, 3, 2, 1),
            nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, bits),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


class FingerprintModulation(ModelMixin, ConfigMixin):
    """The trained parts of WOUAF: mapping network ``M``, one affine head ``A_l`` per modulated
    layer, and the fingerprint decoder ``E``. Saved and loaded with ``save_pretrained`` /
    ``from_pretrained`` (config.json + safetensors); the decoder itself stays the shipped one."""

    @register_to_config
    def __init__(self, bits: int = 16, style_dim: int = 64, layers: Sequence[str] = (),
                 in_features: Sequence[int] = (), decoder_width: int = 32,
                 init_std: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        if bits < 1 or style_dim < 1:
            raise ValueError(f"bits and style_dim must be positive, got {bits}, {style_dim}")
        if len(layers) != len(in_features) or not layers:
            raise ValueError("layers and in_features must be non-empty and of equal length")
        self.mapping = mlp([bits, style_dim, style_dim], "silu")
        self.affine = nn.ModuleDict()
        for name, n_in in zip(layers, in_features):
            head = nn.Linear(style_dim, int(n_in))
            nn.init.normal_(head.weight, std=init_std)
            nn.init.ones_(head.bias)  # s = 1 at w = 0, as the official bias_init=1
            self.affine[name.replace(".", "__")] = head
        self.fingerprint_decoder = FingerprintDecoder(bits, decoder_width)

    @classmethod
    def for_decoder(cls, decoder: nn.Module, bits: int = 16, style_dim: int = 64,
                    decoder_width: int = 32) -> FingerprintModulation:  # fmt: skip
        """Fresh parts sized for every modulated layer of ``decoder``."""
        names = modulated_layer_names(decoder)
        return cls(bits, style_dim, [n for n, _ in names], [c for _, c in names], decoder_width)

    def scales(self, bits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer input-channel scales ``s_l = A_l M(phi)`` (paper Eq. 2), ``(n, C_l)``."""
        bits = check_bits(bits, self.config.bits)
        w = self.mapping(2 * bits.float() - 1)  # bits as +-1 (the official code feeds 0/1)
        return {k.replace("__", "."): head(w) for k, head in self.affine.items()}

    def read_bits(self, images: torch.Tensor) -> torch.Tensor:
        """Bit logits ``E(x)``, ``(n, d)``."""
        return self.fingerprint_decoder(images)


def check_bits(bits: torch.Tensor, d: int) -> torch.Tensor:
    """``bits`` as a 2-D 0/1 tensor with ``d`` columns, else ValueError."""
    if bits.dim() != 2 or bits.shape[1] != d:
        raise ValueError(f"fingerprints must have shape (n, {d}), got {tuple(bits.shape)}")
    if not torch.all((bits == 0) | (bits == 1)):
        raise ValueError("fingerprints must be 0/1 bits")
    return bits


class _Modulated(nn.Module):
    """A conv or linear layer whose input channels are scaled by the current user's ``s_l``."""

    def __init__(self, base: nn.Module, name: str, slot: dict) -> None:
        super().__init__()
        self.base, self.name, self.slot = base, name, slot

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        scales = self.slot.get("scales")
        if scales is not None:
            s = scales[self.name]
            # (n, C) scales on the channel axis: dim 1 of conv maps, last dim of token sequences
            x = x * (s[:, :, None, None] if x.dim() == 4 else s[:, None, :])
        return self.base(x, *args, **kwargs)


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    *head, leaf = path.split(".")
    module = root
    for part in head:
        module = getattr(module, part)
    return module, leaf


class ModulatedDecoder(nn.Module):
    """A frozen copy of an ``AutoencoderKL`` whose decoder layers are modulated by fingerprints.

    ``decode(latents, bits)`` gives the images user ``bits`` would generate (``bits=None``: the
    unmodulated decoder). Only ``modulation`` has trainable parameters.
    """

    def __init__(self, vae: nn.Module, modulation: FingerprintModulation) -> None:
        super().__init__()
        self.vae = copy.deepcopy(vae).eval().requires_grad_(False)
        self.modulation = modulation
        self._slot: dict = {}
        names = dict(modulated_layer_names(self.vae.decoder))
        if list(names) != [k.replace("__", ".") for k in modulation.affine]:
            raise ValueError("the modulation's layers do not match this decoder's")
        for path in names:
            parent, leaf = _parent(self.vae.decoder, path)
            setattr(parent, leaf, _Modulated(getattr(parent, leaf), path, self._slot))

    def decode(self, latents: torch.Tensor, bits: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from scaled latents, decoded by the users ``bits`` (one row each)."""
        if bits is not None and bits.shape[0] != latents.shape[0]:
            raise ValueError(f"{bits.shape[0]} fingerprints for {latents.shape[0]} latents")
        self._slot["scales"] = None if bits is None else self.modulation.scales(bits)
        try:
            out = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        finally:
            self._slot["scales"] = None
        return ((out + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def bake(self, bits: torch.Tensor) -> nn.Module:
        """One user's model: a plain ``AutoencoderKL`` with ``W' = s W`` written into its weights
        (one forward pass of ``M``, no fine-tuning; paper Sec. 3.2)."""
        bits = check_bits(bits.reshape(1, -1), self.modulation.config.bits)
        scales = self.modulation.scales(bits)
        user = copy.deepcopy(self.vae)
        for path, s in scales.items():
            parent, leaf = _parent(user.decoder, path)
            base = getattr(parent, leaf).base
            shape = (1, -1, 1, 1) if base.weight.dim() == 4 else (1, -1)
            base.weight.mul_(s[0].reshape(shape))
            setattr(parent, leaf, base)
        return user


def random_fingerprints(n: int, bits: int, generator: torch.Generator | None = None,
                        distinct: bool = False) -> torch.Tensor:  # fmt: skip
    """``n`` fingerprints of i.i.d. fair bits, ``(n, bits)`` float 0/1 (distinct if asked)."""
    if n < 1 or bits < 1:
        raise ValueError(f"n and bits must be positive, got {n}, {bits}")
    if distinct and n > 2**bits:
        raise ValueError(f"only {2**bits} distinct {bits}-bit fingerprints exist, asked for {n}")
    out = torch.randint(0, 2, (n, bits), generator=generator).float()
    while distinct and torch.unique(out, dim=0).shape[0] < n:
        _, first = np.unique(out.numpy(), axis=0, return_index=True)
        keep = out[np.sort(first)]
        extra = torch.randint(0, 2, (n - keep.shape[0], bits), generator=generator).float()
        out = torch.cat([keep, extra])
    return out


def bit_accuracy(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-image fraction of bits read correctly (a bit is 1 where its logit is positive)."""
    if logits.shape != bits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and bits {tuple(bits.shape)} differ")
    return ((logits > 0).float() == bits).float().mean(dim=1)


def attribute(logits: torch.Tensor, registry: torch.Tensor) -> torch.Tensor:
    """Index of the registered fingerprint closest in Hamming distance to each read-out
    (ties go to the lowest index): WOUAF's attribution rule."""
    if logits.dim() != 2 or registry.dim() != 2 or logits.shape[1] != registry.shape[1]:
        raise ValueError(f"logits {tuple(logits.shape)} and registry {tuple(registry.shape)} "
                         "must be (n, d) and (users, d)")  # fmt: skip
    read = (logits > 0).float()
    agree = read @ registry.T + (1 - read) @ (1 - registry).T
    return agree.argmax(dim=1)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] against ``reference``."""
    if images.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(images.shape)} vs {tuple(reference.shape)}")
    mse = ((images - reference) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


def fingerprint_loss(logits: torch.Tensor, bits: torch.Tensor, images: torch.Tensor,
                     reference: torch.Tensor,
                     weight: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """WOUAF's objective (paper Eq. 4): bit cross-entropy ``BCE(E(T(D_phi(z))), phi)`` plus
    ``weight`` times the image-fidelity term, here mean squared error to the unmodulated
    decoder's output (the paper uses LPIPS, which needs downloaded backbones)."""
    if weight < 0:
        raise ValueError(f"weight must be non-negative, got {weight}")
    bce = F.binary_cross_entropy_with_logits(logits, bits)
    mse = F.mse_loss(images, reference)
    return bce + weight * mse, {"bce": bce.item(), "mse": mse.item()}
