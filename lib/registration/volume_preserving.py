"""Volume-preserving registration with tumours (Dong et al., ICCV 2023), by instance optimisation.

Stage 1 registers by similarity alone; the volume change it applies, relative to the organ's,
marks tumour-like regions as a soft mask (paper Sec. 3.2). Stage 2 registers again with an
adaptive volume-preserving loss weighted by that mask, and down-weights the similarity inside it
(Sec. 3.3). The paper trains registration networks with these losses
(:mod:`lib.registration.displacement_network` does); :func:`register` optimises each pair's
field directly (a coarse control grid, Adam), the instance-optimisation baseline that minimises
the same objective per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib.registration.deformation import (
    invert_displacement,
    jacobian_determinant,
    smoothness,
    upsample_displacement,
    warp,
)


def organ_area_ratio(disp: torch.Tensor, organ: torch.Tensor) -> torch.Tensor:
    """|warped organ| / |organ| per pair (thresholded at 0.5), shape (B, 1, 1)."""
    warped = warp(organ, disp) > 0.5
    return (warped.flatten(1).sum(1) / (organ > 0.5).flatten(1).sum(1).clamp(min=1)).view(-1, 1, 1)


def relative_volume_change(disp: torch.Tensor, organ: torch.Tensor, clamp: float = 3.0,
                           neighbourhood: int = 3) -> torch.Tensor:
    """Stage 1's ratio map in the fixed frame, (B, H, W): ``clip(J, 1/c, c) * |O_w|/|O|``,
    averaged over a ``neighbourhood`` x ``neighbourhood`` window.

    ``J`` is the Jacobian determinant of the stage-1 map; multiplying by the organ's area ratio
    makes it a change *relative to the organ*: about 1 where the tissue moves with the organ,
    well above 1 where the warp shrinks what it pulls from the moving image (a tumour with no
    counterpart in the fixed image). As in the official code's ``extract_tumor_mask``."""
    if clamp <= 1:
        raise ValueError(f"clamp must exceed 1, got {clamp}")
    if neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ValueError(f"neighbourhood must be a positive odd size, got {neighbourhood}")
    ratio = jacobian_determinant(disp).abs().clamp(1 / clamp, clamp)
    ratio = F.avg_pool2d(ratio[:, None], neighbourhood, stride=1, padding=neighbourhood // 2,
                         count_include_pad=False)[:, 0]
    return ratio * organ_area_ratio(disp, organ)


def soft_tumour_mask(ratio: torch.Tensor, threshold: float = 1.5,
                     sharpness: float = 5.0) -> torch.Tensor:
    """The soft tumour mask ``sigmoid(sharpness * (ratio - threshold))`` (paper Sec. 3.2;
    the official default: threshold 1.5, sharpness 5)."""
    if sharpness <= 0:
        raise ValueError(f"sharpness must be positive, got {sharpness}")
    return torch.sigmoid(sharpness * (ratio - threshold))


def stage_one_mask(disp: torch.Tensor, moving_organ: torch.Tensor, threshold: float = 1.5,
                   sharpness: float = 5.0, clamp: float = 3.0) -> torch.Tensor:
    """Stage 1: the soft tumour mask in the *moving* frame, (B, 1, H, W), from a similarity-only
    field ``disp``. The fixed-frame ratio map is carried back to the moving frame through the
    inverse map and kept inside the moving organ."""
    fixed_organ = warp(moving_organ, disp)
    ratio = relative_volume_change(disp, moving_organ, clamp=clamp)
    mask_fixed = soft_tumour_mask(ratio, threshold, sharpness)[:, None] * (fixed_organ > 0.5)
    return warp(mask_fixed, invert_displacement(disp)) * (moving_organ > 0.5)


def adaptive_volume_preserving_loss(disp: torch.Tensor, warped_mask: torch.Tensor,
                                    organ_ratio: torch.Tensor, clamp: float = 3.0) -> torch.Tensor:
    """Adaptive volume-preserving loss per pair (paper Eq. for L_avp, Sec. 3.3):

        sum_x M_w(x) max(J~(x), 1 / J~(x)) / sum_x M_w(x),   J~ = clip(|J| * |O_w|/|O|, 1/c, c)

    with ``M_w`` the soft tumour mask warped to the fixed frame. It is 1 (its minimum) when the
    masked region changes volume exactly as the organ does."""
    if warped_mask.ndim != 4 or warped_mask.shape[1] != 1:
        raise ValueError(
            f"warped_mask must have shape (B, 1, H, W), got {tuple(warped_mask.shape)}")
    rel = (jacobian_determinant(disp).abs() * organ_ratio).clamp(1 / clamp, clamp)
    penalty = torch.maximum(rel, 1 / rel)
    m = warped_mask[:, 0]
    return (m * penalty).sum((1, 2)) / m.sum((1, 2)).clamp(min=1e-6)


def registration_loss(
    disp: torch.Tensor,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    moving_organ: torch.Tensor,
    *,
    tumour_mask: torch.Tensor | None = None,
    vp_weight: float = 0.0,
    mask_similarity: bool = True,
    smooth_weight: float = 0.5,
    similarity_scale: float = 100.0,
) -> torch.Tensor:
    """The registration objective per pair, shape (B,): Eq. L_1 without ``tumour_mask``, the
    paper's Stage-2 loss L_2 with it (Sec. 3.3):

        similarity_scale * mean_x (1 - M_w(x)) (M o phi - F)^2 + smooth_weight * mean |grad u|^2
            + vp_weight * (L_avp - 1),

    ``M_w`` the moving-frame ``tumour_mask`` warped by ``disp`` (treated as a constant, as in the
    official code), the weight ``1 - M_w`` only when ``mask_similarity``. The same function
    drives the per-pair optimisation (:func:`register`) and the networks' training."""
    if vp_weight < 0 or smooth_weight < 0 or similarity_scale <= 0:
        raise ValueError("loss weights must be non-negative and similarity_scale positive")
    if vp_weight > 0 and tumour_mask is None:
        raise ValueError("a volume-preserving weight needs a tumour_mask to act on")
    err = (warp(moving, disp) - fixed).pow(2)
    loss = smooth_weight * smoothness(disp)
    if tumour_mask is not None:
        with torch.no_grad():
            warped_mask = warp(tumour_mask, disp)
            organ_ratio = organ_area_ratio(disp, moving_organ)
        if mask_similarity:
            err = err * (1 - warped_mask)
        if vp_weight > 0:
            loss = loss + vp_weight * (adaptive_volume_preserving_loss(
                disp, warped_mask, organ_ratio) - 1)
    return loss + err.mean((1, 2, 3)) * similarity_scale


@dataclass
class Registration:
    """A registration result: the dense field, the warped moving image, and the loss history."""

    disp: torch.Tensor
    warped: torch.Tensor
    losses: list[float]


def register(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    moving_organ: torch.Tensor,
    *,
    tumour_mask: torch.Tensor | None = None,
    vp_weight: float = 0.0,
    mask_similarity: bool = True,
    smooth_weight: float = 0.5,
    grid: int = 16,
    steps: int = 200,
    lr: float = 0.5,
    blur_steps: float = 0.5,
) -> Registration:
    """Register each moving image (B, 1, H, W) to its fixed image, all pairs at once.

    The objective, per pair, is the paper's: a similarity term (mean squared error, weighted by
    ``1 - M_w`` when ``tumour_mask`` is given and ``mask_similarity``), the diffusion regulariser
    ``smooth_weight * mean |grad u|^2``, and ``vp_weight`` times the adaptive
    volume-preserving loss over ``tumour_mask`` (a moving-frame mask: Stage 1's soft mask, the
    organ mask for the uniform baseline, or the true tumour for the oracle). With
    ``tumour_mask=None`` it is the similarity-only baseline. The field is a ``grid`` x ``grid``
    control grid (pixel units) upsampled bicubically; Adam takes ``steps`` steps, the first
    ``blur_steps`` fraction of them on blurred images (coarse-to-fine)."""
    if moving.shape != fixed.shape or moving.shape != moving_organ.shape or moving.ndim != 4:
        raise ValueError("moving, fixed and moving_organ must share one (B, 1, H, W) shape")
    if steps < 1 or grid < 3:
        raise ValueError(f"need steps >= 1 and grid >= 3, got steps={steps}, grid={grid}")
    if vp_weight < 0 or smooth_weight < 0:
        raise ValueError("loss weights must be non-negative")
    if vp_weight > 0 and tumour_mask is None:
        raise ValueError("a volume-preserving weight needs a tumour_mask to act on")
    b, _, h, w = moving.shape
    coarse = torch.zeros(b, 2, grid, grid, requires_grad=True)
    opt = torch.optim.Adam([coarse], lr=lr)
    blurred = [gaussian_blur(x, 1.5) for x in (moving, fixed)]
    losses = []
    for step in range(steps):
        src, dst = blurred if step < blur_steps * steps else (moving, fixed)
        disp = upsample_displacement(coarse, (h, w))
        loss = registration_loss(disp, src, dst, moving_organ, tumour_mask=tumour_mask,
                                 vp_weight=vp_weight, mask_similarity=mask_similarity,
                                 smooth_weight=smooth_weight).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item() / b)
    with torch.no_grad():
        disp = upsample_displacement(coarse, (h, w))
        return Registration(disp=disp, warped=warp(moving, disp), losses=losses)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, replicate padding (the coarse-to-fine
    curriculum's first phase compares blurred images)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if x.shape[1] != 1:
        x_ = x.reshape(-1, 1, *x.shape[2:])
        return gaussian_blur(x_, sigma).reshape(x.shape)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
