"""Shared test set-up.

* The browser test (``tests/browser``) needs the built book: it runs only when named
  (``make browser``, the last step of ``make test``), not in ``make unit`` or a bare ``pytest``.
* Every test starts from the same global random state. ``make unit`` spreads the tests over
  pytest-xdist workers in no fixed order, so a test that draws from torch's, numpy's or Python's
  global generator (a module initialised before a function seeds anything) would otherwise
  depend on which tests ran before it in the same worker.
"""

import random
from pathlib import Path

import numpy as np
import pytest


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:  # noqa: ANN001
    if collection_path.name != "browser" or collection_path.parent != Path(__file__).parent:
        return None
    named = any(Path(str(arg).split("::")[0]).resolve().is_relative_to(collection_path)
                for arg in config.args)  # fmt: skip
    return None if named else True


@pytest.fixture(autouse=True)
def _same_global_random_state():
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (the legacy global state is what gets reset)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; kept cheap for pure tests
        return
    torch.manual_seed(0)
