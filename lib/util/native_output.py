"""Silencing output that native libraries write straight to the process's file descriptors."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def silence_native_output() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null for the duration of the block.

    Some solvers (HiGHS behind ``scipy.optimize.milp``, KeOps at import) print from C/C++
    even when asked not to; a chapter must write nothing to stderr, and Python-level
    redirection cannot catch output that bypasses ``sys.stdout``/``sys.stderr``.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
