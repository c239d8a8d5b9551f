"""Backend registry: an explicit table from name to factory, no import magic.

``get_backend("numpy")`` gives the NumPy backend (with Numba-fused CPU loops when
Numba is installed; ``NumpyBackend()`` itself is the pure reference); ``get_backend("cuda")``
the CuPy + Numba CUDA backend; ``get_backend("auto")`` (or ``None`` with
``GPUNN_BACKEND`` unset) picks cuda when it can run here, else numpy, and says
once which it chose and why.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from gpunn.backend.base import Backend
from gpunn.backend.numpy_backend import NumpyBackend
from gpunn.env import simulator_on, simulator_requested
from gpunn.errors import BackendUnavailable

__all__ = ["Backend", "NumpyBackend", "auto_choice", "backend_names", "check_backend_name", "get_backend",
           "register_backend"]


def _make_numpy(**options):
    if options:
        raise ValueError(f"the numpy backend takes no options, got {sorted(options)}")
    if os.environ.get("GPUNN_FUSED", "1") != "0":
        try:  # the Numba-fused CPU loops when Numba imports with its JIT on
            from gpunn.backend.numpy_fused import FusedNumpyBackend, jit_enabled
        except ImportError:
            pass
        else:
            if jit_enabled():
                return FusedNumpyBackend()
    return NumpyBackend()  # the pure reference


def _make_cuda(**options):
    try:
        from gpunn.backend.cuda_backend import CudaBackend
    except ImportError as exc:  # numba or cupy missing
        missing = exc.name or exc
        if simulator_requested():  # NUMBA_ENABLE_CUDASIM=1: the simulator needs Numba, not a GPU's packages
            raise BackendUnavailable(f"the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) needs Numba, and {missing} "
                                     'is missing; install it with: pip install "gpunn[sim]"') from None
        raise BackendUnavailable(
            f"the cuda backend needs the GPU packages, and {missing} is missing; "
            'install them with: pip install "gpunn[cuda12]"'
        ) from None
    return CudaBackend(**options)


_REGISTRY = {"numpy": _make_numpy, "cuda": _make_cuda}
_announced = set()


def register_backend(name: str, factory) -> None:
    """Add a backend: ``factory(**options) -> Backend``."""
    _REGISTRY[name] = factory


def backend_names():
    return ["auto", *_REGISTRY]


def check_backend_name(name: str | None) -> str:
    """``name``, else $GPUNN_BACKEND, else "auto"; BackendUnavailable when it names no backend."""
    name = name or os.environ.get("GPUNN_BACKEND") or "auto"
    if name != "auto" and name not in _REGISTRY:
        where = "" if name != os.environ.get("GPUNN_BACKEND") else " (from GPUNN_BACKEND)"
        raise BackendUnavailable(f"unknown backend {name!r}{where}; expected one of {', '.join(backend_names())}")
    return name


def auto_choice():
    """What "auto" picks here, and why in words: cuda when CuPy imports and a GPU is present, else numpy."""
    try:
        from gpunn.backend.cuda_backend import cuda_unavailable_reason
    except ImportError as exc:
        return "numpy", f"{exc.name or 'a GPU package'} is not installed"
    if not simulator_on() and importlib.util.find_spec("cupy") is None:
        return "numpy", 'CuPy is not installed; for a GPU: pip install "gpunn[cuda12]"'
    reason = cuda_unavailable_reason()
    if reason is None:
        return "cuda", "a CUDA GPU is present"
    return "numpy", reason


def get_backend(name: str | None = None, quiet: bool = False, **options) -> Backend:
    """The backend called ``name`` ("auto", "numpy", "cuda"; default: $GPUNN_BACKEND or auto)."""
    if isinstance(name, Backend):
        return name
    name = check_backend_name(name)
    if name == "auto":
        name, why = auto_choice()
        if not quiet and why not in _announced:
            _announced.add(why)
            print(f"gpunn: using the {name} backend ({why})", file=sys.stderr)
        if name == "numpy":
            options = {}
    return _REGISTRY[name](**options)
