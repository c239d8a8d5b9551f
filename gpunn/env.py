"""What gpunn reads from the process's environment: its cache folder, and whether Numba's
CUDA simulator is on.

The cache folder (:func:`cache_dir`) holds MNIST (``mnist/``; see :func:`mnist_cache_dir`),
the CPU's measured peaks (``peaks.json``) and compiled kernels (``kernels/<digest of their
source>/``).

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported: from then on
``numba.cuda`` is either the real CUDA target or the simulator, whatever the variable
says later.  :func:`simulator_requested` is what the variable asks for (all that can be
known before Numba is imported, or where it is not installed); :func:`simulator_on` is
what this process has.  Neither needs Numba to import this module.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$GPUNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpunn``, else ``~/.cache/gpunn``; with
    ``parts`` joined below it (``cache_dir("mnist")``)."""
    if os.environ.get("GPUNN_CACHE_DIR"):
        base = Path(os.environ["GPUNN_CACHE_DIR"]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gpunn"
    return base.joinpath(*parts)


def mnist_cache_dir() -> Path:
    """Where MNIST is cached: ``cache_dir("mnist")``, except that ``$GPUNN_CACHE_DIR``, when set,
    holds MNIST's files itself (where gpunn has always looked for them there)."""
    return cache_dir() if os.environ.get("GPUNN_CACHE_DIR") else cache_dir("mnist")


def simulator_requested() -> bool:
    """True when ``NUMBA_ENABLE_CUDASIM`` asks for Numba's CUDA simulator (set and not 0)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def simulator_on() -> bool:
    """True when ``numba.cuda`` in this process is Numba's CUDA simulator; False without Numba.

    Numba is imported here only when the simulator is requested or ``numba.cuda`` is
    already loaded, so asking costs nothing on a plain CPU run."""
    if "numba.cuda" not in sys.modules and not simulator_requested():
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    return cuda.jit.__module__.startswith("numba.cuda.simulator")


# numba-cuda 0.30.4, its last release (maintenance mode since June 2026, NVIDIA/numba-cuda#902),
# calls numpy.row_stack, which NumPy 2.5 removed; the report was closed as won't-fix (#907).
# The simulator does not compile, so it still runs; compile_ptx and every kernel launch fail.
NUMBA_CUDA_NUMPY_LIMIT = (2, 5)


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "2.5.0rc1"; (0, 0) where it has none."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def numba_numpy_problem(numpy_version: str | None = None) -> str | None:
    """One line saying why Numba's CUDA compiler cannot work in this environment, or None.

    numba-cuda compiles nothing with NumPy >= 2.5 (see ``NUMBA_CUDA_NUMPY_LIMIT``); gpunn's
    extras keep NumPy below it, and this names the fix where a user's own environment has
    both anyway. Asking imports neither Numba nor numba-cuda."""
    if numpy_version is None:
        import numpy

        numpy_version = numpy.__version__
    if _release(numpy_version) < NUMBA_CUDA_NUMPY_LIMIT:
        return None
    limit = ".".join(map(str, NUMBA_CUDA_NUMPY_LIMIT))
    return (f"numba-cuda cannot compile kernels with NumPy {numpy_version} (it needs NumPy < {limit}; "
            f"numba-cuda is in maintenance mode, NVIDIA/numba-cuda#902 and #907); "
            f'fix: pip install "numpy<{limit}"')
