"""Machinery shared by every chapter: seeds, scale, claim checks, explorables, figure style."""

from lib.book.chapter import (
    Chapter,
    ClaimCheckFailed,
    best_device,
    book_scale,
    book_seed,
    compare,
    seed_everything,
    show_source,
)
from lib.book.explore import explorable, progress, static_mode
from lib.book.papers import Paper, load_papers, paper_by_slug
from lib.book.style import PALETTE, method_colors, use_book_style

__all__ = [
    "Chapter",
    "ClaimCheckFailed",
    "PALETTE",
    "Paper",
    "best_device",
    "book_scale",
    "book_seed",
    "compare",
    "explorable",
    "load_papers",
    "method_colors",
    "paper_by_slug",
    "progress",
    "seed_everything",
    "show_source",
    "static_mode",
    "use_book_style",
]
