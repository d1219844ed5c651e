"""Sparsity sweeps of a text-to-image model's parts (Ramesh and Zhao, 2024, Sections 3-4).

The study prunes Stable Diffusion's text encoder and its UNet *separately*, post training, at
a ladder of sparsities, and judges the generated images. This module is the plumbing around
:mod:`lib.nn.pruning` for a :class:`~lib.diffusion.testbed.loader.TextToImage` model (the
testbed or a real Stable Diffusion folder):

* :func:`part_module`: the ``nn.Module`` a part name refers to;
* :func:`calibrate`: Wanda's input-feature norms of a part's layers, from calibration prompts
  (the text encoder encodes them; the UNet runs its whole guided sampling loop on them, so it
  is calibrated on the inputs it sees at every timestep, conditional and unconditional);
* :func:`sweep_sparsity`: prune, sample the same prompts from the same noise, score, restore;
* :func:`knee` and :func:`steepest_drop`: where a curve leaves its flat region and how fast it
  falls (the paper's "cliff");
* :func:`overall_sparsity`: the whole-model sparsity of a split, weighted by weight counts
  (the paper's 47.5 % / 35 % -> 38.5 %).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.nn import pruning

PARTS = ("text_encoder", "unet")


def part_module(pipe: Any, part: str) -> nn.Module:
    """``pipe.text_encoder`` or the UNet (``pipe.denoiser``) by part name."""
    if part == "text_encoder":
        return pipe.text_encoder
    if part == "unet":
        return pipe.denoiser
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def calibrate(pipe: Any, part: str, prompts: Sequence[str], *, steps: int = 20,
              guidance: float = 3.0, seed: int = 0,
              layers: Mapping[str, nn.Module] | None = None) -> pruning.InputNorms:  # fmt: skip
    """Wanda's calibration statistics for one part, from ``prompts``.

    Text encoder: one forward pass over the prompts. UNet: one guided sampling run of the
    prompts (``steps``, ``guidance``, noise ``seed``), which feeds each layer every timestep's
    conditional and unconditional inputs.
    """
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    module = part_module(pipe, part)
    layers = pruning.prunable_layers(module) if layers is None else layers
    if part == "text_encoder":
        return pruning.input_norms(layers, lambda: pipe.encode_prompts(list(prompts)))
    return pruning.input_norms(layers, lambda: pipe.sample_latents(
        list(prompts), steps=steps, guidance=guidance, seed=seed))  # fmt: skip


@dataclass
class SweepPoint:
    """One pruned configuration: part, criterion, sparsity, the measured scores, the images."""

    part: str
    criterion: str
    sparsity: float
    measured_sparsity: float
    scores: dict[str, float]
    images: torch.Tensor = field(repr=False)


def sweep_sparsity(
    pipe: Any,
    part: str,
    criterion: str,
    grid: Sequence[float],
    prompts: Sequence[str],
    evaluate: Callable[[torch.Tensor], dict[str, float]],
    *,
    norms: pruning.InputNorms | None = None,
    steps: int = 20,
    guidance: float = 3.0,
    seed: int = 0,
    mask_seed: int = 0,
    extra: Mapping[str, float] | None = None,
) -> list[SweepPoint]:
    """Prune ``part`` to each sparsity of ``grid`` by ``criterion``, sample, score, restore.

    Every point samples the same ``prompts`` from the same noise (``seed``), so the curves
    differ only by the pruned weights. ``evaluate(images)`` returns named scores.
    ``extra`` = ``{other_part: sparsity}`` prunes the other part too, by the same criterion
    (its masks fixed across the sweep). Random masks are drawn from ``mask_seed``.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if not grid:
        raise ValueError("grid is empty")
    if criterion == "wanda" and (norms is None or extra):
        raise ValueError("Wanda sweeps need norms=calibrate(...) and support no extra part")
    layers = pruning.prunable_layers(part_module(pipe, part))
    contexts = []
    for other, s in (extra or {}).items():
        if other == part:
            raise ValueError(f"extra names the swept part {part!r}")
        other_layers = pruning.prunable_layers(part_module(pipe, other))
        contexts.append(pruning.prune(other_layers, s, criterion,
                                      generator=torch.Generator().manual_seed(mask_seed + 1)))
    points = []
    for c in contexts:
        c.__enter__()
    try:
        for s in grid:
            gen = torch.Generator().manual_seed(mask_seed)
            with torch.no_grad(), pruning.prune(layers, float(s), criterion, norms=norms,
                                                generator=gen):
                images = pipe.sample(list(prompts), steps=steps, guidance=guidance, seed=seed)
                measured = pruning.sparsity_of(layers)
            points.append(SweepPoint(part, criterion, float(s), measured, evaluate(images),
                                     images))  # fmt: skip
    finally:
        for c in reversed(contexts):
            c.__exit__(None, None, None)
    return points


def knee(sparsities: Sequence[float], accuracy: Sequence[float], dense: float,
         keep: float = 0.9) -> float:  # fmt: skip
    """The largest sparsity up to which every grid point keeps ``keep x dense`` accuracy.

    The end of the flat region (0.0 when the first pruned point already falls below).
    """
    s, a = np.asarray(sparsities, float), np.asarray(accuracy, float)
    if s.shape != a.shape or s.ndim != 1 or s.size == 0:
        raise ValueError("sparsities and accuracy must be equal-length, non-empty 1-D")
    if np.any(np.diff(s) <= 0):
        raise ValueError("sparsities must increase")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    ok = a >= keep * dense
    bad = np.flatnonzero(~ok)
    last = s.size if bad.size == 0 else bad[0]
    return float(s[last - 1]) if last > 0 else 0.0


def steepest_drop(sparsities: Sequence[float], accuracy: Sequence[float],
                  width: float) -> tuple[float, float, float]:  # fmt: skip
    """Largest fall of accuracy between two grid points at most ``width`` apart.

    Returns ``(drop, s_start, s_end)`` with ``drop = accuracy(s_start) - accuracy(s_end)``.
    """
    s, a = np.asarray(sparsities, float), np.asarray(accuracy, float)
    if s.shape != a.shape or s.ndim != 1 or s.size < 2:
        raise ValueError("need at least two (sparsity, accuracy) points of equal length")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    best = (-np.inf, float(s[0]), float(s[0]))
    for i in range(s.size):
        for j in range(i + 1, s.size):
            if s[j] - s[i] <= width + 1e-9 and a[i] - a[j] > best[0]:
                best = (float(a[i] - a[j]), float(s[i]), float(s[j]))
    if not np.isfinite(best[0]):
        raise ValueError(f"no two grid points lie within width {width}")
    return best


def overall_sparsity(counts: Mapping[str, int], sparsities: Mapping[str, float]) -> float:
    """Whole-model sparsity of a per-part split: ``sum_p n_p s_p / sum_p n_p``."""
    if set(counts) != set(sparsities):
        raise ValueError(f"counts {sorted(counts)} and sparsities {sorted(sparsities)} differ")
    total = sum(counts.values())
    if total <= 0:
        raise ValueError("counts must sum to a positive number")
    return sum(counts[p] * sparsities[p] for p in counts) / total
