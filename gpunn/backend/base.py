"""The array-backend interface.

A backend owns device memory (``asarray``, ``empty``, ``to_numpy``) and implements
the fixed op set of :mod:`gpunn.backend.ops`.  For each op it has

* ``backend.<op>(...)``, for users: the op's checks from its record (shapes, dtypes,
  contiguity, and the range of labels: the checks that turn a silent out-of-bounds
  read into a clear error), then the implementation;
* ``backend.unchecked.<op>(...)``, for callers that checked their arguments once (layers,
  losses, the optimizer, the trainer): the implementation alone.  Both reach the
  implementations only through ``backend.unchecked``, the one place a profiler hooks.

Backends override only the ``_op`` methods (every argument positionally, in the
order of the op's record); the NumPy backend's versions are the readable definition
of what each op means.
"""
from __future__ import annotations

import abc
import contextlib

import numpy as np

from gpunn.backend.ops import OPS
from gpunn.checks import float32
from gpunn.errors import GraphUnavailable

_IN_ORDER = contextlib.nullcontext()  # Backend.branch() where nothing overlaps


class Backend(abc.ABC):
    """One device's memory and the op set.  Subclasses implement the ``_op`` methods.

    The checked op methods (``gemm``, ``bias_act``, ...) and the abstract ``_op`` methods
    are made from the op records below the class."""

    #: registry name ("numpy", "cuda")
    name: str = "abstract"
    #: the array module of this backend's arrays (numpy or cupy)
    xp = np
    #: True when reading a device scalar costs no synchronisation (the CPU)
    host_reads_free = False
    #: the floating-point dtype of every op (float32; the NumPy reference can run in
    #: float64 for gradient checks)
    dtype = float32

    # ------------------------------------------------------------------ memory
    def asarray(self, a, dtype=None):
        """Copy a host array to the device (no copy if already there)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def empty(self, shape, dtype=None):
        return self.xp.empty(shape, dtype=dtype or self.dtype)

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Copy a device array to the host (on a GPU this synchronises)."""
        return np.asarray(a)

    def upload(self, host, out) -> None:
        """Copy the host array ``host`` into the existing device array ``out`` (same shape).

        No allocation: a CUDA graph reads ``out`` at the address it had when captured."""
        np.copyto(out, host, casting="same_kind")

    def branch(self):
        """A context whose work may overlap with what is queued after it, until :meth:`join`.

        Layers put independent work in a branch (a weight gradient beside the input
        gradient; the accuracy count beside the backward pass).  By default, and on every
        backend but a GPU capturing a graph, it is a no-op: everything runs in order."""
        return _IN_ORDER

    def join(self) -> None:
        """Make what is queued next wait for every branch (a no-op where branches are)."""

    def capture(self, fn):
        """Record the device work ``fn()`` queues as a graph and return a callable that replays it.

        Nothing runs while capturing; every replay runs that work again, reading whatever
        device memory holds then.  Raises :class:`GraphUnavailable` (with the reason) on a
        backend or in a situation that has no graphs; the caller then runs ``fn`` eagerly."""
        raise GraphUnavailable(f"the {self.name} backend has no CUDA graphs")

    def synchronize(self) -> None:
        """Wait until all queued work is done (a no-op on the CPU)."""

    def describe(self) -> str:
        """One line naming the device, for logs and metrics."""
        return self.name

    # ------------------------------------------------------------------ ops
    #: This backend's op implementations without the argument checks, made once per instance.
    #: ``be.unchecked.gemm(a, b, out, trans_a=False, trans_b=False, accumulate=False)``: every
    #: argument of the op, by position or by the record's names (every backend's implementation
    #: has them); no shape, dtype or label check, no synchronisation.  For callers that know
    #: their arguments are right: the layers, losses, optimizer and trainer, which check their
    #: buffers and data once.  The checked methods (``be.gemm(...)``) check and
    #: then call through here too, so this is the one place a profiler hooks.
    unchecked: Unchecked

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        # a plain attribute, whatever a subclass's __init__ does: the hot path's cheapest lookup
        self.unchecked = Unchecked({name: getattr(self, "_" + name) for name in OPS})
        return self


class Unchecked:
    """One attribute per op of :data:`~gpunn.backend.ops.OPS`: the implementation to call."""

    __slots__ = tuple(OPS)

    def __init__(self, implementations):
        for name in OPS:
            setattr(self, name, implementations[name])

    def __repr__(self):
        return f"<unchecked ops: {', '.join(OPS)}>"


def _checked(op):
    """``backend.<op>(...)``: the op's checks from its record, then its implementation."""
    name, check = op.name, op.check

    def method(self, *args, **kwargs):
        getattr(self.unchecked, name)(*check(self, *args, **kwargs))

    method.__name__, method.__qualname__ = name, f"Backend.{name}"
    method.__doc__, method.__signature__ = op.doc, op.signature
    return method


def _implementation(op):
    """The abstract ``_op`` method a backend overrides, taking every argument positionally."""

    @abc.abstractmethod
    def implementation(self, *args):
        raise NotImplementedError

    implementation.__name__, implementation.__qualname__ = f"_{op.name}", f"Backend._{op.name}"
    implementation.__doc__ = f"{op.name}({', '.join(op.args)}) without checks: {op.meaning}"
    return implementation


# Each op of the contract becomes a checked public method and an abstract implementation.
for _op in OPS.values():
    setattr(Backend, _op.name, _checked(_op))
    setattr(Backend, "_" + _op.name, _implementation(_op))
abc.update_abstractmethods(Backend)
del _op
