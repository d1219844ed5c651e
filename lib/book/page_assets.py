"""A Sphinx extension (listed in ``_config.yml``) that emits each inline page script once.

Sphinx 7.4 keeps two lists of page scripts: the registry, and the HTML builder's own. An extension
that calls ``app.add_js_file(None, body=...)`` after the builder exists (sphinx-thebe does, at
``env-before-read-docs``; sphinx-togglebutton too) adds the script to both; before writing, the
builder copies the registry's entries in again as filename ``''``, which does not compare equal to
the ``None`` it holds, so every such script appears twice on every page. Twice is harmless for
``var``, but sphinx-thebe's ``const THEBE_JS_URL`` then throws ``SyntaxError: Identifier
'THEBE_JS_URL' has already been declared`` in the browser. Normalising ``None`` to ``''`` once
reading is done makes the builder's own de-duplication see them as the same script.
"""

from __future__ import annotations

from typing import Any


def _normalise_inline_scripts(app: Any, env: Any) -> None:  # noqa: ARG001 ('env-updated' signature)
    builder = app.builder
    scripts = getattr(builder, "_js_files", None)
    if scripts is None:  # not an HTML builder
        return
    kept: list[Any] = []
    for script in scripts:
        if script.filename is None:
            script = type(script)("", **script.attributes, priority=script.priority)
        if script not in kept:
            kept.append(script)
    scripts[:] = kept


def setup(app: Any) -> dict[str, Any]:
    app.connect("env-updated", _normalise_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
