"""The book's paper list (``book/papers.tsv``) and where each chapter lives."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO_ROOT / "book"
PAPERS_TSV = BOOK_DIR / "papers.tsv"

#: Parts in reading order; ``papers.tsv`` names each paper's part with one of these.
PART_ORDER = (
    "Optimization & learning theory",
    "Training dynamics & generalization",
    "Generative models",
    "Topology & geometry",
    "Vision, graphs & science",
    "Robustness, verification & explanation",
    "Decision making & causality",
)


@dataclass(frozen=True)
class Paper:
    """One row of ``papers.tsv``."""

    number: int
    slug: str
    arxiv: str | None
    part: str
    title: str

    @property
    def part_folder(self) -> str:
        return part_folder(self.part)

    @property
    def chapter_md(self) -> Path:
        """Where this paper's chapter source lives (it may not exist yet)."""
        return BOOK_DIR / self.part_folder / f"{self.slug}.md"

    @property
    def docname(self) -> str:
        """The chapter's document name in the book, relative to the repository root."""
        return f"book/{self.part_folder}/{self.slug}"

    @property
    def arxiv_url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None


def part_folder(part: str) -> str:
    """Folder name of a book part: ``"Topology & geometry"`` -> ``"topology-geometry"``."""
    if part not in PART_ORDER:
        raise ValueError(f"unknown book part {part!r}; expected one of {PART_ORDER}")
    return re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-")


def load_papers(path: Path = PAPERS_TSV) -> list[Paper]:
    """All papers of the book, in ``papers.tsv`` order."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    papers = []
    for row in rows:
        arxiv = row["arxiv"].strip()
        papers.append(
            Paper(
                number=int(row["n"]),
                slug=row["slug"].strip(),
                arxiv=None if arxiv in ("", "-") else arxiv,
                part=row["part"].strip(),
                title=row["title"].strip(),
            )
        )
    return papers


def paper_by_slug(slug: str) -> Paper:
    """The ``papers.tsv`` row of a chapter slug, with a clear error for a typo."""
    papers = {p.slug: p for p in load_papers()}
    if slug not in papers:
        raise KeyError(f"no paper with slug {slug!r} in {PAPERS_TSV.name}; known: {sorted(papers)}")
    return papers[slug]
