"""Incremental execution: a chapter's key follows exactly what its run depends on."""

import json

import pytest

from lib.book import execution_cache as cache
from lib.book.papers import REPO_ROOT


def _chapter(tmp_path, code: str):
    md = tmp_path / "demo.md"
    md.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "# Demo\n\n```{code-cell} ipython3\n"
        f"{code}\n```\n"
    )
    return md


def _rel(paths):
    return {p.relative_to(REPO_ROOT).as_posix() for p in paths}


def test_dependencies_follow_lib_imports_transitively_with_parent_packages_and_data():
    deps = _rel(cache.lib_dependencies("from lib.diffusion.testbed import loader\nimport numpy"))
    assert {"lib/__init__.py", "lib/diffusion/__init__.py", "lib/diffusion/testbed/__init__.py",
            "lib/diffusion/testbed/loader.py"} <= deps  # fmt: skip
    assert "lib/diffusion/sampling.py" in deps  # imported by the testbed's modules
    assert "lib/diffusion/testbed/weights/manifest.json" in deps  # data beside the package
    assert not any(d.startswith("lib/book/") for d in deps)  # not imported by that code
    ot = _rel(cache.lib_dependencies("from lib.ot import sinkhorn"))
    assert {"lib/ot/__init__.py", "lib/ot/entropic.py"} <= ot  # through the package's imports
    assert not any("diffusion" in d for d in ot)


def test_key_changes_with_source_settings_and_lib_but_not_with_unrelated_lib(tmp_path,
                                                                              monkeypatch):
    md = _chapter(tmp_path, "from lib.ot import sinkhorn\nx = 1")
    monkeypatch.delenv("BOOK_SEED", raising=False)
    key = cache.chapter_key(md)
    assert cache.chapter_key(md) == key
    monkeypatch.setenv("BOOK_SEED", "3")
    assert cache.chapter_key(md) != key
    monkeypatch.delenv("BOOK_SEED")
    inputs = cache.chapter_inputs(md)
    assert md in inputs and REPO_ROOT / "requirements.lock" in inputs
    assert REPO_ROOT / "lib/ot/entropic.py" in inputs
    assert REPO_ROOT / "lib/diffusion/sampling.py" not in inputs
    md.write_text(md.read_text().replace("x = 1", "x = 2"))
    assert cache.chapter_key(md) != key


def test_a_saved_run_is_found_only_under_its_key(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path / "executed")
    nb, claims = tmp_path / "demo.ipynb", tmp_path / "demo.json"
    nb.write_text("{}")
    claims.write_text(json.dumps({"claims": []}))
    assert cache.saved_run("demo", "k1") is None
    cache.save_run("demo", "k1", nb, claims, {"seconds": 1.0})
    assert cache.saved_run("demo", "k1") == tmp_path / "executed" / "demo"
    assert cache.saved_run("demo", "k2") is None
    with pytest.raises(FileNotFoundError, match="cannot save the run of demo"):
        cache.save_run("demo", "k1", tmp_path / "missing.ipynb", claims, {})


def test_a_page_without_a_claim_record_is_reused_too(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_DIR", tmp_path / "executed")
    nb = tmp_path / "appendix.ipynb"
    nb.write_text("{}")
    cache.save_run("appendix", "k1", nb, None, {"seconds": 1.0})
    folder = cache.saved_run("appendix", "k1")
    assert folder is not None and not (folder / "claims.json").exists()
