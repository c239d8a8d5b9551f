"""What gpunn reads from the process's environment: whether Numba's CUDA simulator is on.

Numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is first imported: from then on
``numba.cuda`` is either the real CUDA target or the simulator, whatever the variable
says later.  :func:`simulator_requested` is what the variable asks for (all that can be
known before Numba is imported, or where it is not installed); :func:`simulator_on` is
what this process has.  Neither needs Numba to import this module.
"""
from __future__ import annotations

import os
import sys


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
