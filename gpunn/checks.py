"""Argument checks, written once: the op records (:mod:`gpunn.backend.ops`), the layers, the
losses, the optimizers, evaluation and the trainer's options all call these.

Each raises one line naming the caller (``op``: an op's name, a layer's repr, ``"evaluate"``)
and the argument: :class:`~gpunn.errors.ShapeError` for an array that is not what the call
needs, ValueError for a scalar outside its rule. The scalar rules (:class:`ScalarRule`) carry
their own words, so a message and the check can never disagree.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import numpy as np

from gpunn.errors import ShapeError

__all__ = ["BETA", "COUNT", "DROP_PROBABILITY", "EPSILON", "SEED32", "F32_MAX", "LEARNING_RATE", "MOMENTUM", "WEIGHT_DECAY", "ScalarRule", "array", "array_type",
           "as_float32", "float32", "int32", "is_finite_real", "is_integer", "is_real", "labels_in_range", "loss_args", "rate"]

# ---------------------------------------------------------------------------- arrays

float32 = np.dtype(np.float32)
int32 = np.dtype(np.int32)


def array(op, name, a, shape=None, dtype=float32, ndim=None, backend=None):
    """Raise ShapeError naming the op and argument when ``a`` is not as expected.

    With ``backend``, ``a`` must also be that backend's array type (``backend.xp.ndarray``):
    a NumPy array handed to the cuda backend on a GPU would pass every other check and fail
    later, deep in a launch, with a message about pointers."""
    dtype = float32 if dtype is None else np.dtype(dtype)
    if backend is not None:
        array_type(op, name, a, backend)
    if getattr(a, "dtype", None) != dtype:
        raise ShapeError(f"{op}: {name} must be {dtype}, got {getattr(a, 'dtype', type(a).__name__)}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ShapeError(f"{op}: {name} must be C-contiguous")


def distinct(op, out_name, out, **others):
    """Raise ShapeError when the output ``out`` (None: no output) shares memory with one of
    ``others`` (by name; None skipped): a kernel that reads them while it writes ``out`` would read
    what it has just written (a GEMM's tiles, an epilogue's saved activations).  All C-contiguous
    (``array`` checked them)."""
    if out is None or out.nbytes == 0:
        return
    lo, hi = _span(out)
    for name, a in others.items():
        if a is None or a.nbytes == 0:
            continue
        a_lo, a_hi = _span(a)
        if lo < a_hi and a_lo < hi:
            raise ShapeError(f"{op}: {out_name} must not share memory with {name}")


def _span(a):
    """``(first, end)`` byte addresses of a C-contiguous NumPy or CuPy array."""
    first = a.data.ptr if hasattr(a.data, "ptr") else a.__array_interface__["data"][0]
    return first, first + a.nbytes


def array_type(op, name, a, backend):
    """Raise ShapeError unless ``a`` is an array of ``backend``'s own kind (``backend.xp.ndarray``:
    a CuPy array on a GPU; a NumPy array on the CPU and in the simulator, whose device memory
    is NumPy's)."""
    xp = backend.xp
    if not isinstance(a, xp.ndarray):
        kind = "a device (CuPy) array" if xp.__name__ == "cupy" else f"a {xp.__name__}.ndarray"
        raise ShapeError(f"{op}: {name} must be {kind} on the {backend.name} backend, got "
                         f"{type(a).__module__}.{type(a).__qualname__}; copy it there with backend.asarray(...)")


def labels_in_range(op, labels, classes, backend):
    """Raise ShapeError naming the op, the first label outside ``0..classes-1`` and its index.

    A label out of range is an out-of-bounds read in every kernel that takes labels (a wrong
    loss, or a crash), so the checked public ops read the labels to the host and look: on
    a GPU that is a synchronisation.  Callers whose labels were validated once on the host
    (the trainer's steps) call ``backend.unchecked`` instead."""
    host = backend.to_numpy(labels)
    if host.size == 0 or (int(host.min()) >= 0 and int(host.max()) < classes):
        return
    i = int(np.flatnonzero((host < 0) | (host >= classes))[0])
    raise ShapeError(f"{op}: label {int(host[i])} at index {i} is outside 0..{classes - 1} "
                     f"(the scores have {classes} classes)")


def loss_args(op, out, labels, loss, backend, grad=None, name="output", check_labels=True):
    """A loss's arguments: the output ``name`` (N,C), int32 labels (N,) in ``0..C-1`` (read back to
    look, unless ``check_labels`` is False), the gradient (when given) like the output, and a
    one-element loss."""
    array(op, name, out, ndim=2, dtype=backend.dtype, backend=backend)
    array(op, "labels", labels, shape=(out.shape[0],), dtype=int32, backend=backend)
    if grad is not None:
        array(op, "grad", grad, shape=out.shape, dtype=backend.dtype, backend=backend)
    array(op, "loss", loss, shape=(1,), dtype=backend.dtype, backend=backend)
    if check_labels:
        labels_in_range(op, labels, out.shape[1], backend)


# ---------------------------------------------------------------------------- scalar rules
#
# The SGD update's scalars, each defined once: the op's record, ``optim.SGD`` (and its
# ``step``), the trainer's options and the command line's option types all ask these.
# A kernel takes them as float32, so "finite" means finite *in float32*: ``1e39`` is a
# finite float64 but an infinite rate on the device.

F32_MAX = float(np.finfo(np.float32).max)


def is_real(v) -> bool:
    """A real number (NumPy's scalars included), not a bool, a string or an array."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def is_integer(v) -> bool:
    """An integer (NumPy's included), not a bool: what a size, a count or a step must be."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def is_finite_real(v) -> bool:
    """A finite real number (NumPy's scalars included), not a bool, a string or an array."""
    return is_real(v) and math.isfinite(v)


class ScalarRule(NamedTuple):
    """What one scalar argument may be: ``ok(value)``, and the same in words (for messages)."""

    what: str  # "a positive finite number (as float32: at most 3.4e38)"
    ok: Callable  # value -> bool

    def check(self, where, name, value) -> float:
        """``float(value)``, or ValueError naming ``where`` and ``name`` in one line."""
        if not self.ok(value):
            raise ValueError(f"{where}: {name} must be {self.what}, got {value!r}")
        return float(value)


#: a size: layer widths, epochs, batch sizes
COUNT = ScalarRule("a positive integer", lambda v: is_integer(v) and v > 0)


def as_float32(v) -> float:
    """The real number ``v`` as float32 holds it, as a float: beyond float32's range it is inf."""
    try:
        v = float(v)
    except OverflowError:  # an int beyond even float64
        return math.inf if v > 0 else -math.inf
    return float(np.float32(v)) if not abs(v) > F32_MAX else math.copysign(math.inf, v)


LEARNING_RATE = ScalarRule("a positive finite number (as float32: at most 3.4e38)",
                           lambda v: is_real(v) and v > 0 and math.isfinite(as_float32(v)))
MOMENTUM = ScalarRule("a number in [0, 1) (in float32)", lambda v: is_real(v) and 0 <= as_float32(v) < 1)
BETA = ScalarRule("a number in [0, 1) (in float32)", lambda v: is_real(v) and 0 <= as_float32(v) < 1)
EPSILON = ScalarRule("a positive finite number (as float32: at least 1.2e-38, at most 3.4e38)",
                     lambda v: is_real(v) and v > 0 and as_float32(v) >= float(np.finfo(np.float32).tiny)
                     and math.isfinite(as_float32(v)))
#: dropout's probability of dropping an element, and the 32-bit key of its mask
DROP_PROBABILITY = ScalarRule("a number in [0, 1) (the probability of dropping; in float32)",
                              lambda v: is_real(v) and 0 <= as_float32(v) < 1)
SEED32 = ScalarRule("an integer in [0, 2^32)", lambda v: is_integer(v) and 0 <= v < 2**32)
WEIGHT_DECAY = ScalarRule("a finite number >= 0 (as float32: at most 3.4e38)", lambda v: is_real(v) and math.isfinite(as_float32(v)) and v >= 0)


def rate(op, backend, lr):
    """``lr`` as an op takes it: a learning rate (a number, :data:`LEARNING_RATE`), or a one-element
    device array of the backend's dtype that the op reads when it runs (its value unchecked: it
    is only known on the device)."""
    if is_real(lr):
        return LEARNING_RATE.check(op, "lr", lr)
    if not hasattr(lr, "shape"):
        raise ValueError(f"{op}: lr must be {LEARNING_RATE.what} or a one-element device array, got {lr!r}")
    array(op, "lr", lr, shape=(1,), dtype=backend.dtype, backend=backend)
    return lr
