"""Incremental execution: which chapters must run again, and the saved runs of those that need not.

A chapter's run depends on its source, on every ``lib`` module it imports (followed through
``lib``'s own imports, with the data files, such as shipped weights, that sit beside them), on the
paper list, on the pinned environment (``requirements.lock``) and on the ``BOOK_*`` settings. The
*key* of a chapter is a SHA-256 over all of these. After a chapter executes and passes, its executed
notebook, claim record and timing are saved under ``_build/executed/<slug>/`` with the key; the next
``make book`` or ``make test`` reuses them when the key is unchanged, and executes only the rest.
A fresh clone (CI) has no saved runs, so everything executes there.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from pathlib import Path

import jupytext

from lib.book.papers import PAPERS_TSV, REPO_ROOT

LIB_DIR = REPO_ROOT / "lib"
CACHE_DIR = REPO_ROOT / "_build" / "executed"
#: Settings that change what a chapter computes or shows.
ENV_SETTINGS = ("BOOK_SEED", "BOOK_SCALE", "BOOK_STATIC")
#: Files every chapter's run depends on.
COMMON_INPUTS = (REPO_ROOT / "requirements.lock", PAPERS_TSV)
_SKIP_DIRS = {"__pycache__", ".resume"}


def _module_file(name: str) -> Path | None:
    """The file of module ``lib.a.b`` (``lib/a/b.py`` or ``lib/a/b/__init__.py``), if it exists."""
    parts = name.split(".")
    if parts[0] != "lib":
        return None
    base = REPO_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_lib_modules(source: str, module: str | None = None,
                          is_package: bool = False) -> set[str]:  # fmt: skip
    """Names of the ``lib`` modules that ``source`` imports, including ``from lib.x import y``
    where ``y`` is a submodule and relative imports inside ``lib``."""
    names: set[str] = set()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics: fall back to its import lines
        lines = [ln for ln in source.splitlines() if ln.lstrip().startswith(("import ", "from "))]
        tree = ast.parse("\n".join(ln.strip() for ln in lines))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and module:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n == "lib" or n.startswith("lib.")}


def _data_files(package_dir: Path) -> list[Path]:
    """Non-Python files a package reads: files beside its modules and, recursively, in its
    sub-folders that are not packages themselves (such as ``weights/``)."""
    found = []
    for entry in sorted(package_dir.iterdir()):
        if entry.name in _SKIP_DIRS or entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix not in (".py", ".pyc"):
            found.append(entry)
        elif entry.is_dir() and not (entry / "__init__.py").exists():
            found.extend(
                p for p in sorted(entry.rglob("*"))
                if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(entry).parts)
            )  # fmt: skip
    return found


def lib_dependencies(source: str) -> list[Path]:
    """Every ``lib`` file a piece of chapter code depends on: the modules it imports, the modules
    those import (transitively, with each parent package's ``__init__``), and their data files."""
    todo = sorted(_imported_lib_modules(source))
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing lib.a.b runs lib/__init__, lib/a/__init__
            parent = ".".join(parts[:i])
            path = _module_file(parent)
            if path is None or parent in seen:
                continue
            seen[parent] = path
            todo.extend(
                _imported_lib_modules(path.read_text(), parent, path.name == "__init__.py")
            )
    files = set(seen.values())
    for path in list(files):
        if path.name == "__init__.py":
            files.update(_data_files(path.parent))
    return sorted(files)


def chapter_inputs(md: Path) -> list[Path]:
    """The files a chapter's execution depends on (see the module docstring)."""
    nb = jupytext.read(md)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return [md, *COMMON_INPUTS, *lib_dependencies(code)]


def chapter_key(md: Path) -> str:
    """SHA-256 over a chapter's inputs (paths and contents) and the ``BOOK_*`` settings."""
    digest = hashlib.sha256()
    for path in chapter_inputs(md):
        label = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        digest.update(label.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for name in ENV_SETTINGS:
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()


def saved_run(slug: str, key: str) -> Path | None:
    """The folder of a saved passing run of ``slug`` made with ``key``, or ``None``."""
    folder = CACHE_DIR / slug
    try:
        meta = json.loads((folder / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    files = ["notebook.ipynb"] + (["claims.json"] if meta.get("claims", True) else [])
    if meta.get("key") != key or not all((folder / f).exists() for f in files):
        return None
    return folder


def save_run(slug: str, key: str, notebook: Path, claims: Path | None, timing: dict) -> None:
    """Keep a passing run of ``slug`` for reuse while its key stays the same.

    ``claims`` is the chapter's claim record; ``None`` for a page without one (the appendix
    checks its testbed with assertions, not with a ``Chapter``).
    """
    if not notebook.exists() or (claims is not None and not claims.exists()):
        raise FileNotFoundError(f"cannot save the run of {slug}: {notebook} or {claims} missing")
    folder = CACHE_DIR / slug
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy2(notebook, folder / "notebook.ipynb")
    if claims is not None:
        shutil.copy2(claims, folder / "claims.json")
    meta = {"key": key, "timing": timing, "claims": claims is not None}
    (folder / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
