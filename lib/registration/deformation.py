"""Dense 2-D displacement fields: backward warping, Jacobian determinants, inversion, smoothness.

Convention used throughout ``lib.registration``: a displacement ``disp`` has shape
``(B, 2, H, W)`` in *pixel* units, channel 0 the column (x) component and channel 1 the row (y)
component. It defines the map ``phi(x) = x + u(x)`` from the fixed image's grid into the moving
image, and the warped moving image is ``(M o phi)(x) = M(x + u(x))`` (backward warping, as
``torch.nn.functional.grid_sample`` does it). A region of the fixed grid of area ``A`` around
``x`` is filled from a moving region of area ``det(D phi)(x) * A``: where the Jacobian
determinant exceeds 1 the warp *shrinks* what it pulls in from the moving image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_disp(disp: torch.Tensor) -> None:
    if disp.ndim != 4 or disp.shape[1] != 2:
        raise ValueError(f"displacement must have shape (B, 2, H, W), got {tuple(disp.shape)}")
    if disp.shape[2] < 3 or disp.shape[3] < 3:
        raise ValueError(f"displacement grid must be at least 3x3, got {tuple(disp.shape[2:])}")


def sampling_grid(disp: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid (normalised to [-1, 1], align_corners=True) of ``x + u(x)``."""
    _check_disp(disp)
    _, _, h, w = disp.shape
    ys = torch.arange(h, dtype=disp.dtype, device=disp.device)
    xs = torch.arange(w, dtype=disp.dtype, device=disp.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    px = gx + disp[:, 0]
    py = gy + disp[:, 1]
    return torch.stack((2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1), dim=-1)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Backward warp ``image`` (B, C, H, W) by ``disp``: ``out(x) = image(x + u(x))``.

    Bilinear interpolation, zero outside the image (the spatial-transformer warp that the
    paper's registration networks apply to the moving image and its masks)."""
    if image.ndim != 4:
        raise ValueError(f"image must have shape (B, C, H, W), got {tuple(image.shape)}")
    _check_disp(disp)
    if image.shape[0] != disp.shape[0] or image.shape[2:] != disp.shape[2:]:
        raise ValueError(
            f"image {tuple(image.shape)} and displacement {tuple(disp.shape)} do not match")
    return F.grid_sample(image, sampling_grid(disp), mode=mode, padding_mode="zeros",
                         align_corners=True)


def upsample_displacement(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A dense field (pixel units) from a coarse control grid, by bicubic interpolation.

    The coarse grid is the miniature's low-dimensional parameterisation of the field (a
    registration network outputs the dense field directly)."""
    _check_disp(coarse)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=True)


def spatial_gradient(disp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (one-sided at the border) of ``disp`` along x and along y."""
    _check_disp(disp)
    d_dy, d_dx = torch.gradient(disp, dim=(2, 3))
    return d_dx, d_dy


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` at every pixel, shape (B, H, W), by finite differences.

    This is the local volume (area) change of the registration map that the paper's Stage 1
    reads tumours from and its adaptive volume-preserving loss penalises (Sec. 3)."""
    d_dx, d_dy = spatial_gradient(disp)
    a = 1 + d_dx[:, 0]   # d phi_x / dx
    b = d_dy[:, 0]       # d phi_x / dy
    c = d_dx[:, 1]       # d phi_y / dx
    d = 1 + d_dy[:, 1]   # d phi_y / dy
    return a * d - b * c


def smoothness(disp: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: the mean squared spatial gradient of ``u`` (one number per pair)."""
    d_dx, d_dy = spatial_gradient(disp)
    return (d_dx.pow(2) + d_dy.pow(2)).mean(dim=(1, 2, 3))


def invert_displacement(disp: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Displacement ``v`` of the inverse map, ``phi^{-1}(y) = y + v(y)``, by Newton's method.

    Solves ``g(v) = v + u(y + v) = 0`` pixel by pixel with the step
    ``v <- v - (I + grad u(y + v))^{-1} g(v)``, starting from ``v = -u``. Newton's method, not
    the plain fixed point ``v = -u(y + v)``: the latter diverges where ``|grad u| > 1``, which is
    just where a similarity-only warp shrinks a tumour. Used to carry a map from the fixed frame
    back to the moving frame (the official code registers the pair a second time instead)."""
    _check_disp(disp)
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")
    d_dx, d_dy = spatial_gradient(disp)
    fields = torch.cat((disp, d_dx, d_dy), dim=1)   # u, du/dx, du/dy, sampled together
    v = -disp
    for _ in range(iterations):
        f = warp(fields, v)
        g = v + f[:, 0:2]
        a, c = 1 + f[:, 2], f[:, 3]       # d phi_x/dx, d phi_y/dx
        b, d = f[:, 4], 1 + f[:, 5]       # d phi_x/dy, d phi_y/dy
        det = a * d - b * c
        det = torch.where(det.abs() < 1e-3, torch.full_like(det, 1e-3), det)
        step_x = (d * g[:, 0] - b * g[:, 1]) / det
        step_y = (-c * g[:, 0] + a * g[:, 1]) / det
        v = v - torch.stack((step_x, step_y), dim=1).clamp(-2.0, 2.0)
    return v
