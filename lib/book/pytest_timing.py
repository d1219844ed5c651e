"""A pytest plugin (``-p lib.book.pytest_timing``) that records each chapter's execution time.

nbmake runs one test item per notebook; this writes ``_build/timings.json`` mapping the
chapter slug (the notebook's file stem) to its wall seconds and outcome, for the scoreboard.
"""

from __future__ import annotations

import json
from pathlib import Path

from lib.book.build import TIMINGS_JSON

_timings: dict[str, dict] = {}


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 (pytest's hook signature)
    if report.when != "call" or ".ipynb" not in report.nodeid:
        return
    slug = Path(report.nodeid.split("::")[0]).stem
    _timings[slug] = {"seconds": round(report.duration, 1), "outcome": report.outcome}


def pytest_sessionfinish(session) -> None:  # noqa: ANN001
    if not _timings:
        return
    existing = json.loads(TIMINGS_JSON.read_text()) if TIMINGS_JSON.exists() else {}
    existing.update(_timings)
    TIMINGS_JSON.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS_JSON.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
