"""The testbed's texture model: a text-conditioned UNet on colour + height maps (chapter 21).

StableMaterials generates several material maps at once with a latent diffusion model. The
miniature's material has two maps on 32x32 pixels, a colour map (3 channels) and a height map
(1), so four channels in [-1, 1]. The testbed autoencoder reconstructs textures poorly (its
latent was fitted to shapes on backgrounds), so the texture model uses a lossless "latent": a
**pixel unshuffle** by 2, which rearranges each 2x2 block of the four maps into 16 channels of a
16x16 grid (:func:`to_grid`; :func:`from_grid` is its exact inverse). Rolling that grid by one
cell is rolling the maps by two pixels, so tileability carries over unchanged.

* :class:`TextureDenoiser` -- a diffusers ``UNet2DConditionModel`` (16x16x16 input; channels
  32, 64, 64, 16 -> 8 -> 4; cross-attention at the 4x4 level only) and its caption encoder, a
  word embedding plus a learned position embedding per word of "a <colour> <family> texture"
  (:data:`~lib.diffusion.testbed.textures.TEXTURE_VOCABULARY`; the empty caption, for
  classifier-free guidance, is four padding tokens).
* :func:`texture_scheduler` -- **x0 prediction** (``prediction_type="sample"``) on DDPM's
  *linear* schedule (betas 1e-4 to 0.02; Ho et al. 2020 chose it for 32x32 pixels). Not SD
  1.x's schedule: it keeps ``sqrt(abar_T) = 0.068`` of the signal at the last step, and in
  pixel space the mean of that noisy image (noise ``1/32`` over 1,024 pixels) still reveals
  the tint, so a model trained on it reads a random tint off pure noise at sampling (chapter
  26's flaw, in colour); the linear schedule keeps ``sqrt(abar_T) = 0.0064``. Not epsilon
  prediction: at that low terminal SNR an epsilon error is amplified ~``1 / sqrt(abar_t)``
  (up to 150x) in the implied clean image, and a small UNet trained for minutes on a CPU is
  far from precise enough; predicting the clean maps directly trains in a few thousand steps.
* :func:`texture_lcm_scheduler` -- diffusers' ``LCMScheduler`` on that schedule, for the
  consistency-distilled model (stage ``texture_lcm``).
* :func:`texture_classifier` -- the testbed's :class:`CaptionClassifier` with a family head (8
  classes) and a colour head, which judges colour maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from lib.diffusion.feature_rolling import sample_tileable
from lib.diffusion.testbed.data import COLOURS, IMAGE_SIZE
from lib.diffusion.testbed.evaluators import CaptionClassifier
from lib.diffusion.testbed.textures import FAMILIES, TEXTURE_VOCABULARY, Textures

MAP_CHANNELS = 4
"""Colour (3) + height (1)."""
UNSHUFFLE = 2
GRID_SIZE = IMAGE_SIZE // UNSHUFFLE
GRID_CHANNELS = MAP_CHANNELS * UNSHUFFLE**2
PREDICTION = "sample"
"""The texture model predicts the clean grid (diffusers' ``prediction_type="sample"``)."""
CAPTION_WORDS = 4
"""Every texture caption has four words: "a <colour> <family> texture"."""


def texture_maps(textures: Textures) -> np.ndarray:
    """Colour and height maps stacked, ``(n, 4, 32, 32)`` in [0, 1]."""
    return np.concatenate([textures.images, textures.heights], axis=1)


def to_grid(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(n, 4, 32, 32)`` in [0, 1] to the model's grid ``(n, 16, 16, 16)`` in [-1, 1]
    (affine rescale, then ``pixel_unshuffle`` by 2)."""
    if maps.ndim != 4 or maps.shape[1:] != (MAP_CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"maps must be (n, {MAP_CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                         f"got {tuple(maps.shape)}")  # fmt: skip
    return F.pixel_unshuffle(2 * maps - 1, UNSHUFFLE)


def from_grid(grid: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_grid`, clamped to [0, 1]: ``(n, 4, 32, 32)`` maps."""
    if grid.ndim != 4 or grid.shape[1:] != (GRID_CHANNELS, GRID_SIZE, GRID_SIZE):
        raise ValueError(f"grid must be (n, {GRID_CHANNELS}, {GRID_SIZE}, {GRID_SIZE}), "
                         f"got {tuple(grid.shape)}")  # fmt: skip
    return ((F.pixel_shuffle(grid, UNSHUFFLE) + 1) / 2).clamp(0, 1)


def texture_unet_config(width: int = 32) -> dict:
    """The denoiser's ``UNet2DConditionModel`` arguments (three levels, attention at 4x4)."""
    return dict(sample_size=GRID_SIZE, in_channels=GRID_CHANNELS, out_channels=GRID_CHANNELS,
                down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                block_out_channels=(width, 2 * width, 2 * width), layers_per_block=1,
                cross_attention_dim=width, attention_head_dim=8, norm_num_groups=8)  # fmt: skip


class TextureDenoiser(ModelMixin, ConfigMixin):
    """Caption encoder + ``UNet2DConditionModel`` on the texture grid (see the module doc).

    ``self.unet`` is an ordinary diffusers UNet: samplers, LCM distillation and the feature
    rolling hooks of :mod:`lib.diffusion.feature_rolling` take it directly, with the states of
    :meth:`encode` as ``encoder_hidden_states``.
    """

    @register_to_config
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"width must be a positive multiple of 8, got {width}")
        self.words = nn.Embedding(len(TEXTURE_VOCABULARY) + 1, width)  # id 0: padding
        self.positions = nn.Parameter(torch.zeros(CAPTION_WORDS, width))
        self.unet = UNet2DConditionModel(**texture_unet_config(width))

    @staticmethod
    def ids(captions: Sequence[str]) -> torch.Tensor:
        """Word ids ``(n, 4)``; the empty caption is all padding. ValueError for any other
        caption that is not "a <colour> <family> texture"."""
        out = torch.zeros(len(captions), CAPTION_WORDS, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = caption.split()
            if not words:
                continue
            if (len(words) != CAPTION_WORDS or words[0] != "a" or words[-1] != "texture"
                    or words[1] not in COLOURS or words[2] not in FAMILIES):
                raise ValueError(f"{caption!r} is not 'a <colour> <family> texture' with a "
                                 f"colour of {COLOURS} and a family of {FAMILIES}")  # fmt: skip
            out[i] = torch.tensor([TEXTURE_VOCABULARY.index(w) + 1 for w in words])
        return out

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Caption states ``(n, 4, width)``: word embedding + position embedding."""
        return self.words(self.ids(captions).to(self.positions.device)) + self.positions

    def forward(self, grid: torch.Tensor, t: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """Predicted clean grids for noisy grids ``(n, 16, 16, 16)`` at timesteps ``t``."""
        return self.unet(grid, t, encoder_hidden_states=self.encode(captions)).sample


def texture_scheduler(kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """DDPM's linear schedule (1,000 steps, betas 1e-4..0.02) with x0 prediction, as a
    ``DDPMScheduler`` (training) or ``DDIMScheduler`` (sampling)."""
    config = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type=PREDICTION, clip_sample=False)  # fmt: skip
    if kind == "ddpm":
        return DDPMScheduler(**config)
    if kind == "ddim":
        return DDIMScheduler(**config, set_alpha_to_one=False, steps_offset=1)
    raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")


def texture_lcm_scheduler(grid: int = 10) -> LCMScheduler:
    """``LCMScheduler`` on :func:`texture_scheduler`'s schedule with the distillation grid of
    ``grid`` DDIM steps."""
    return LCMScheduler.from_config(texture_scheduler("ddim").config,
                                    original_inference_steps=grid)  # fmt: skip


def texture_classifier() -> CaptionClassifier:
    """A fresh judge of colour maps: family (8 classes) and colour (6) heads."""
    return CaptionClassifier(heads={"family": len(FAMILIES), "colour": len(COLOURS)})


def sample_maps(model: TextureDenoiser, captions: Sequence[str], *, mode: str = "plain",
                steps: int = 4, scheduler: object | None = None, guidance: float = 1.0,
                circular: bool = True, seed: int = 0) -> torch.Tensor:  # fmt: skip
    """Texture maps ``(n, 4, 32, 32)`` in [0, 1] for ``captions``, sampled with
    :func:`lib.diffusion.feature_rolling.sample_tileable` in ``mode`` (``"plain"``,
    ``"noise"`` or ``"feature"``). ``scheduler`` defaults to :func:`texture_lcm_scheduler`
    (for the distilled model, ``guidance = 1``); pass ``texture_scheduler("ddim")`` and
    ``guidance > 1`` for the teacher. Seeded."""
    with torch.no_grad():
        states = model.encode(list(captions))
        empty = model.encode([""]) if guidance > 1.0 else None
    grid = sample_tileable(model.unet, texture_lcm_scheduler() if scheduler is None else scheduler,
                           states, mode=mode, steps=steps, empty_states=empty, guidance=guidance,
                           circular=circular, generator=torch.Generator().manual_seed(seed))
    return from_grid(grid)
