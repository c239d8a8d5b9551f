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
