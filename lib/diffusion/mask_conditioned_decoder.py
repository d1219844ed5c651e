"""A latent decoder with a mask-conditioned branch: the asymmetric VQGAN's decoder.

Zhu et al. (2023), *Designing a Better Asymmetric VQGAN for StableDiffusion*, keep Stable
Diffusion's encoder (and so its latent space) and replace only the decoder. The new decoder has
two branches:

* the **main branch**, an ordinary latent decoder (here the real ``diffusers`` ``Decoder`` of
  the autoencoder it replaces: ``conv_in``, ``mid_block``, ``up_blocks``, ``conv_out``);
* a **conditional branch**, a small convolutional encoder of the masked image
  ``x * (1 - m)`` that produces one feature map per decoder resolution (Section 3.1,
  "task-specific prior"). Before every up block, and once more before the output head, a
  mask-guided blend keeps the main branch's features where the image is unknown and takes the
  conditional branch's features where it is known (Section 3.1, Eq. 1 of the paper, written out
  in :func:`mask_blend`):

      h <- h * m_s + c_s * (1 - m_s),       m_s = nearest-neighbour resize of m to h's grid.

``m = 1`` marks pixels to generate (the inpainting hole), ``m = 0`` known pixels, as in
diffusers' inpainting pipelines. With the full mask ``m = 1`` the conditional branch is switched
off and the decoder is its main branch alone (text-to-image mode).

The parameter names follow diffusers' ``AsymmetricAutoencoderKL`` (its ``MaskConditionDecoder``
and ``MaskConditionEncoder``, a port of the official code), so :func:`to_diffusers` moves the
weights into that class unchanged; the forward pass here is written independently of it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _check_mask(mask: torch.Tensor, image: torch.Tensor) -> None:
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (n, 1, H, W), got {tuple(mask.shape)}")
    if image.dim() != 4 or mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)}")


def mask_blend(h: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-guided blending (the paper's Eq. 1): ``h * m_s + cond * (1 - m_s)``.

    ``h`` and ``cond`` are ``(n, C, h, w)`` feature maps of the main and conditional branches;
    ``mask`` is ``(n, 1, H, W)`` with 1 = unknown, resized to ``(h, w)`` by nearest neighbour.
    """
    if h.shape != cond.shape:
        raise ValueError(f"main-branch features {tuple(h.shape)} and conditional features "
                         f"{tuple(cond.shape)} differ")  # fmt: skip
    m = F.interpolate(mask.to(h.dtype), size=h.shape[-2:], mode="nearest")
    return h * m + cond * (1 - m)


def feature_plan(block_out_channels: Sequence[int], out_channels: int = 3) -> list[tuple[int, int]]:
    """(channels, downsampling factor) of every feature map the blends need, finest first.

    ``block_out_channels`` lists the decoder's levels finest first (as in diffusers). A blend
    sits before each up block (coarsest first; every block but the last doubles the
    resolution) and before the output head, which sees ``block_out_channels[0]`` channels at
    full resolution. For the testbed's ``(32, 64, 64)``: ``[(32, 1), (64, 1), (64, 2), (64, 4)]``.
    """
    if len(block_out_channels) < 1 or min(block_out_channels) < 1 or out_channels < 1:
        raise ValueError(f"need positive channels, got {list(block_out_channels)}, {out_channels}")
    rev = list(reversed(block_out_channels))
    plan, size, prev = [], 2 ** (len(rev) - 1), rev[0]
    for i, ch in enumerate(rev):  # the input of up block i has prev channels at 1/size
        plan.append((prev, size))
        prev = ch
        if i < len(rev) - 1:
            size //= 2
    plan.append((block_out_channels[0], 1))  # the output head's input
    return list(reversed(plan))


class MaskConditionEncoder(nn.Module):
    """The conditional branch: ``conv3x3`` at full resolution for the first two feature maps,
    then a ``conv4x4`` stride-2 per halving, ReLU between layers, each layer's output kept.

    Same layer layout as diffusers' ``MaskConditionEncoder`` (``layers.0``, ``layers.1``, ...),
    built from the decoder's :func:`feature_plan` instead of its fixed stride rule.
    """

    def __init__(self, in_channels: int, plan: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        layers, ch, size = [], in_channels, 1
        for out_ch, factor in plan:
            if factor == size:
                layers.append(nn.Conv2d(ch, out_ch, kernel_size=3, stride=1, padding=1))
            elif factor == 2 * size:
                layers.append(nn.Conv2d(ch, out_ch, kernel_size=4, stride=2, padding=1))
            else:
                raise ValueError(f"feature plan must halve resolution one step at a time: {plan}")
            ch, size = out_ch, factor
        self.layers = nn.ModuleList(layers)

    def forward(self, masked_image: torch.Tensor) -> dict[tuple[int, int, int], torch.Tensor]:
        """Feature maps keyed by ``(channels, height, width)``."""
        out = {}
        x = masked_image
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else torch.relu(x))
            out[tuple(x.shape[1:])] = x
        return out


class AsymmetricDecoder(ModelMixin, ConfigMixin):
    """Latent decoder with a mask-conditioned branch (Zhu et al., 2023, Section 3.1).

    ``decode(z, image=x, mask=m)`` decodes (unscaled) latents ``z`` with the known pixels
    ``x * (1 - m)`` of ``x`` (in [-1, 1]) as the task prior; without ``image``/``mask`` (or with
    ``m = 1`` everywhere) it is an ordinary decoder. Built from an ``AutoencoderKL`` with
    :meth:`from_autoencoder`; saves and loads with ``save_pretrained``/``from_pretrained``.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 3,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        act_fn: str = "silu",
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if len(up_block_types) != len(block_out_channels):
            raise ValueError("up_block_types and block_out_channels need one entry per level")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"channels {list(block_out_channels)} must be divisible by "
                             f"norm_num_groups={norm_num_groups}")  # fmt: skip
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                               up_block_types=up_block_types,
                               block_out_channels=block_out_channels,
                               layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                               act_fn=act_fn)  # fmt: skip
        plan = feature_plan(block_out_channels, out_channels)
        self.condition_encoder = MaskConditionEncoder(out_channels, plan)

    @classmethod
    def from_autoencoder(cls, vae: AutoencoderKL, width_mult: float = 1.0) -> AsymmetricDecoder:
        """The decoder of ``vae`` plus a fresh conditional branch.

        ``width_mult == 1`` copies ``vae``'s ``post_quant_conv`` and decoder weights (the
        starting point of fine-tuning); any other width builds a freshly initialised decoder
        with every level's channels multiplied (the paper's heavier 1.5x/2x decoders; rounded
        to the group-norm group count).
        """
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        cfg = vae.config
        groups = cfg.norm_num_groups
        channels = tuple(int(round(c * width_mult / groups)) * groups or groups
                         for c in cfg.block_out_channels)  # fmt: skip
        model = cls(latent_channels=cfg.latent_channels, out_channels=cfg.out_channels,
                    up_block_types=tuple(cfg.up_block_types), block_out_channels=channels,
                    layers_per_block=cfg.layers_per_block, norm_num_groups=groups,
                    act_fn=cfg.act_fn, scaling_factor=cfg.scaling_factor)  # fmt: skip
        if width_mult == 1.0:
            model.decoder.load_state_dict(copy.deepcopy(vae.decoder.state_dict()))
            model.post_quant_conv.load_state_dict(vae.post_quant_conv.state_dict())
        return model

    def forward(self, z: torch.Tensor, image: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Decoded images in [-1, 1] from unscaled latents; ``image`` in [-1, 1], ``mask``
        ``(n, 1, H, W)`` with 1 = unknown."""
        if (image is None) != (mask is None):
            raise ValueError("give both image and mask, or neither")
        dec = self.decoder
        h = dec.conv_in(self.post_quant_conv(z))
        h = dec.mid_block(h, None)
        feats = None
        if image is not None:
            _check_mask(mask, image)
            feats = self.condition_encoder((1 - mask) * image)
        for block in dec.up_blocks:
            if feats is not None:
                h = mask_blend(h, feats[tuple(h.shape[1:])], mask)
            h = block(h, None)
        if feats is not None:
            h = mask_blend(h, feats[tuple(h.shape[1:])], mask)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None,
               image: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:  # fmt: skip
        """Same signature as ``AsymmetricAutoencoderKL.decode`` (``generator`` unused)."""
        out = self.forward(z, image, mask)
        return DecoderOutput(sample=out) if return_dict else (out,)


def to_diffusers(vae: AutoencoderKL, decoder: AsymmetricDecoder) -> AsymmetricAutoencoderKL:
    """diffusers' ``AsymmetricAutoencoderKL`` with ``vae``'s encoder and ``decoder``'s weights.

    diffusers builds its conditional encoder from a fixed stride rule that can make one more
    (unused) layer than :func:`feature_plan` needs; that layer keeps its initial weights.
    Raises ValueError if any other weight has no home.
    """
    cfg, dcfg = vae.config, decoder.config
    model = AsymmetricAutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple(cfg.down_block_types),
        down_block_out_channels=tuple(cfg.block_out_channels),
        layers_per_down_block=cfg.layers_per_block, up_block_types=tuple(dcfg.up_block_types),
        up_block_out_channels=tuple(dcfg.block_out_channels),
        layers_per_up_block=dcfg.layers_per_block, act_fn=cfg.act_fn,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size, scaling_factor=cfg.scaling_factor)  # fmt: skip
    state = {f"encoder.{k}": v for k, v in vae.encoder.state_dict().items()}
    state |= {f"quant_conv.{k}": v for k, v in vae.quant_conv.state_dict().items()}
    state |= {f"post_quant_conv.{k}": v for k, v in decoder.post_quant_conv.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in decoder.decoder.state_dict().items()}
    state |= {f"decoder.condition_encoder.{k}": v
              for k, v in decoder.condition_encoder.state_dict().items()}  # fmt: skip
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.startswith("decoder.condition_encoder.layers.")]
    if unexpected or stray:
        raise ValueError(f"weights do not fit AsymmetricAutoencoderKL: missing {stray}, "
                         f"unexpected {unexpected}")  # fmt: skip
    return model.eval()


@torch.no_grad()
def decode_masked(decoder: torch.nn.Module, latents: torch.Tensor, images: torch.Tensor | None,
                  masks: torch.Tensor | None, batch: int = 256) -> torch.Tensor:  # fmt: skip
    """Images in [0, 1] from scaled latents through a mask-conditioned decoder.

    ``decoder`` is an :class:`AsymmetricDecoder` or diffusers' ``AsymmetricAutoencoderKL``
    (same ``decode(z, image=, mask=)``); ``images`` in [0, 1] are the known pixels (only
    ``images * (1 - masks)`` is used); ``images = masks = None`` decodes without a prior.
    """
    if (images is None) != (masks is None):
        raise ValueError("give both images and masks, or neither")
    if images is not None:
        if images.shape[0] != latents.shape[0]:
            raise ValueError(f"{images.shape[0]} images for {latents.shape[0]} latents")
        if images.min() < -1e-6 or images.max() > 1 + 1e-6:
            raise ValueError("images must lie in [0, 1]")
        _check_mask(masks, images)
    scale = decoder.config.scaling_factor
    parts = []
    for i in range(0, latents.shape[0], batch):
        z = latents[i : i + batch] / scale
        if images is None:
            out = decoder.decode(z).sample
        else:
            out = decoder.decode(z, image=2 * images[i : i + batch] - 1,
                                 mask=masks[i : i + batch]).sample  # fmt: skip
        parts.append(out)
    return ((torch.cat(parts) + 1) / 2).clamp(0, 1)


def paste_back(decoded: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Naive compositing: the decoded image inside the hole, the original pixels outside."""
    if decoded.shape != images.shape:
        raise ValueError(f"decoded {tuple(decoded.shape)} and images {tuple(images.shape)} differ")
    _check_mask(masks, images)
    return decoded * masks + images * (1 - masks)
