"""One figure style for the whole book."""

from __future__ import annotations

import matplotlib as mpl

#: Okabe-Ito colours: distinguishable for colour-blind readers and in greyscale print.
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # green
    "#CC79A7",  # purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

BOOK_RC = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (called by :class:`lib.book.Chapter`)."""
    mpl.rcParams.update(BOOK_RC)


def method_colors(*methods: str) -> dict[str, str]:
    """A fixed colour per method name, so one method keeps its colour across a chapter."""
    if len(methods) > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE)} methods per chapter, got {len(methods)}")
    return dict(zip(methods, PALETTE))
