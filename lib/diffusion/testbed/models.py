"""The MiniSD components: tiny configs of Stable Diffusion's own classes, and a small DiT.

* text encoder: ``transformers.CLIPTextModel`` (64 wide, 2 layers; :func:`text_encoder_config`),
* latent autoencoder: ``diffusers.AutoencoderKL``, 32x32x3 images to 8x8x4 latents
  (:func:`autoencoder`),
* UNet denoiser: ``diffusers.UNet2DConditionModel`` with cross-attention at both levels,
  epsilon prediction on SD 1.x's ``scaled_linear`` schedule (:func:`unet`, :func:`unet_scheduler`),
* DiT denoiser: :class:`MiniDiT`, our own ~150 lines in the style of DiT/PixArt/SD3 (adaLN
  timestep modulation, self-attention, cross-attention to the text tokens, MLP), trained with
  rectified flow (velocity prediction, as SD3; :func:`dit_scheduler`). It is written here rather
  than taken from diffusers because region-adaptive sampling needs a forward pass over a
  *subset* of the image tokens whose self-attention still sees cached keys and values of the
  rest: :meth:`MiniDiT.forward` takes ``active`` and ``kv_cache`` for that.

``MiniDiT`` is a ``diffusers`` ``ModelMixin``/``ConfigMixin``, so it saves and loads with
``save_pretrained``/``from_pretrained`` (config.json + safetensors) like the library's models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from lib.diffusion.testbed.data import IMAGE_SIZE, clip_text_config

TEXT_WIDTH = 64
LATENT_CHANNELS = 4
LATENT_SIZE = 8


def text_encoder_config() -> CLIPTextConfig:
    """The testbed's ``CLIPTextConfig``: 64 wide, 2 layers, 2 heads, 16 positions."""
    return clip_text_config(hidden_size=TEXT_WIDTH, num_layers=2, num_heads=2)


def text_encoder() -> CLIPTextModel:
    """A freshly initialised testbed text encoder (Stable Diffusion conditions on its
    ``last_hidden_state``, one 64-vector per token)."""
    return CLIPTextModel(text_encoder_config())


def autoencoder() -> AutoencoderKL:
    """A fresh ``AutoencoderKL``: three levels (32, 64, 64 channels), 32x32x3 -> 8x8x4.

    Downsampling by 4 at 32x32 plays the role of SD's factor 8 at 512x512: the latent grid is
    small enough that the denoiser is cheap, large enough to keep shape and position.
    """
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def unet() -> UNet2DConditionModel:
    """A fresh ``UNet2DConditionModel`` on 8x8x4 latents with cross-attention at both levels
    (channels 32, 64; cross-attention dimension = text width 64; 8-dimensional heads)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def unet_scheduler(kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """SD 1.x's noise schedule (``scaled_linear``, betas 0.00085..0.012, 1000 steps, epsilon
    prediction) as a ``DDPMScheduler`` (training) or ``DDIMScheduler`` (sampling)."""
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", prediction_type="epsilon",
                  clip_sample=False)  # fmt: skip
    if kind == "ddpm":
        return DDPMScheduler(**config)
    if kind == "ddim":
        return DDIMScheduler(**config, set_alpha_to_one=False, steps_offset=1)
    raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")


def dit_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The rectified-flow Euler sampler of SD3 (``shift`` 1: the 8x8 grid needs no resolution
    shift). Timesteps are ``1000 * sigma``; :class:`MiniDiT` takes ``sigma`` itself."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


# ---------------------------------------------------------------------------------------------
# MiniDiT


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` (any real values, shape (B,)), as in DDPM/DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(grid*grid, dim)`` (half for rows, half for
    columns), row-major token order."""
    if dim % 4:
        raise ValueError(f"width must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    coords = torch.arange(grid, dtype=torch.float32)
    rows = timestep_embedding(coords, dim // 2, max_period=100.0)
    cols = timestep_embedding(coords, dim // 2, max_period=100.0)
    return torch.cat([rows[:, None].expand(grid, grid, -1), cols[None].expand(grid, grid, -1)],
                     dim=-1).reshape(grid * grid, dim)  # fmt: skip


@dataclass
class KVCache:
    """Self-attention keys and values of every image token, one ``(B, heads, N, head_dim)`` pair
    per block. Filled by a dense pass (``MiniDiT(..., kv_cache=cache)``); a token-subset pass
    overwrites the active tokens' entries and attends to the whole (region-adaptive sampling)."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]

    @classmethod
    def empty(cls, depth: int) -> KVCache:
        return cls([None] * depth, [None] * depth)

    @property
    def filled(self) -> bool:
        return all(k is not None for k in self.keys)


class DiTBlock(nn.Module):
    """One block: adaLN-modulated self-attention, cross-attention to text, adaLN-modulated MLP.

    Modulation follows PixArt-alpha's adaLN-single: one shared projection of the timestep gives
    six vectors (shift, scale, gate for attention and MLP), and each block adds its own learned
    table to them.
    """

    def __init__(self, width: int, heads: int, text_width: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm_cross = nn.LayerNorm(width, eps=1e-6)
        self.cross_q = nn.Linear(width, width)
        self.cross_k = nn.Linear(text_width, width)
        self.cross_v = nn.Linear(text_width, width)
        self.cross_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))  # fmt: skip
        self.modulation_table = nn.Parameter(torch.randn(6, width) / width**0.5)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, dh = x.shape
        return x.transpose(1, 2).reshape(b, n, h * dh)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        text: torch.Tensor,
        active: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (
            modulation.view(-1, 6, x.shape[-1]) + self.modulation_table
        ).unbind(1)
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        q, k, v = (self._split(t) for t in self.qkv(h).chunk(3, dim=-1))
        if cache is not None:
            if active is None:  # dense pass: record every token's keys and values
                cache.keys[layer], cache.values[layer] = k, v
            else:  # subset pass: refresh the active tokens, attend to all (cached for the rest)
                if cache.keys[layer] is None:
                    raise ValueError("kv_cache is empty: run a dense pass with it first")
                index = active[:, None, :, None].expand(-1, self.heads, -1, k.shape[-1])
                k = cache.keys[layer] = cache.keys[layer].scatter(2, index, k)
                v = cache.values[layer] = cache.values[layer].scatter(2, index, v)
        x = x + gate1[:, None] * self.proj(self._merge(F.scaled_dot_product_attention(q, k, v)))
        h = self.norm_cross(x)
        attn = F.scaled_dot_product_attention(
            self._split(self.cross_q(h)), self._split(self.cross_k(text)),
            self._split(self.cross_v(text)))  # fmt: skip
        x = x + self.cross_out(self._merge(attn))
        h = self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.mlp(h)


class MiniDiT(ModelMixin, ConfigMixin):
    """A small diffusion transformer on 8x8x4 latents with cross-attention to text tokens.

    ``forward(latents, sigma, encoder_hidden_states)`` predicts the rectified-flow velocity
    ``noise - x0`` for ``x_sigma = (1 - sigma) x0 + sigma noise`` (SD3's convention), shape
    ``(B, 4, 8, 8)``. Patch size 1: every latent pixel is a token, so 64 tokens.

    Token subsets (region-adaptive sampling): with ``active`` (int64 token indices, row-major
    over the 8x8 grid; shape ``(n,)`` for one set shared by the batch, or ``(B, n)`` for one
    set per sample) only those tokens go through the network and the output is ``(B, n, 4)``,
    the velocity of those tokens. Every part of a block is
    token-wise except self-attention; there, with a :class:`KVCache` filled by an earlier
    dense pass, the active tokens attend to all tokens (fresh keys/values for themselves,
    cached ones for the rest); without a cache they attend to each other only.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = LATENT_CHANNELS,
        sample_size: int = LATENT_SIZE,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        text_width: int = TEXT_WIDTH,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.tokens = sample_size * sample_size
        self.patch_in = nn.Linear(in_channels, width)
        self.register_buffer("positions", sincos_positions(sample_size, width), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.text_norm = nn.LayerNorm(text_width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, text_width, mlp_ratio)
                                    for _ in range(depth))  # fmt: skip
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Parameter(torch.randn(2, width) / width**0.5)
        self.patch_out = nn.Linear(width, in_channels)
        # adaLN-zero: every residual branch and the output start at zero.
        nn.init.zeros_(self.time_modulation[-1].weight)
        nn.init.zeros_(self.time_modulation[-1].bias)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)

    def tokens_of(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H*W, C)`` in row-major token order."""
        return latents.flatten(2).transpose(1, 2)

    def latents_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`tokens_of`."""
        b, n, c = tokens.shape
        side = int(math.isqrt(n))
        return tokens.transpose(1, 2).reshape(b, c, side, side)

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        active: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        b = latents.shape[0]
        if latents.ndim != 4 or latents.shape[2] * latents.shape[3] != self.tokens:
            raise ValueError(f"latents must be (B, C, H, W) with H*W = {self.tokens}, "
                             f"got {tuple(latents.shape)}")  # fmt: skip
        sigma = torch.as_tensor(sigma, dtype=latents.dtype).reshape(-1).expand(b)
        x = self.patch_in(self.tokens_of(latents)) + self.positions
        if active is not None:
            active = torch.as_tensor(active, dtype=torch.long)
            if active.ndim == 1:
                active = active.expand(b, -1)
            if active.ndim != 2 or active.shape[0] != b or active.shape[1] == 0:
                raise ValueError(f"active must be a non-empty (n,) or (B={b}, n) tensor of token "
                                 f"indices, got shape {tuple(active.shape)}")  # fmt: skip
            if int(active.min()) < 0 or int(active.max()) >= self.tokens:
                raise ValueError(f"active token indices must lie in [0, {self.tokens})")
            x = torch.gather(x, 1, active[..., None].expand(-1, -1, x.shape[-1]))
        if kv_cache is not None and len(kv_cache.keys) != len(self.blocks):
            raise ValueError(f"kv_cache has {len(kv_cache.keys)} layers, model {len(self.blocks)}")
        t = self.time_mlp(timestep_embedding(1000.0 * sigma, 256))
        modulation = self.time_modulation(t)
        text = self.text_norm(encoder_hidden_states)
        for layer, block in enumerate(self.blocks):
            x = block(x, modulation, text, active, kv_cache, layer)
        shift, scale = (self.out_modulation[None] + t[:, None]).unbind(1)
        x = self.patch_out(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
        return x if active is not None else self.latents_of(x)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
