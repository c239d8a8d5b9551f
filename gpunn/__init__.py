"""gpunn: small neural-network training with hand-written GPU kernels.

One array-backend interface (:mod:`gpunn.backend`) with a NumPy reference backend
and a CUDA backend (CuPy memory and cuBLAS, Numba kernels for everything else).

``gpunn.save(model, path)``, ``gpunn.load(path, backend=...)`` and ``gpunn.evaluate(model, x, y)``
are the model-level API.  These names are imported on first use, so that ``import gpunn.cli`` is quick and
the command line can turn a Ctrl-C during its start-up into one line.
"""
from gpunn.errors import GpunnError

__version__ = "0.1.0"

__all__ = ["Backend", "GpunnError", "evaluate", "get_backend", "load", "register_backend", "save", "__version__"]

_FROM_BACKEND = ("Backend", "get_backend", "register_backend")


def save(model, path) -> None:
    """Save a model's architecture and weights to ``path`` (:func:`gpunn.checkpoint.save_model`)."""
    from gpunn.checkpoint import save_model

    save_model(model, path)


def load(path, *, backend=None):
    """The model saved at ``path``, on ``backend`` (:func:`gpunn.checkpoint.load_model`)."""
    from gpunn.checkpoint import load_model

    return load_model(path, backend=backend)


def evaluate(model, x, y, batch_size=1000) -> float:
    """Accuracy (0..1) of ``model`` on device arrays x (N, D) and int32 labels y (N,), in eval
    mode (:func:`gpunn.train.evaluate`)."""
    from gpunn.train import evaluate as run

    return run(model, x, y, batch_size)


def __getattr__(name):
    if name in _FROM_BACKEND:
        import gpunn.backend

        return getattr(gpunn.backend, name)
    raise AttributeError(f"module 'gpunn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_FROM_BACKEND])
