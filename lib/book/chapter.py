"""Per-chapter machinery: seeds, the ``SCALE`` setting, and claim checks.

A chapter starts with ``chapter = Chapter("slug")`` and ends with claim checks::

    chapter.check("SNS needs a tenth of Sinkhorn's iterations", paper="Table 1",
                  measured=ratio, at_most=0.1)

Every check is displayed, recorded in ``_build/claims/<slug>.json`` (the scoreboard and
``_build/reproduction.json`` are assembled from these files), and raises
:class:`ClaimCheckFailed` when the comparison fails, so that the notebook, and with it
``make test``, fails.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib.book.papers import REPO_ROOT, Paper, paper_by_slug
from lib.book.style import use_book_style

SCALES = ("mini", "paper")


class ClaimCheckFailed(AssertionError):
    """A measured value does not satisfy the comparison a chapter claims for it."""


def book_seed() -> int:
    """The seed every chapter uses: the environment variable ``BOOK_SEED`` (default 0)."""
    raw = os.environ.get("BOOK_SEED", "0").strip() or "0"
    try:
        seed = int(raw)
    except ValueError:
        raise ValueError(f"BOOK_SEED must be a non-negative integer, got {raw!r}") from None
    if seed < 0:
        raise ValueError(f"BOOK_SEED must be a non-negative integer, got {seed}")
    return seed


def seed_everything(seed: int | None = None) -> int:
    """Seed python's ``random``, numpy's global generator and torch; return the seed used.

    With ``seed=None`` the seed comes from :func:`book_seed`. Chapters should still draw
    from explicit generators (``np.random.default_rng(seed)``) where they can.
    """
    seed = book_seed() if seed is None else int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seeds code that uses the legacy global RNG)
    try:
        import torch
    except ImportError:  # torch is pinned in the lock; a chapter without it still runs
        return seed
    torch.manual_seed(seed)
    return seed


def book_scale() -> str:
    """``"mini"`` (default, a 2-core CPU in about a minute) or ``"paper"``, from ``BOOK_SCALE``."""
    scale = os.environ.get("BOOK_SCALE", "mini").strip() or "mini"
    if scale not in SCALES:
        raise ValueError(f"BOOK_SCALE must be one of {SCALES}, got {scale!r}")
    return scale


def best_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``: the same chapter code runs on both."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def results_dir() -> Path:
    """Where claim records go: ``BOOK_RESULTS_DIR`` or ``<repo>/_build/claims``."""
    return Path(os.environ.get("BOOK_RESULTS_DIR", REPO_ROOT / "_build" / "claims"))


@dataclass
class ClaimRecord:
    claim: str
    paper: str
    measured: Any
    passed: bool
    comparison: str
    shown: str = ""  # the measured value as displayed (formatted); not part of the JSON record
    # "check" (a paper's claim; must hold), "cross-check" (the lib method against something
    # independent of it; must hold) or "not reproduced" (recorded, never raises)
    kind: str = "check"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"a measured value must be a number, bool or string, got {type(value)}")


def _format(value: Any, fmt: str | None) -> str:
    if isinstance(value, bool) or fmt is None or not isinstance(value, (int, float, np.number)):
        return str(value)
    return format(value, fmt)


def compare(
    measured: Any,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    above: float | None = None,
    between: tuple[float, float] | None = None,
    equals: Any = None,
    fmt: str | None = None,
) -> tuple[bool, str]:
    """Evaluate exactly one comparison; return ``(passed, "description")``."""
    given = {
        k: v
        for k, v in dict(
            at_most=at_most, at_least=at_least, below=below, above=above,
            between=between, equals=equals,
        ).items()
        if v is not None
    }
    if len(given) != 1:
        raise ValueError(
            "a claim check needs exactly one comparison among at_most, at_least, below, "
            f"above, between, equals; got {sorted(given) or 'none'}"
        )
    (kind, target), = given.items()
    if kind == "equals":
        return bool(measured == target), f"= {_format(target, fmt)}"
    if isinstance(measured, bool) or not isinstance(measured, (int, float, np.number)):
        raise TypeError(f"comparison {kind!r} needs a number, got {measured!r}")
    value = float(measured)
    if math.isnan(value):
        return False, f"{kind} (measured NaN)"
    if kind == "at_most":
        return value <= target, f"≤ {_format(target, fmt)}"
    if kind == "at_least":
        return value >= target, f"≥ {_format(target, fmt)}"
    if kind == "below":
        return value < target, f"< {_format(target, fmt)}"
    if kind == "above":
        return value > target, f"> {_format(target, fmt)}"
    lo, hi = between
    if lo > hi:
        raise ValueError(f"between=(lo, hi) needs lo <= hi, got {between}")
    return lo <= value <= hi, f"in [{_format(lo, fmt)}, {_format(hi, fmt)}]"


def _require(record: Any, kind: str, what: str, source: str, measured: Any,
             fmt: str | None) -> bool:  # fmt: skip
    """``True`` for a passed record; otherwise raise :class:`ClaimCheckFailed` saying why."""
    if not record.passed:
        raise ClaimCheckFailed(f"{kind} failed: {what!r}: measured {_format(measured, fmt)}, "
                               f"expected {record.comparison} ({source})")  # fmt: skip
    return True


@dataclass
class Chapter:
    """The running chapter: its paper, seed, scale, and the claim checks made so far.

    Creating it seeds everything (:func:`seed_everything`), applies the book's figure style
    and starts a fresh claim record for the chapter.
    """

    slug: str
    paper: Paper = field(init=False)
    seed: int = field(init=False)
    scale: str = field(init=False)
    device: str = field(init=False)
    claims: list[ClaimRecord] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.paper = paper_by_slug(self.slug)
        self.seed = seed_everything()
        self.scale = book_scale()
        self.device = best_device()
        self._started = time.perf_counter()
        use_book_style()
        self._write()

    @property
    def record_path(self) -> Path:
        return results_dir() / f"{self.slug}.json"

    def rng(self, stream: int = 0) -> np.random.Generator:
        """An independent numpy generator for this chapter's seed (``stream`` separates uses)."""
        return np.random.default_rng([self.seed, stream])

    def check(
        self,
        claim: str,
        *,
        paper: str,
        measured: Any,
        fmt: str | None = ".3g",
        **comparison: Any,
    ) -> bool:
        """State a claim check: the claim, the paper's value, what we measured, the comparison.

        Exactly one comparison keyword: ``at_most``, ``at_least``, ``below``, ``above``,
        ``between=(lo, hi)`` or ``equals``. The check is displayed and recorded; a failed
        check raises :class:`ClaimCheckFailed` after it has been recorded.
        """
        record = self._record(claim, paper, measured, fmt, "check", comparison)
        return _require(record, "claim check", claim, f"paper: {paper}", measured, fmt)

    def cross_check(
        self,
        what: str,
        *,
        reference: str,
        measured: Any,
        fmt: str | None = ".3g",
        **comparison: Any,
    ) -> bool:
        """Check the chapter's ``lib`` method against something independent of it.

        ``what`` says what is compared (for example "SNS plan vs POT's ot.sinkhorn, max
        abs difference"); ``reference`` names the independent side: a reference library, brute
        force on a tiny instance, a closed form, finite differences, or the official code's rule
        on a worked example. A comparison that agrees with the code by construction is not a
        cross-check. Recorded with kind ``"cross-check"`` (the scoreboard counts them per
        chapter); like :meth:`check`, a failure raises :class:`ClaimCheckFailed`.
        """
        record = self._record(what, reference, measured, fmt, "cross-check", comparison)
        return _require(record, "cross-check", what, f"against: {reference}", measured, fmt)

    def not_reproduced(
        self,
        claim: str,
        *,
        paper: str,
        measured: Any,
        fmt: str | None = ".3g",
        **comparison: Any,
    ) -> bool:
        """Record a claim of the paper that the miniature does not reproduce, with the measurement.

        Same arguments as :meth:`check`; the comparison is the paper's claim. The outcome is
        displayed and recorded (the scoreboard lists it as "does not reproduce") but never
        raises, so the chapter's evidence reaches the page. Use it only after honest effort, and
        say in the text why the claim fails here. Returns whether the comparison held this time.
        """
        return self._record(claim, paper, measured, fmt, "not reproduced", comparison).passed

    def _record(self, claim: str, paper: str, measured: Any, fmt: str | None, kind: str,
                comparison: dict[str, Any]) -> ClaimRecord:  # fmt: skip
        """Compare, then record, write and display one claim; the callers decide what follows."""
        if not claim.strip() or not paper.strip():
            raise ValueError("a claim check needs the claim in words and the paper's statement")
        passed, description = compare(measured, fmt=fmt, **comparison)
        record = ClaimRecord(claim, paper, _jsonable(measured), bool(passed), description,
                             _format(measured, fmt), kind=kind)  # fmt: skip
        self.claims.append(record)
        self._write()
        _display_claim(record)
        return record

    def summary(self) -> None:
        """Display every claim check of the chapter as one table (the chapter's last cell)."""
        from IPython.display import Markdown, display

        rows = ["| | claim | paper | measured | needed |", "|---|---|---|---|---|"]
        for r in self.claims:
            rows.append(f"| {claim_mark(r.kind, r.passed)} | {r.claim} | {r.paper} | {r.shown} | "
                        f"{r.comparison} |")  # fmt: skip
        elapsed = time.perf_counter() - self._started
        checks = [r for r in self.claims if r.kind == "check"]
        crosses = [r for r in self.claims if r.kind == "cross-check"]
        missing = sum(r.kind == "not reproduced" for r in self.claims)
        rows.append("")
        rows.append(
            f"{sum(r.passed for r in checks)} of {len(checks)} claim checks passed"
            + f", {sum(r.passed for r in crosses)} of {len(crosses)} cross-checks"
            + (f"; {missing} claim(s) of the paper recorded as not reproduced" if missing else "")
            + f" (seed {self.seed}, scale `{self.scale}`, {elapsed:.0f} s since the chapter"
            " started)."
        )
        display(Markdown("\n".join(rows)))

    def _write(self) -> None:
        path = self.record_path
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "slug": self.slug,
            "seed": self.seed,
            "scale": self.scale,
            "claims": [
                {"claim": r.claim, "paper": r.paper, "measured": r.measured,
                 "passed": r.passed, "comparison": r.comparison, "kind": r.kind}
                for r in self.claims
            ],
        }
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def claim_mark(kind: str, passed: bool) -> str:
    """The scoreboard's symbol: a check that holds or fails, a cross-check that agrees (🔁), or a
    claim that does not reproduce (held this time, or not)."""
    if kind == "not reproduced":
        return "⚠️✅" if passed else "⚠️"
    if kind == "cross-check":
        return "🔁" if passed else "❌"
    return "✅" if passed else "❌"


def _display_claim(record: ClaimRecord) -> None:
    from IPython.display import Markdown, display

    if record.kind == "not reproduced":
        mark = ("⚠️ **does not reproduce in general, but held this time**" if record.passed
                else "⚠️ **does not reproduce**")  # fmt: skip
        needed = "the paper's claim needs"
    elif record.kind == "cross-check":
        mark = "🔁 **cross-check agrees**" if record.passed else "❌ **cross-check disagrees**"
        display(
            Markdown(
                f"{mark}: {record.claim}. Against: {record.paper}. "
                f"Measured: **{record.shown}** (needed {record.comparison})."
            )
        )
        return
    else:
        mark = "✅ **holds**" if record.passed else "❌ **fails**"
        needed = "needed"
    display(
        Markdown(
            f"{mark}: {record.claim}. Paper: {record.paper}. "
            f"Measured: **{record.shown}** ({needed} {record.comparison})."
        )
    )


def show_source(obj: Any, start: str | None = None, stop: str | None = None) -> None:
    """Display the source of a ``lib`` function or class: the code the book shows is the code
    that runs (no simplified copy that could drift).

    ``start`` and ``stop`` cut out an excerpt: from the first line containing ``start`` up to,
    not including, the first later line containing ``stop``.
    """
    import inspect

    from IPython.display import Markdown, display

    lines = inspect.getsource(obj).rstrip().splitlines()
    first = 0
    if start is not None:
        hits = [i for i, line in enumerate(lines) if start in line]
        if not hits:
            raise ValueError(f"{start!r} does not occur in the source of {obj.__qualname__}")
        first = hits[0]
    last = len(lines)
    if stop is not None:
        hits = [i for i, line in enumerate(lines) if stop in line and i > first]
        if not hits:
            raise ValueError(f"{stop!r} does not occur after {start!r} in {obj.__qualname__}")
        last = hits[0]
    excerpt = lines[first:last]
    indent = min(len(x) - len(x.lstrip()) for x in excerpt if x.strip())
    code = "\n".join(x[indent:] for x in excerpt)
    module = inspect.getmodule(obj)
    where = f"{module.__name__}.{obj.__qualname__}" if module else obj.__qualname__
    part = "" if (start is None and stop is None) else " (excerpt)"
    display(Markdown(f"From `{where}`{part}:\n\n```python\n{code}\n```"))
