"""Tileable 32x32 textures for MiniSD (testbed card, "Tileable texture subset"; chapter 21).

Every texture is a **height map** ``h(x, y)`` in [0, 1] that is exactly periodic on the 32x32
torus, plus a **colour map** that tints it:

    colour(x, y) = rgb * (FLOOR + (1 - FLOOR) * h(x, y))            (one RGB tint per image)

Periodicity is by construction: every family is built from functions of ``x mod 32`` and
``y mod 32`` (sinusoids with integer frequencies, patterns whose period divides 32, value noise
interpolated on a wrapped lattice), so ``np.roll`` of a texture by any offset is another texture
of the same family and the wrap-around seam looks like any interior column. Features are at
least 4 px wide (periods 8, 16 or 32), coarse enough for the autoencoder's 4x4 pixel cells.

Eight families, A-H (the card's annotated families are the first four; the semi-supervised part
of StableMaterials distils the other four from unannotated images):

=====  ===========  ===========================================================
A      wavy         sum of two sinusoids with integer frequencies (1-3 cycles)
B      striped      a square wave along x or y, period 8 or 16
C      checkered    checkerboard, period 8 or 16
D      dotted       periodic round dots on a lattice of period 8 or 16
E      marbled      periodic value noise: bicubic on a wrapped 4x4 or 8x8 lattice
F      grid         thin lines (2 px) along both axes, period 8 or 16
G      diagonal     stripes at 45 degrees, period 8 or 16 along each axis
H      bricks       staggered bricks (16x8 px) with 2 px mortar
=====  ===========  ===========================================================

Captions read "a [colour] [family] texture" with the testbed's six colours. Images are
``float32`` ``(n, 3, 32, 32)`` in [0, 1], heights ``(n, 1, 32, 32)``; seeded and vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lib.diffusion.testbed.data import COLOUR_RGB, COLOURS, IMAGE_SIZE

FAMILIES: tuple[str, ...] = ("wavy", "striped", "checkered", "dotted", "marbled", "grid",
                             "diagonal", "bricks")  # fmt: skip
ANNOTATED: tuple[str, ...] = FAMILIES[:4]
"""Families A-D: the annotated set of the card's semi-supervised experiment."""
TEXTURE_VOCABULARY: tuple[str, ...] = ("a", *COLOURS, *FAMILIES, "texture")
"""Every word a texture caption uses (the testbed tokenizer's vocabulary has no family words)."""
FLOOR = 0.25
"""Brightness of the tint where the height is 0 (1 where it is 1)."""
COLOUR_JITTER = 0.04
_GRID = np.arange(IMAGE_SIZE, dtype=np.float32)


@dataclass(frozen=True)
class Textures:
    """A batch of textures: ``images`` (n, 3, 32, 32), ``heights`` (n, 1, 32, 32), the family
    and colour indices, and the captions."""

    images: np.ndarray
    heights: np.ndarray
    family: np.ndarray
    colour: np.ndarray
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def _periodic_square(u: np.ndarray, period: np.ndarray) -> np.ndarray:
    """1 on the first half of each period, 0 on the second (``u`` in pixels)."""
    return ((np.floor(u / (period / 2)) % 2) == 0).astype(np.float32)


def _wavy(n: int, rng: np.random.Generator) -> np.ndarray:
    x, y = _GRID[None, None, :], _GRID[None, :, None]
    h = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for _ in range(2):
        kx = rng.integers(0, 4, n)[:, None, None]
        ky = rng.integers(0, 4, n)[:, None, None]
        ky = np.where((kx == 0) & (ky == 0), 1, ky)  # never a constant term
        phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
        h += np.sin(2 * np.pi * (kx * x + ky * y) / IMAGE_SIZE + phase)
    span = np.maximum(np.ptp(h, axis=(1, 2), keepdims=True), 1e-6)
    return (h - h.min(axis=(1, 2), keepdims=True)) / span


def _striped(n: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.choice([8, 16], n)[:, None, None].astype(np.float32)
    along_x = rng.random(n)[:, None, None] < 0.5
    u = np.where(along_x, _GRID[None, None, :], _GRID[None, :, None]) + np.zeros(
        (n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return _periodic_square(u + rng.integers(0, 16, n)[:, None, None], period)


def _checkered(n: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.choice([8, 16], n)[:, None, None].astype(np.float32)
    a = _periodic_square(_GRID[None, None, :] + rng.integers(0, 16, n)[:, None, None], period)
    b = _periodic_square(_GRID[None, :, None] + rng.integers(0, 16, n)[:, None, None], period)
    return (a != b).astype(np.float32)


def _wrapped_distance(u: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Distance from ``u`` to the nearest multiple of ``period`` (pixels)."""
    r = np.mod(u, period)
    return np.minimum(r, period - r)


def _dotted(n: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.choice([8, 16], n)[:, None, None].astype(np.float32)
    off = rng.uniform(0, 16, (2, n))[:, :, None, None]
    dx = _wrapped_distance(_GRID[None, None, :] + 0.5 - off[0], period)
    dy = _wrapped_distance(_GRID[None, :, None] + 0.5 - off[1], period)
    radius = 0.3 * period
    return np.clip(radius - np.sqrt(dx**2 + dy**2) + 0.5, 0, 1).astype(np.float32)


def _marbled(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    cells = rng.choice([4, 8], n)
    for i in range(n):  # bicubic value noise on a wrapped lattice: periodic and smooth
        c = int(cells[i])
        lattice = rng.random((c, c)).astype(np.float32)
        t = (_GRID + 0.5) * c / IMAGE_SIZE - 0.5
        i0 = np.floor(t).astype(int)
        f = t - i0
        # Catmull-Rom weights of the four lattice points around each pixel
        w = np.stack([(-f + 2 * f**2 - f**3) / 2, (2 - 5 * f**2 + 3 * f**3) / 2,
                      (f + 4 * f**2 - 3 * f**3) / 2, (-f**2 + f**3) / 2])  # fmt: skip
        idx = np.stack([(i0 + k - 1) % c for k in range(4)])  # (4, 32), wrapped
        rows = np.einsum("ky,kyc->yc", w, lattice[idx])  # interpolate along y
        out[i] = np.einsum("kx,ykx->yx", w, rows[:, idx])  # then along x
        # a random phase, so the image border does not always fall mid-cell (where the
        # interpolant is steepest), which a seam score would read as a seam
        out[i] = np.roll(out[i], tuple(rng.integers(0, IMAGE_SIZE, 2)), axis=(0, 1))
    lo, hi = out.min(axis=(1, 2), keepdims=True), out.max(axis=(1, 2), keepdims=True)
    return (out - lo) / (hi - lo)


def _grid(n: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.choice([8, 16], n)[:, None, None].astype(np.float32)
    off = rng.integers(0, 16, (2, n))[:, :, None, None]
    on_x = np.mod(_GRID[None, None, :] + off[0], period) < 2
    on_y = np.mod(_GRID[None, :, None] + off[1], period) < 2
    return (on_x | on_y).astype(np.float32)


def _diagonal(n: int, rng: np.random.Generator) -> np.ndarray:
    period = rng.choice([8, 16], n)[:, None, None].astype(np.float32)
    sign = np.where(rng.random(n) < 0.5, 1, -1)[:, None, None]
    u = _GRID[None, None, :] + sign * _GRID[None, :, None] + rng.integers(0, 16, n)[:, None, None]
    return _periodic_square(u.astype(np.float32), period)


def _bricks(n: int, rng: np.random.Generator) -> np.ndarray:
    off = rng.integers(0, 16, (2, n))[:, :, None, None]
    y = np.mod(_GRID[None, :, None] + off[1], 32)
    row = np.floor(y / 8)
    x = np.mod(_GRID[None, None, :] + off[0] + 8 * (row % 2), 16)
    mortar = (np.mod(y, 8) < 2) | (x < 2)
    return np.where(mortar, 0.0, 1.0).astype(np.float32) + np.zeros(
        (n, IMAGE_SIZE, IMAGE_SIZE), np.float32)


_MAKERS = (_wavy, _striped, _checkered, _dotted, _marbled, _grid, _diagonal, _bricks)


def texture_caption(colour: int | str, family: int | str) -> str:
    """``"a <colour> <family> texture"``; raises ValueError for an unknown colour or family."""
    c = COLOURS[colour] if isinstance(colour, int) else colour
    f = FAMILIES[family] if isinstance(family, int) else family
    if c not in COLOURS:
        raise ValueError(f"unknown colour {c!r}; expected one of {COLOURS}")
    if f not in FAMILIES:
        raise ValueError(f"unknown texture family {f!r}; expected one of {FAMILIES}")
    return f"a {c} {f} texture"


def generate_textures(n: int, seed: int | Sequence[int] = 0,
                      families: Sequence[str] = FAMILIES) -> Textures:  # fmt: skip
    """``n`` seeded tileable textures, families uniform over ``families``, colours uniform.

    The colour of each image is its tint ``COLOUR_RGB[c]`` jittered by ``COLOUR_JITTER``;
    ``colour(x, y) = tint * (FLOOR + (1 - FLOOR) h(x, y))`` with the family's height map ``h``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families}")
    rng = np.random.default_rng(seed)
    allowed = np.array([FAMILIES.index(f) for f in families])
    family = allowed[rng.integers(0, len(allowed), n)]
    colour = rng.integers(0, len(COLOURS), n)
    heights = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for k, make in enumerate(_MAKERS):
        rows = np.flatnonzero(family == k)
        if rows.size:
            heights[rows] = make(rows.size, rng)
    tint = COLOUR_RGB[colour] + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3))
    tint = np.clip(tint, 0, 1).astype(np.float32)
    images = tint[:, :, None, None] * (FLOOR + (1 - FLOOR) * heights[:, None])
    captions = [texture_caption(int(c), int(f)) for c, f in zip(colour, family)]
    return Textures(np.clip(images, 0, 1).astype(np.float32), heights[:, None], family, colour,
                    captions)  # fmt: skip


def scaled_crops(maps: np.ndarray, seed: int | Sequence[int] = 0,
                 scale: tuple[float, float] = (1.25, 1.75)) -> np.ndarray:  # fmt: skip
    """Random magnified windows of periodic maps: crops that do **not** tile.

    ``maps`` ``(n, C, 32, 32)`` are periodic on the 32x32 torus (:func:`generate_textures`).
    Each output pixel ``(i, j)`` reads the map bilinearly, with wrap-around, at
    ``(o_y + i / s, o_x + j / s)``: a random offset ``o`` and a magnification ``s`` drawn
    uniformly from ``scale`` per image. With ``s > 1`` a crop spans ``32 / s`` pixels of one
    period, so its right edge no longer continues its left edge, as in photographs of materials
    (or SDXL renders of textures): the training images of chapter 21's texture model are such
    crops, so nothing in the data teaches it to tile.
    """
    x = np.asarray(maps, dtype=np.float32)
    if x.ndim != 4 or x.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"maps must be (n, C, {IMAGE_SIZE}, {IMAGE_SIZE}), got {x.shape}")
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    s = rng.uniform(lo, hi, n)[:, None]
    off = rng.uniform(0, IMAGE_SIZE, (2, n, 1))
    u = np.mod(off + _GRID[None, None, :] / s[None], IMAGE_SIZE)  # (2, n, 32): y then x
    i0 = np.floor(u).astype(int)
    f = (u - i0).astype(np.float32)
    i1 = (i0 + 1) % IMAGE_SIZE
    rows = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for iy, wy in ((i0[0], 1 - f[0]), (i1[0], f[0])):
        for ix, wx in ((i0[1], 1 - f[1]), (i1[1], f[1])):
            patch = x[rows, :, iy[:, :, None], ix[:, None, :]]  # (n, 32, 32, C)
            out += (wy[:, :, None] * wx[:, None, :])[:, None] * np.moveaxis(patch, -1, 1)
    return out
