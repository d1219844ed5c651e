"""A pytest plugin (``-p lib.book.pytest_chapters``) for executing the chapters with nbmake.

nbmake runs one test item per notebook. For each chapter this plugin

* fails the chapter when a cell wrote to stderr (the book build, run with warnings as errors,
  would reject the page minutes later; this says so when the chapter runs);
* measures its wall seconds and its kernel's CPU seconds (the CPU time of the child processes
  that the test reaped: the kernel and anything the kernel itself waited for);
* removes the ipywidgets state that execution leaves in the notebook's metadata: the static book
  shows pre-rendered explorables, and that state would make the page load widget scripts from a
  CDN;
* saves a passing run for reuse (:mod:`lib.book.execution_cache`) under the key ``stage`` wrote;

and at the end merges the timings into ``_build/timings.json`` for the scoreboard. Under
pytest-xdist the controller does the bookkeeping; the workers only measure.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
from pathlib import Path

import nbformat
import pytest

from lib.book import execution_cache
from lib.book.build import CLAIMS_DIR, REPO_ROOT, TIMINGS_JSON, TO_EXECUTE_JSON

_timings: dict[str, dict] = {}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stderr_outputs(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """``(cell index, text)`` of every stderr stream output not tagged ``remove-stderr``.

    MyST-NB turns each such output into a build warning (``mystnb.stderr``).
    """
    found = []
    for index, cell in enumerate(nb.cells):
        if "remove-stderr" in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                found.append((index, "".join(output.get("text", ""))))
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):  # noqa: ANN001, ANN201 (pytest's hook signature)
    before = _children_cpu_seconds()
    try:
        result = yield
    finally:
        item.user_properties.append(("cpu_seconds", round(_children_cpu_seconds() - before, 1)))
    path = Path(str(item.fspath))
    if path.suffix == ".ipynb" and path.exists():
        noisy = stderr_outputs(nbformat.read(path, as_version=4))
        if noisy:
            where = "; ".join(f"cell {i}: {text.strip()[:300]!r}" for i, text in noisy)
            raise AssertionError(f"{path.name} wrote to stderr, which fails the book build "
                                 f"(silence it at its source): {where}")  # fmt: skip
    return result


def strip_widget_state(path: Path) -> None:
    """Drop ``metadata.widgets`` (saved ipywidgets state) from an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        nbformat.write(nb, path)


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001
    if report.when != "call" or ".ipynb" not in report.nodeid:
        return
    if _is_worker:  # under xdist the controller gets every report and keeps the books
        return
    notebook = REPO_ROOT / report.nodeid.split("::")[0]
    if not notebook.exists():  # nodeids are relative to the rootdir, which is the repository
        notebook = Path(report.nodeid.split("::")[0]).resolve()
    slug = notebook.stem
    cpu = dict(report.user_properties).get("cpu_seconds")
    timing = {
        "seconds": round(report.duration, 1),
        "cpu_seconds": cpu,
        "outcome": report.outcome,
        "executed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _timings[slug] = timing
    if notebook.exists():
        strip_widget_state(notebook)
    planned = json.loads(TO_EXECUTE_JSON.read_text()) if TO_EXECUTE_JSON.exists() else {}
    claims = CLAIMS_DIR / f"{slug}.json"
    plan = planned.get(slug)
    # only the staged book's runs are saved (not ``make chapter``'s, which may use another seed)
    if report.passed and plan and notebook == REPO_ROOT / plan["notebook"]:
        execution_cache.save_run(slug, plan["key"], notebook,
                                 claims if claims.exists() else None, timing)  # fmt: skip


_is_worker = False


def pytest_configure(config) -> None:  # noqa: ANN001
    global _is_worker
    _is_worker = hasattr(config, "workerinput")


def pytest_sessionfinish(session) -> None:  # noqa: ANN001
    if not _timings or _is_worker:
        return
    existing = json.loads(TIMINGS_JSON.read_text()) if TIMINGS_JSON.exists() else {}
    existing.update(_timings)
    TIMINGS_JSON.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS_JSON.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
