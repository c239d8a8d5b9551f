"""gpunn: small neural-network training with hand-written GPU kernels.

One array-backend interface (:mod:`gpunn.backend`) with a NumPy reference backend
and a CUDA backend (CuPy memory and cuBLAS, Numba kernels for everything else).

The backend names are imported on first use, so that ``import gpunn.cli`` is quick and
the command line can turn a Ctrl-C during its start-up into one line.
"""
from gpunn.errors import GpunnError

__version__ = "0.1.0"

__all__ = ["Backend", "GpunnError", "get_backend", "register_backend", "__version__"]

_FROM_BACKEND = ("Backend", "get_backend", "register_backend")


def __getattr__(name):
    if name in _FROM_BACKEND:
        import gpunn.backend

        return getattr(gpunn.backend, name)
    raise AttributeError(f"module 'gpunn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_FROM_BACKEND])
