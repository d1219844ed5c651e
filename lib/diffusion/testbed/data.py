"""The MiniSD captioned-image generator and its word-level tokenizer.

Every image is a 32x32 RGB picture of one coloured shape on a grey background, drawn from a
small seeded distribution and captioned by a small grammar::

    a [size] [colour] <shape> [on the left | in the center | on the right]
      [on a [dark|bright] [striped|dotted|checkered] background]

Words in brackets are optional. The distribution has three deliberate features that papers
built on the testbed rely on:

* **Implicit assumptions** (used by TIME-style model editing): in a fraction
  ``p_colour_omitted`` (0.3) of captions the colour word is left out; then a circle is red,
  a square blue and a triangle yellow with probability ``p_typical`` (0.95). A ring has no
  typical colour (the control). With the colour word present, colours are uniform.
* **A wide brightness spread** (used by OMS-style schedule studies): the nominal background
  grey level is uniform on ``[0.02, 0.98]``; the caption says "dark" below 0.25 and "bright"
  above 0.75 (always, when it applies) and nothing in between.
* **High-frequency backgrounds** (RAS, asymmetric decoders): a fraction ``p_texture`` (0.4)
  of backgrounds carry 1-2 px stripes, 1 px dots, 1-2 px checkers (named in the caption) or
  low-amplitude pixel noise (not named). Textures are mean-preserving, so the background's
  mean grey level stays in the bucket its caption states.

Held-out (colour, shape, position) combinations never occur in the ``"train"`` split (not even
with the words left out of the caption); the ``"heldout"`` split contains only them, for
generality tests. Shapes drawn on backgrounds lighter than 0.5 get a 1 px dark outline, so that
a white shape on a bright background stays visible.

Everything is vectorised with numpy: :func:`generate` draws a few thousand images in a fraction
of a second. Images are ``float32`` arrays ``(n, 3, 32, 32)`` in ``[0, 1]`` (channels first);
diffusers' autoencoders expect ``2 * x - 1``.

The tokenizer (:class:`MiniTokenizer`) is a ``transformers.PreTrainedTokenizer`` with a fixed
word vocabulary (``<pad>`` = 0, the words, then ``<bos>`` and ``<eos>`` as the two highest ids,
as in CLIP), so ``CLIPTextModel`` pools at the ``<eos>`` token unchanged; see
:func:`clip_text_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from transformers import CLIPTextConfig, PreTrainedTokenizer

IMAGE_SIZE = 32
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
COLOUR_RGB = np.array(
    [
        [0.90, 0.12, 0.10],
        [0.10, 0.72, 0.15],
        [0.12, 0.25, 0.95],
        [0.95, 0.88, 0.10],
        [0.58, 0.12, 0.75],
        [0.97, 0.97, 0.97],
    ],
    dtype=np.float32,
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
POSITION_PHRASES: tuple[str, ...] = ("on the left", "in the center", "on the right")
SIZES: tuple[str, ...] = ("small", "big")
BRIGHTNESS_BUCKETS: tuple[str, ...] = ("dark", "medium", "bright")
TEXTURES: tuple[str, ...] = ("none", "stripes", "dots", "checkers", "noise")
TEXTURE_WORDS: dict[int, str] = {1: "striped", 2: "dotted", 3: "checkered"}
"""Caption word of each named texture (index into :data:`TEXTURES`); noise is never named."""

#: The tokenizer's words, in id order (ids 1..len). Never reorder: trained text encoders
#: depend on these ids.
WORDS: tuple[str, ...] = (
    ("a",) + SIZES + COLOURS + SHAPES
    + ("on", "in", "the") + POSITIONS
    + ("dark", "bright", "striped", "dotted", "checkered", "background")
)  # fmt: skip
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<bos>", "<eos>"
MAX_LENGTH = 16
"""Padded token length: the longest caption has 12 words, plus ``<bos>`` and ``<eos>``."""

SPLITS: dict[str, int] = {"train": 0, "heldout": 1, "all": 2}
"""Split name -> code mixed into the seed, so splits with the same seed are independent."""

# Geometry (pixels; pixel centres at integer + 0.5).
POSITION_X = np.array([9.0, 16.0, 23.0], dtype=np.float32)
X_JITTER, Y_JITTER = 1.5, 2.5
RADIUS_RANGE = np.array([[3.5, 5.0], [6.5, 8.0]], dtype=np.float32)  # small, big
SQUARE_HALF_SIDE = 0.886  # x radius: a square of the circle's area
TRIANGLE_CIRCUMRADIUS = 1.4  # x radius
RING_INNER = 0.55  # x radius
OUTLINE_ABOVE = 0.5  # backgrounds lighter than this get a dark 1 px outline around the shape
OUTLINE_VALUE = 0.08
COLOUR_JITTER = 0.04


def _index(names: Sequence[str], name: str, what: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise ValueError(f"unknown {what} {name!r}; expected one of {list(names)}") from None


@dataclass(frozen=True)
class GrammarConfig:
    """Probabilities of the caption grammar and the data distribution (defaults: the testbed card).

    ``typical_colours`` maps a shape to its implicit colour, used with probability
    ``p_typical`` when the caption omits the colour. ``held_out`` lists (colour, shape,
    position) triples excluded from the ``"train"`` split.
    """

    p_colour_omitted: float = 0.3
    p_typical: float = 0.95
    typical_colours: tuple[tuple[str, str], ...] = (
        ("circle", "red"),
        ("square", "blue"),
        ("triangle", "yellow"),
    )
    p_size_omitted: float = 0.3
    p_position_omitted: float = 0.3
    p_texture: float = 0.4
    brightness_range: tuple[float, float] = (0.02, 0.98)
    dark_below: float = 0.25
    bright_above: float = 0.75
    held_out: tuple[tuple[str, str, str], ...] = (
        ("purple", "triangle", "right"),
        ("white", "square", "left"),
        ("green", "ring", "center"),
        ("yellow", "ring", "left"),
    )

    def __post_init__(self) -> None:
        for name in ("p_colour_omitted", "p_typical", "p_size_omitted", "p_position_omitted",
                     "p_texture"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        lo, hi = self.brightness_range
        if not 0.0 <= lo < self.dark_below <= self.bright_above < hi <= 1.0:
            raise ValueError(
                "need 0 <= brightness_range[0] < dark_below <= bright_above < brightness_range[1]"
                f" <= 1, got range {self.brightness_range}, thresholds"
                f" ({self.dark_below}, {self.bright_above})"
            )
        for shape, colour in self.typical_colours:
            _index(SHAPES, shape, "shape")
            _index(COLOURS, colour, "colour")
        if len({s for s, _ in self.typical_colours}) != len(self.typical_colours):
            raise ValueError("typical_colours names a shape twice")
        for triple in self.held_out:
            if len(triple) != 3:
                raise ValueError(f"held_out entries are (colour, shape, position), got {triple}")
            _index(COLOURS, triple[0], "colour")
            _index(SHAPES, triple[1], "shape")
            _index(POSITIONS, triple[2], "position")
        for c in range(len(COLOURS)):
            for s in range(len(SHAPES)):
                if (self._held_out_table()[c, s]).all():
                    raise ValueError(
                        f"held_out excludes every position of {COLOURS[c]} {SHAPES[s]}"
                    )

    def _held_out_table(self) -> np.ndarray:
        """Boolean array ``(colours, shapes, positions)``: True for held-out combinations."""
        table = np.zeros((len(COLOURS), len(SHAPES), len(POSITIONS)), dtype=bool)
        for colour, shape, position in self.held_out:
            table[COLOURS.index(colour), SHAPES.index(shape), POSITIONS.index(position)] = True
        return table

    def typical_colour_table(self) -> np.ndarray:
        """``(shapes,)`` int array: the typical colour index of each shape, -1 where none."""
        table = np.full(len(SHAPES), -1, dtype=np.int64)
        for shape, colour in self.typical_colours:
            table[SHAPES.index(shape)] = COLOURS.index(colour)
        return table

    def bucket(self, brightness: np.ndarray) -> np.ndarray:
        """Brightness bucket (0 dark, 1 medium, 2 bright) of nominal background levels."""
        b = np.asarray(brightness)
        return np.where(b < self.dark_below, 0, np.where(b > self.bright_above, 2, 1))


DEFAULT_CONFIG = GrammarConfig()


@dataclass
class Labels:
    """Structured ground truth of a batch; every field is a numpy array with first axis ``n``.

    Class indices refer to :data:`COLOURS`, :data:`SHAPES`, :data:`POSITIONS`, :data:`SIZES`,
    :data:`BRIGHTNESS_BUCKETS` and :data:`TEXTURES`. ``brightness`` is the nominal background
    grey level (textures keep the background mean in the same bucket). The ``*_stated`` flags
    say whether the caption names the attribute (bucket and named textures are always stated
    when they apply; noise never is). The remaining fields are rendering parameters.
    """

    colour: np.ndarray
    shape: np.ndarray
    position: np.ndarray
    size: np.ndarray
    brightness: np.ndarray
    bucket: np.ndarray
    texture: np.ndarray
    colour_stated: np.ndarray
    size_stated: np.ndarray
    position_stated: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    rgb: np.ndarray
    texture_variant: np.ndarray
    texture_scale: np.ndarray
    texture_phase: np.ndarray
    texture_amp: np.ndarray

    def __len__(self) -> int:
        return int(self.colour.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def subset(self, index: Any) -> Labels:
        """The labels of ``index`` (any numpy index: slice, int array, boolean mask)."""
        return Labels(**{k: v[index] for k, v in self.as_dict().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The class labels as int64 tensors (keys: the classifier's heads)."""
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k), dtype=np.int64))
                for k in ("colour", "shape", "position", "size", "bucket", "texture")}  # fmt: skip


@dataclass
class CaptionedImages:
    """A batch: ``images`` ``(n, 3, 32, 32)`` float32 in [0, 1], ``captions``, ``labels``."""

    images: np.ndarray
    captions: list[str]
    labels: Labels
    seed: tuple[int, ...] = field(default=())
    split: str = "train"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def images_tensor(self) -> torch.Tensor:
        """The images as a float32 torch tensor (shares memory with ``images``)."""
        return torch.from_numpy(self.images)

    def subset(self, index: Any) -> CaptionedImages:
        idx = np.arange(len(self))[index]
        return CaptionedImages(self.images[idx], [self.captions[i] for i in np.atleast_1d(idx)],
                               self.labels.subset(idx), self.seed, self.split)  # fmt: skip


def _seed_sequence(seed: int | Sequence[int], split: str) -> tuple[np.random.Generator, tuple]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    key = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not key or any(not isinstance(k, (int, np.integer)) or k < 0 for k in key):
        raise ValueError(f"seed must be a non-negative int or a sequence of them, got {seed!r}")
    key = tuple(int(k) for k in key)
    return np.random.default_rng(np.random.SeedSequence([*key, SPLITS[split]])), key


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


def sample_labels(
    n: int,
    rng: np.random.Generator,
    split: str = "train",
    config: GrammarConfig = DEFAULT_CONFIG,
    fixed: dict[str, int] | None = None,
) -> Labels:
    """Draw the attributes of ``n`` images (no pixels yet).

    ``fixed`` (as returned by :func:`parse_caption`) pins the attributes a prompt states and
    marks them stated; the others follow the grammar's conditional distribution given that the
    prompt does not name them: omitted colour -> the implicit assumption; no brightness word ->
    medium background; no texture word -> plain or noise. Used by :func:`sample_for_prompt`.
    """
    _check_n(n)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    fixed = dict(fixed or {})
    unknown = set(fixed) - {"colour", "shape", "position", "size", "bucket", "texture"}
    if unknown:
        raise ValueError(f"fixed has unknown attributes {sorted(unknown)}")
    if fixed and split == "heldout":
        raise ValueError("fixed attributes cannot be combined with split='heldout'")
    n_col, n_shape, n_pos = len(COLOURS), len(SHAPES), len(POSITIONS)
    held = config._held_out_table()
    shape = rng.integers(0, n_shape, n)
    position = rng.integers(0, n_pos, n)
    colour_stated = rng.random(n) >= config.p_colour_omitted
    position_stated = rng.random(n) >= config.p_position_omitted
    size_stated = rng.random(n) >= config.p_size_omitted
    uniform_colour = rng.integers(0, n_col, n)
    other_colour = rng.integers(0, n_col - 1, n)  # uniform over the 5 non-typical colours
    typical_draw = rng.random(n) < config.p_typical
    if split == "heldout":
        if not config.held_out:
            raise ValueError("split='heldout' needs a non-empty config.held_out")
        pick = rng.integers(0, len(config.held_out), n)
        triples = np.array([[COLOURS.index(c), SHAPES.index(s), POSITIONS.index(p)]
                            for c, s, p in config.held_out])  # fmt: skip
        uniform_colour, shape, position = triples[pick].T
        colour_stated[:] = True
        position_stated[:] = True
    if "shape" in fixed:
        shape[:] = fixed["shape"]
    if "position" in fixed:
        position[:] = fixed["position"]
    if fixed:
        colour_stated[:] = "colour" in fixed
        position_stated[:] = "position" in fixed
        size_stated[:] = "size" in fixed
    typical = config.typical_colour_table()[shape]
    implicit = np.where(
        typical < 0,
        uniform_colour,
        np.where(typical_draw, typical, other_colour + (other_colour >= typical)),
    )
    colour = np.where(colour_stated, uniform_colour, implicit)
    if "colour" in fixed:
        colour[:] = fixed["colour"]
    if split == "train" and held.any():
        # Held-out combinations never occur in training images: redraw their position.
        bad = held[colour, shape, position]
        while bad.any():
            position[bad] = rng.integers(0, n_pos, int(bad.sum()))
            bad = held[colour, shape, position]
    size = rng.integers(0, len(SIZES), n)
    if "size" in fixed:
        size[:] = fixed["size"]
    # Background: nominal grey level and bucket.
    lo, hi = config.brightness_range
    if fixed:
        bucket_bounds = [(lo, config.dark_below), (config.dark_below, config.bright_above),
                         (np.nextafter(config.bright_above, 1.0), hi)]  # fmt: skip
        b_lo, b_hi = bucket_bounds[fixed.get("bucket", 1)]
        brightness = rng.uniform(b_lo, b_hi, n)
        if fixed.get("bucket", 1) == 0:
            brightness = np.minimum(brightness, np.nextafter(config.dark_below, 0.0))
    else:
        brightness = rng.uniform(lo, hi, n)
    bucket = config.bucket(brightness)
    textured = rng.random(n) < config.p_texture
    texture = np.where(textured, rng.integers(1, len(TEXTURES), n), 0)
    if fixed:
        if "texture" in fixed:
            texture[:] = fixed["texture"]
        else:  # an unnamed texture: plain, or noise with its prior weight
            p_noise = config.p_texture / (len(TEXTURES) - 1)
            p_noise = p_noise / (p_noise + 1.0 - config.p_texture)
            texture = np.where(rng.random(n) < p_noise, TEXTURES.index("noise"), 0)
    # Geometry and rendering parameters.
    cx = POSITION_X[position] + rng.uniform(-X_JITTER, X_JITTER, n)
    cy = IMAGE_SIZE / 2 + rng.uniform(-Y_JITTER, Y_JITTER, n)
    r_lo, r_hi = RADIUS_RANGE[size, 0], RADIUS_RANGE[size, 1]
    radius = r_lo + (r_hi - r_lo) * rng.random(n)
    rgb = np.clip(COLOUR_RGB[colour] + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)), 0, 1)
    texture_variant = rng.integers(0, 4, n)  # stripes: horizontal, vertical, two diagonals
    texture_scale = rng.integers(1, 3, n)  # stripe width / checker cell 1-2 px; dot period 3-4
    texture_phase = rng.integers(0, 8, (n, 2))
    texture_amp = np.select(
        [texture == 1, texture == 3, texture == 2, texture == 4],
        [rng.uniform(0.12, 0.25, n), rng.uniform(0.12, 0.25, n), rng.uniform(0.2, 0.35, n),
         rng.uniform(0.03, 0.08, n)],  # fmt: skip
        0.0,
    )
    return Labels(
        colour=colour.astype(np.int64),
        shape=shape.astype(np.int64),
        position=position.astype(np.int64),
        size=size.astype(np.int64),
        brightness=brightness.astype(np.float32),
        bucket=bucket.astype(np.int64),
        texture=texture.astype(np.int64),
        colour_stated=colour_stated,
        size_stated=size_stated,
        position_stated=position_stated,
        cx=cx.astype(np.float32),
        cy=cy.astype(np.float32),
        radius=radius.astype(np.float32),
        rgb=rgb.astype(np.float32),
        texture_variant=texture_variant.astype(np.int64),
        texture_scale=texture_scale.astype(np.int64),
        texture_phase=texture_phase.astype(np.int64),
        texture_amp=texture_amp.astype(np.float32),
    )


_GRID = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
_IY, _IX = np.meshgrid(*(np.arange(IMAGE_SIZE, dtype=np.int32),) * 2, indexing="ij")


def render_backgrounds(labels: Labels, rng: np.random.Generator) -> np.ndarray:
    """Grey backgrounds ``(n, 32, 32)`` float32 with their textures (mean-preserving).

    Stripes and checkers are +-amp around the nominal level; dots are 1 px spots whose
    contrast is balanced by the other pixels so the image mean is exact before clipping; noise
    is a zero-mean Gaussian field. Clipping to [0, 1] only happens inside the dark or bright
    bucket and moves the mean towards the middle by less than the bucket's width.
    """
    n = len(labels)
    b = labels.brightness.astype(np.float32)[:, None, None]
    bg = np.broadcast_to(b, (n, IMAGE_SIZE, IMAGE_SIZE)).copy()
    amp = labels.texture_amp[:, None, None]
    phase = labels.texture_phase.astype(np.int32)
    scale = labels.texture_scale.astype(np.int32)[:, None, None]
    for kind in (1, 2, 3, 4):
        rows = np.flatnonzero(labels.texture == kind)
        if rows.size == 0:
            continue
        xs = _IX[None] + phase[rows, 0, None, None]
        ys = _IY[None] + phase[rows, 1, None, None]
        w, a = scale[rows], amp[rows]
        if kind == 1:  # stripes of width w (1-2 px) in one of four orientations
            v = labels.texture_variant[rows][:, None, None]
            coord = np.select([v == 0, v == 1, v == 2], [ys, xs, xs + ys], xs - ys + 64)
            pattern = np.where((coord // w) % 2 == 0, 1.0, -1.0).astype(np.float32)
            bg[rows] += a * pattern
        elif kind == 3:  # checkers with cells of w px
            pattern = np.where((xs // w + ys // w) % 2 == 0, 1.0, -1.0).astype(np.float32)
            bg[rows] += a * pattern
        elif kind == 2:  # 1 px dots on a grid of period 2 + w (3-4 px), contrasting
            q = 2 + w
            mask = ((xs % q == 0) & (ys % q == 0)).astype(np.float32)
            frac = mask.mean(axis=(1, 2), keepdims=True)
            sign = np.where(b[rows] < 0.5, 1.0, -1.0).astype(np.float32)
            bg[rows] += sign * a * (mask - frac)
        else:  # low-amplitude pixel noise, zero mean per image
            noise = rng.standard_normal((rows.size, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
            noise -= noise.mean(axis=(1, 2), keepdims=True)
            bg[rows] += a * noise
    return np.clip(bg, 0.0, 1.0, out=bg)


def shape_sdf(labels: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (pixels, negative inside) of each shape, and of its outer boundary.

    The two differ only for rings (whose hole is outside the shape but inside the outline).
    Squares have the circle's area; triangles point up, centred on their bounding box.
    """
    dx = _GRID[None, None, :] - labels.cx[:, None, None]
    dy = _GRID[None, :, None] - labels.cy[:, None, None]
    r = labels.radius[:, None, None]
    dist = np.sqrt(dx * dx + dy * dy)
    sd = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    outer = np.empty_like(sd)
    for k, name in enumerate(SHAPES):
        rows = np.flatnonzero(labels.shape == k)
        if rows.size == 0:
            continue
        ddx, ddy, rr, dd = dx[rows], dy[rows], r[rows], dist[rows]
        if name == "circle":
            d = o = dd - rr
        elif name == "square":
            d = o = np.maximum(np.abs(ddx), np.abs(ddy)) - SQUARE_HALF_SIDE * rr
        elif name == "triangle":
            big_r = TRIANGLE_CIRCUMRADIUS * rr
            qy = ddy - big_r / 4  # centroid sits big_r / 4 below the bounding-box centre
            s3 = np.float32(np.sqrt(3.0) / 2)
            edge = qy / 2 + big_r / 2
            d = o = np.maximum(np.maximum(qy - big_r / 2, -s3 * ddx - edge), s3 * ddx - edge)
        else:  # ring
            mid, half = (1 + RING_INNER) / 2 * rr, (1 - RING_INNER) / 2 * rr
            d = np.abs(dd - mid) - half
            o = dd - rr
        sd[rows], outer[rows] = d, o
    return sd, outer


def render(labels: Labels, rng: np.random.Generator) -> np.ndarray:
    """Pixels ``(n, 3, 32, 32)`` float32 in [0, 1] of the scenes described by ``labels``.

    Edges are anti-aliased from signed distances; backgrounds lighter than 0.5 get a 1 px dark
    outline around the shape. ``rng`` only feeds the noise texture.
    """
    if len(labels) == 0:
        raise ValueError("labels is empty")
    bg = render_backgrounds(labels, rng)
    sd, outer = shape_sdf(labels)
    alpha = np.clip(np.float32(0.5) - sd, 0.0, 1.0)
    rows = np.flatnonzero(labels.brightness > OUTLINE_ABOVE)
    if rows.size:  # outline: composite a dark 1 px band around the outer boundary
        band = np.clip(np.float32(1.5) - outer[rows], 0.0, 1.0)
        bg[rows] += (np.float32(OUTLINE_VALUE) - bg[rows]) * band
    img = np.empty((len(labels), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for c in range(3):
        colour = labels.rgb[:, c, None, None].astype(np.float32)
        np.multiply(colour - bg, alpha, out=img[:, c])
        img[:, c] += bg
    return img


def captions(labels: Labels) -> list[str]:
    """The caption of each image, from its attributes and ``*_stated`` flags."""
    out = []
    for i in range(len(labels)):
        words = ["a"]
        if labels.size_stated[i]:
            words.append(SIZES[labels.size[i]])
        if labels.colour_stated[i]:
            words.append(COLOURS[labels.colour[i]])
        words.append(SHAPES[labels.shape[i]])
        if labels.position_stated[i]:
            words.append(POSITION_PHRASES[labels.position[i]])
        bucket, texture = int(labels.bucket[i]), int(labels.texture[i])
        if bucket != 1 or texture in TEXTURE_WORDS:
            words.append("on a")
            if bucket != 1:
                words.append(BRIGHTNESS_BUCKETS[bucket])
            if texture in TEXTURE_WORDS:
                words.append(TEXTURE_WORDS[texture])
            words.append("background")
        out.append(" ".join(words))
    return out


def parse_caption(caption: str) -> dict[str, int]:
    """The attributes a caption states, as class indices (keys as in :class:`Labels`).

    ``"a big circle on a dark background"`` -> ``{"size": 1, "shape": 0, "bucket": 0}``.
    A medium background is never stated, so ``bucket`` appears only for "dark"/"bright".
    The empty caption (used for classifier-free guidance) states nothing. Raises ValueError
    for unknown words or word orders outside the grammar.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    tokens = caption.split()
    if not tokens:
        return {}
    unknown = [t for t in tokens if t not in WORDS]
    if unknown:
        raise ValueError(f"caption {caption!r} has words outside the vocabulary: {unknown}")
    out: dict[str, int] = {}
    i = 0

    def fail(reason: str) -> ValueError:
        return ValueError(f"caption {caption!r} does not follow the grammar: {reason}")

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    if peek() != "a":
        raise fail("it must start with 'a'")
    i += 1
    if peek() in SIZES:
        out["size"] = SIZES.index(tokens[i])
        i += 1
    if peek() in COLOURS:
        out["colour"] = COLOURS.index(tokens[i])
        i += 1
    if peek() not in SHAPES:
        raise fail("expected [size] [colour] shape after 'a'")
    out["shape"] = SHAPES.index(tokens[i])
    i += 1
    phrase = " ".join(tokens[i : i + 3])
    if phrase in POSITION_PHRASES:
        out["position"] = POSITION_PHRASES.index(phrase)
        i += 3
    if i < len(tokens):
        if tokens[i : i + 2] != ["on", "a"] or tokens[-1] != "background":
            raise fail("expected 'on a [dark|bright] [striped|dotted|checkered] background'")
        middle = tokens[i + 2 : -1]
        if middle and middle[0] in ("dark", "bright"):
            out["bucket"] = BRIGHTNESS_BUCKETS.index(middle.pop(0))
        if middle and middle[0] in TEXTURE_WORDS.values():
            word = middle.pop(0)
            out["texture"] = next(k for k, v in TEXTURE_WORDS.items() if v == word)
        if middle or ("bucket" not in out and "texture" not in out):
            raise fail("the background phrase needs dark/bright and/or one texture word")
    return out


def generate(
    n: int,
    seed: int | Sequence[int] = 0,
    split: str = "train",
    config: GrammarConfig = DEFAULT_CONFIG,
) -> CaptionedImages:
    """``n`` seeded captioned images of the testbed distribution.

    ``seed`` is an int or a sequence of ints (e.g. ``(seed, step)`` for a training stream);
    the split's code is mixed in, so ``"train"``, ``"heldout"`` and ``"all"`` draws with the
    same seed are independent. ``"train"`` never contains ``config.held_out`` combinations,
    ``"heldout"`` contains only them (with colour and position always stated), ``"all"`` is
    the unrestricted distribution (for training evaluators). Same arguments, same bytes.
    """
    _check_n(n)
    rng, key = _seed_sequence(seed, split)
    labels = sample_labels(n, rng, split, config)
    return CaptionedImages(render(labels, rng), captions(labels), labels, key, split)


def sample_for_prompt(
    prompt: str, n: int, seed: int | Sequence[int] = 0, config: GrammarConfig = DEFAULT_CONFIG
) -> CaptionedImages:
    """``n`` images from the data distribution conditioned on ``prompt`` (any grammatical caption).

    The stated attributes are fixed; the rest follow the grammar given their absence (see
    :func:`sample_labels`), so ``sample_for_prompt("a circle", ...)`` shows red circles 95 % of
    the time. The reference distribution for a prompt's caption accuracy or feature FID.
    Held-out combinations are allowed (this is the ``"all"`` distribution).
    """
    _check_n(n)
    fixed = parse_caption(prompt)
    if not fixed:
        raise ValueError("prompt must name a shape; use generate() for unconditional samples")
    rng, key = _seed_sequence(seed, "all")
    labels = sample_labels(n, rng, "all", config, fixed=fixed)
    return CaptionedImages(render(labels, rng), [prompt] * n, labels, key, "all")


# ---------------------------------------------------------------------------------------------
# Tokenizer


class MiniTokenizer(PreTrainedTokenizer):
    """Word-level ``transformers`` tokenizer of the testbed grammar.

    Ids: ``<pad>`` = 0, the :data:`WORDS` as 1..25, ``<bos>`` = 26, ``<eos>`` = 27 (the two
    highest, as in CLIP's vocabulary). ``tokenizer(prompts, padding="max_length",
    max_length=16, truncation=True, return_tensors="pt")`` behaves like ``CLIPTokenizer`` in
    Stable Diffusion pipelines; unknown words raise ValueError instead of mapping to an unknown
    token. ``save_pretrained``/``from_pretrained`` work (the vocabulary is fixed; a saved
    ``vocab.json`` is checked against it). :meth:`ids` is a fast path for training loops.
    """

    vocab_files_names = {"vocab_file": "vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, **kwargs: Any) -> None:
        tokens = (PAD_TOKEN, *WORDS, BOS_TOKEN, EOS_TOKEN)
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self._id_to_token = tokens
        if vocab_file is not None:
            import json

            with open(vocab_file, encoding="utf-8") as handle:
                saved = json.load(handle)
            if saved != self.vocab:
                raise ValueError(f"{vocab_file} does not hold the MiniSD vocabulary")
        kwargs.setdefault("model_max_length", MAX_LENGTH)
        kwargs.setdefault("pad_token", PAD_TOKEN)
        kwargs.setdefault("bos_token", BOS_TOKEN)
        kwargs.setdefault("eos_token", EOS_TOKEN)
        kwargs.setdefault("special_tokens_pattern", "bos_eos")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return text.split()

    def _convert_token_to_id(self, token: str) -> int:
        if token not in self.vocab:
            raise ValueError(f"word {token!r} is not in the MiniSD vocabulary {list(WORDS)}")
        return self.vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= int(index) < len(self._id_to_token):
            raise ValueError(f"token id {index} is outside 0..{len(self._id_to_token) - 1}")
        return self._id_to_token[int(index)]

    def ids(self, prompts: str | Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
        """Padded ``(n, max_length)`` int64 ids ``<bos> words <eos> <pad>...``, fast.

        Same ids as ``self(prompts, padding="max_length", max_length=max_length,
        return_tensors="pt").input_ids``; raises ValueError for a caption that does not fit.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<bos> and <eos>), got {max_length}")
        out = np.zeros((len(prompts), max_length), dtype=np.int64)
        bos, eos, vocab = self.vocab[BOS_TOKEN], self.vocab[EOS_TOKEN], self.vocab
        for row, prompt in enumerate(prompts):
            words = prompt.split()
            if len(words) + 2 > max_length:
                raise ValueError(f"{prompt!r} has {len(words)} words; max_length {max_length}"
                                 f" leaves room for only {max_length - 2}")  # fmt: skip
            try:
                ids = [bos, *(vocab[w] for w in words), eos]
            except KeyError as err:
                raise ValueError(f"word {err.args[0]!r} is not in the MiniSD vocabulary") from None
            out[row, : len(ids)] = ids
        return torch.from_numpy(out)


def clip_text_config(
    tokenizer: MiniTokenizer | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int | None = None,
    projection_dim: int | None = None,
) -> CLIPTextConfig:
    """A tiny ``CLIPTextConfig`` wired to :class:`MiniTokenizer` (card: 64 wide, 2 layers).

    The special-token ids are set so ``CLIPTextModel`` pools at ``<eos>``; ``vocab_size`` is
    the tokenizer's (28) and ``max_position_embeddings`` is :data:`MAX_LENGTH`.
    """
    if hidden_size < 1 or num_layers < 1 or num_heads < 1:
        raise ValueError("hidden_size, num_layers and num_heads must be positive")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    tok = tokenizer or MiniTokenizer()
    return CLIPTextConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        projection_dim=projection_dim or hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
