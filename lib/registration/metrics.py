"""Registration metrics: Dice overlap and the paper's tumour size ratios (TSR, STSR)."""

from __future__ import annotations

import torch


def _check_masks(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim < 3:
        raise ValueError(f"masks must be batched, (B, ...), got shape {tuple(a.shape)}")


def dice(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice coefficient 2|A n B| / (|A| + |B|) per pair of the thresholded masks (B, ...)."""
    _check_masks(a, b)
    a, b = (a > threshold).flatten(1).float(), (b > threshold).flatten(1).float()
    total = a.sum(1) + b.sum(1)
    if bool((total == 0).any()):
        raise ValueError("Dice is undefined for a pair of empty masks")
    return 2 * (a * b).sum(1) / total


def tumour_size_ratio(warped_tumour: torch.Tensor, tumour: torch.Tensor,
                      warped_organ: torch.Tensor, organ: torch.Tensor,
                      threshold: float = 0.5) -> torch.Tensor:
    """Tumour size ratio relative to the organ's, per pair: TSR = (|T_w| / |T|) / (|O_w| / |O|).

    The paper's TSR, as its evaluation code computes it: the tumour's volume change under the
    warp divided by the whole organ's, so that a warp which rescales the organ uniformly keeps
    TSR = 1. Masks are thresholded at ``threshold`` after warping."""
    for w, m in ((warped_tumour, tumour), (warped_organ, organ)):
        _check_masks(w, m)
    def area(x: torch.Tensor) -> torch.Tensor:
        return (x > threshold).flatten(1).float().sum(1)
    if bool((area(tumour) == 0).any()) or bool((area(organ) == 0).any()):
        raise ValueError("every pair needs a non-empty tumour mask and organ mask")
    return (area(warped_tumour) / area(tumour)) / (area(warped_organ) / area(organ))


def square_tumour_size_ratio(tsr: torch.Tensor) -> torch.Tensor:
    """STSR = mean over pairs of max(TSR, 1/TSR)^2: 1 when every tumour keeps its size.

    As in the official evaluation code; a tumour erased to nothing (TSR = 0) makes it infinite."""
    if tsr.ndim != 1 or tsr.numel() == 0:
        raise ValueError(f"tsr must be a non-empty 1-D tensor, got shape {tuple(tsr.shape)}")
    if bool((tsr < 0).any()):
        raise ValueError("tumour size ratios cannot be negative")
    worse = torch.maximum(tsr, 1 / tsr)
    return (worse**2).mean()


def evaluate_registration(disp: torch.Tensor, moving_organ: torch.Tensor,
                          moving_tumour: torch.Tensor, fixed_organ: torch.Tensor) -> dict:
    """Organ Dice, TSR per pair and STSR of the fields ``disp`` (B, 2, H, W) on a batch of pairs:
    the moving masks are warped by ``disp`` and compared with the fixed organ and the tumour."""
    from lib.registration.deformation import warp

    w_organ, w_tumour = warp(moving_organ, disp), warp(moving_tumour, disp)
    tsr = tumour_size_ratio(w_tumour, moving_tumour, w_organ, moving_organ)
    return dict(dice=dice(w_organ, fixed_organ).numpy(), tsr=tsr.numpy(),
                stsr=float(square_tumour_size_ratio(tsr)))
