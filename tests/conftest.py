"""The browser test (``tests/browser``) needs the built book: it runs only when named
(``make browser``, the last step of ``make test``), not in ``make unit`` or a bare ``pytest``."""

from pathlib import Path


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:  # noqa: ANN001
    if collection_path.name != "browser" or collection_path.parent != Path(__file__).parent:
        return None
    named = any(Path(str(arg).split("::")[0]).resolve().is_relative_to(collection_path)
                for arg in config.args)  # fmt: skip
    return None if named else True
