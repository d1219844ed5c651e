"""One loader for the testbed's shipped weights and for a real Stable Diffusion folder.

``load("mini")`` checks every shipped file against ``weights/manifest.json`` (SHA-256) and
returns a :class:`TextToImage`: tokenizer, text encoder, autoencoder, denoiser and scheduler,
plus the few facts a sampling loop needs (latent shape, prediction type). ``load("sd",
path=...)`` returns the same fields from a Stable Diffusion 1.x/2.x folder on disk (the
layout ``StableDiffusionPipeline.save_pretrained`` writes), read with ``local_files_only``, so
chapter code written against the miniature runs unchanged at paper scale on a GPU.

Only JSON and safetensors are read: loading cannot execute code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from lib.diffusion import sampling
from lib.diffusion.fingerprinting import FingerprintModulation
from lib.diffusion.lora_adapters import LoraAdapter
from lib.diffusion.mask_conditioned_decoder import AsymmetricDecoder
from lib.diffusion.testbed import models
from lib.diffusion.testbed.data import MiniTokenizer
from lib.diffusion.testbed.evaluators import CaptionClassifier
from lib.diffusion.testbed.texture_model import TextureDenoiser
from lib.util.shipped_weights import sha256_file, verify_file

WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
FOLDERS = {"tokenizer": "tokenizer", "text_encoder": "text_encoder", "vae": "vae",
           "unet": "unet", "dit": "transformer", "scheduler": "scheduler",
           "flow_scheduler": "flow_scheduler",
           "asym_decoder": "asymmetric_decoder", "fingerprint": "fingerprint",
           "fingerprint_plain": "fingerprint_plain", "flawed_unet": "flawed_unet",
           "oms": "oms", "flawed_style_lora": "flawed_style_lora",
           "style_lora": "style_lora", "lcm_lora": "lcm_lora",
           "texture_classifier": "texture_classifier", "texture_unet": "texture_unet",
           "texture_lcm": "texture_lcm"}  # fmt: skip
"""Sub-folder of each part, named as in a diffusers hub repository (SD3 calls its DiT
``transformer``)."""
LORA_PARTS = ("style_lora", "lcm_lora", "flawed_style_lora")
"""Parts that are peft LoRA adapters (:class:`~lib.diffusion.lora_adapters.LoraAdapter`, float16
safetensors); attach one to a UNet with ``adapter.attach(unet, name)``."""


def _record(folder: Path, part: str, manifest: dict) -> None:
    base = folder / FOLDERS[part]
    for f in sorted(base.iterdir()):
        if f.is_file():
            manifest["sha256"][f"{FOLDERS[part]}/{f.name}"] = sha256_file(f)


def write_static_parts(folder: Path, manifest: dict) -> None:
    """Save the tokenizer and both schedulers' configs (nothing to train) and hash them."""
    MiniTokenizer().save_pretrained(folder / FOLDERS["tokenizer"])
    models.unet_scheduler("ddim").save_config(folder / FOLDERS["scheduler"])
    models.dit_scheduler().save_config(folder / FOLDERS["flow_scheduler"])
    for part in ("tokenizer", "scheduler", "flow_scheduler"):
        _record(folder, part, manifest)


def save_component(folder: Path, part: str, model: torch.nn.Module, manifest: dict) -> None:
    """``save_pretrained`` (safetensors) into the part's sub-folder and record the hashes."""
    if isinstance(model, CaptionClassifier):  # its own save_pretrained (JSON + safetensors)
        model.save_pretrained(folder / FOLDERS[part])
    else:
        model.save_pretrained(folder / FOLDERS[part], safe_serialization=True)
    _record(folder, part, manifest)


def verify(folder: Path, manifest: dict, parts: Sequence[str]) -> None:
    """Raise ValueError unless every file of ``parts`` matches its recorded SHA-256."""
    for part in parts:
        prefix = FOLDERS[part] + "/"
        files = {k: v for k, v in manifest["sha256"].items() if k.startswith(prefix)}
        if not files:
            raise ValueError(f"{folder / MANIFEST} records no files for {part!r}; train it with "
                             "`make testbed`")  # fmt: skip
        for name, expected in files.items():
            verify_file(folder / name, expected)


def load_component(folder: Path, part: str, manifest: dict | None = None) -> Any:
    """One verified part of the testbed, in eval mode with gradients off."""
    if manifest is None:
        manifest = read_manifest(folder)
    verify(folder, manifest, [part])
    path = folder / FOLDERS[part]
    if part == "tokenizer":
        return MiniTokenizer.from_pretrained(path)
    if part == "scheduler":
        return DDIMScheduler.from_pretrained(path)
    if part == "flow_scheduler":
        return FlowMatchEulerDiscreteScheduler.from_pretrained(path)
    if part == "texture_classifier":
        return CaptionClassifier.from_pretrained(path).requires_grad_(False)
    cls = {"text_encoder": CLIPTextModel, "vae": AutoencoderKL, "unet": UNet2DConditionModel,
           "flawed_unet": UNet2DConditionModel, "oms": UNet2DConditionModel,
           "dit": models.MiniDiT, "asym_decoder": AsymmetricDecoder,
           "fingerprint": FingerprintModulation, "fingerprint_plain": FingerprintModulation,
           "texture_unet": TextureDenoiser, "texture_lcm": TextureDenoiser,
           **{p: LoraAdapter for p in LORA_PARTS}}[part]
    extra = ({"torch_dtype": torch.float32}
             if part in ("asym_decoder", "flawed_unet", "texture_unet", "texture_lcm")
             else {})  # these ship in float16  # fmt: skip
    model = cls.from_pretrained(path, use_safetensors=True, **extra)
    return model.eval().requires_grad_(False)


def read_manifest(folder: Path = WEIGHTS) -> dict:
    """The manifest (hashes and training record) of a weights folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: the testbed is not trained (run `make testbed`)")
    return json.loads(path.read_text())


@dataclass
class TextToImage:
    """The parts of a latent text-to-image model and one sampling entry point.

    ``denoiser`` is a ``UNet2DConditionModel`` (``prediction == "epsilon"``) or a
    :class:`~lib.diffusion.testbed.models.MiniDiT` (``prediction == "flow"``).
    """

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: AutoencoderKL
    denoiser: torch.nn.Module
    scheduler: Any
    prediction: str
    latent_shape: tuple[int, int, int]
    kind: str

    def encode_prompts(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Per-token text states the denoiser cross-attends to."""
        return sampling.encode_prompts(self.tokenizer, self.text_encoder, prompts)

    def sample_latents(self, prompts: str | Sequence[str], *, steps: int = 20,
                       guidance: float = 3.0, seed: int = 0,
                       text_states: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Guided samples (one per prompt) as scaled latents; seeded noise.

        ``text_states`` overrides the encoded prompts (e.g. edited embeddings); its rows must
        match ``prompts``.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states = self.encode_prompts(prompts) if text_states is None else text_states
        if states.shape[0] != len(prompts):
            raise ValueError(f"text_states has {states.shape[0]} rows for {len(prompts)} prompts")
        empty = self.encode_prompts([sampling.EMPTY_PROMPT])
        gen = torch.Generator().manual_seed(seed)
        if self.prediction == "epsilon":
            return sampling.sample_unet(self.denoiser, self.scheduler, states, empty, steps=steps,
                                        guidance=guidance, generator=gen)  # fmt: skip
        return sampling.sample_flow(self.denoiser, self.scheduler, states, empty, steps=steps,
                                    guidance=guidance, generator=gen,
                                    shape=self.latent_shape)  # fmt: skip

    def sample(self, prompts: str | Sequence[str], **kwargs: Any) -> torch.Tensor:
        """Guided samples decoded to images ``(n, 3, H, W)`` in [0, 1]."""
        return sampling.decode(self.vae, self.sample_latents(prompts, **kwargs))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return sampling.decode(self.vae, latents)

    def diffusers_pipeline(self) -> Any:
        """The same parts as diffusers' own ``StableDiffusionPipeline`` (UNet models only).

        The pipeline does its own tokenisation, guidance, DDIM stepping and decoding, which
        makes it the independent reference for :mod:`lib.diffusion.sampling`.
        """
        if self.prediction != "epsilon":
            raise ValueError("StableDiffusionPipeline drives epsilon-prediction UNets; "
                             f"this model predicts {self.prediction!r}")
        pipe = stable_diffusion_pipeline_class()(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            unet=self.denoiser, scheduler=self.scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe


def stable_diffusion_pipeline_class() -> type:
    """diffusers' ``StableDiffusionPipeline``, imported without transformers' import notices.

    Importing the pipeline module makes transformers resolve its image processors; without
    torchvision (which the book does not need) it writes a notice to stderr that it falls back
    to the PIL processors. The book never uses an image processor, and pages must be free of
    stderr, so only that import runs at transformers' error verbosity.
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        hf_logging.set_verbosity(before)
    return StableDiffusionPipeline


def load(
    kind: str = "mini",
    denoiser: str = "unet",
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextToImage:
    """The testbed (``kind="mini"``) or a real Stable Diffusion folder (``kind="sd"``).

    ``denoiser`` is ``"unet"`` (epsilon prediction, DDIM sampler) or ``"dit"`` (the testbed's
    rectified-flow MiniDiT; mini only). For ``"sd"``, ``path`` is a local diffusers folder of a
    Stable Diffusion 1.x/2.x model; nothing is downloaded.
    """
    if denoiser not in ("unet", "dit"):
        raise ValueError(f"denoiser must be 'unet' or 'dit', got {denoiser!r}")
    if kind == "mini":
        folder = WEIGHTS if path is None else Path(path)
        manifest = read_manifest(folder)
        parts = {p: load_component(folder, p, manifest)
                 for p in ("tokenizer", "text_encoder", "vae", denoiser)}  # fmt: skip
        sched = load_component(folder, "scheduler" if denoiser == "unet" else "flow_scheduler",
                               manifest)  # fmt: skip
        net = parts[denoiser]
        for m in (parts["text_encoder"], parts["vae"], net):
            m.to(device)
            if dtype != torch.float32:  # the shipped weights are float32
                m.to(dtype)
        return TextToImage(parts["tokenizer"], parts["text_encoder"], parts["vae"], net, sched,
                           "epsilon" if denoiser == "unet" else "flow",
                           (models.LATENT_CHANNELS, models.LATENT_SIZE, models.LATENT_SIZE),
                           "mini")  # fmt: skip
    if kind == "sd":
        if denoiser != "unet":
            raise ValueError("kind='sd' loads Stable Diffusion 1.x/2.x UNets; use denoiser='unet'")
        if path is None or not Path(path).is_dir():
            raise ValueError(f"kind='sd' needs path= a local Stable Diffusion folder, got {path}")
        pipe = stable_diffusion_pipeline_class().from_pretrained(path, local_files_only=True,
                                                       torch_dtype=dtype).to(device)  # fmt: skip
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        size = pipe.unet.config.sample_size
        return TextToImage(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, sched,
                           "epsilon", (pipe.unet.config.in_channels, size, size), "sd")  # fmt: skip
    raise ValueError(f"kind must be 'mini' or 'sd', got {kind!r}")
