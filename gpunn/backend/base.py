"""The array-backend interface.

A backend owns device memory (``asarray``, ``empty``, ``to_numpy``) and implements
the fixed op set of :mod:`gpunn.backend.ops`.  For each op it has

* ``backend.<op>(...)``, for users: the op's checks from its record (shapes, dtypes,
  contiguity, and the range of labels: the checks that turn a silent out-of-bounds
  read into a clear error), then the implementation;
* ``backend.unchecked.<op>(...)``, for callers that checked their arguments once (layers,
  losses, the optimizer, the trainer): the implementation alone.  Both reach the
  implementations only through ``backend.unchecked``, the one place a profiler hooks.

Both are written out below, one method per op, each taking the op record's arguments
(``gemm(a, b, out, trans_a=False, trans_b=False, accumulate=False)``); library call
sites name the flags (``trans_a=True``).  Backends define only the ``_op`` methods
(every argument positionally, in the order of the op's record); the NumPy backend's
versions are the readable definition of what each op means.  A test holds every one
of these signatures to its record's, so the argument list has one home: the record.
"""
from __future__ import annotations

import abc
import contextlib
from types import SimpleNamespace

import numpy as np

from gpunn.backend.ops import OPS
from gpunn.checks import float32
from gpunn.errors import GraphUnavailable

_IN_ORDER = contextlib.nullcontext()  # Backend.branch() where nothing overlaps


def _documented(op):
    """Give the decorated checked method the op record's docstring (what the op computes)."""

    def document(method):
        method.__doc__ = op.doc
        return method

    return document


class Backend(abc.ABC):
    """One device's memory and the op set.  Subclasses implement the ``_op`` methods.

    A subclass that lacks an ``_op`` method cannot be instantiated (TypeError naming it)."""

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

    # ------------------------------------------------------------------ versions of an op
    def use_version(self, op: str, version) -> None:
        """Run ``op`` as ``version`` from now on: a function taking the op's arguments in its
        record's order (``fn(x, out)`` for softmax) that writes the op's outputs (a user's version:
        see :mod:`gpunn.lab`), or the name of one of the op's kernel versions (``"online"``: the
        record's ``versions``; the cuda backend has them).  Calls still go through
        ``unchecked`` (so a profiler sees them) and the checked method still checks first."""
        record = OPS.get(op)
        if record is None:
            raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")
        if callable(version):
            check_arity(record, version, getattr(version, "__name__", repr(version)))
            setattr(self, "_" + op, version)  # an instance attribute: Unchecked calls it in the method's place
        elif not isinstance(version, str) or version not in record.versions:
            raise ValueError(f"{op} has no version {version!r}"
                             + (f"; its versions are {', '.join(record.versions)}" if record.versions
                                else ": it has one kernel"))
        else:
            self._use_named_version(record, version)
        self.versions_in_use[op] = version if isinstance(version, str) else getattr(version, "__name__", "user")

    @property
    def versions_in_use(self) -> dict:
        """``{op: version name}`` for each op :meth:`use_version` changed."""
        return self.__dict__.setdefault("_versions_in_use", {})

    def _use_named_version(self, record, version: str) -> None:
        raise ValueError(f"the {self.name} backend has one implementation of each op (the reference); "
                         f"{record.name}'s version {version!r} is a kernel of the cuda backend")

    # ------------------------------------------------------------------ ops
    #: This backend's op implementations without the argument checks (an :class:`Unchecked`).
    #: ``be.unchecked.gemm(x, W, out, trans_a=False, trans_b=False, accumulate=False)``: no
    #: shape, dtype or label check, no synchronisation.  For callers that know their arguments
    #: are right: the layers, losses, optimizer and trainer, which check their buffers and data
    #: once.  The checked methods below check and then call through here too, so this is the one
    #: place a profiler hooks (it swaps in an ``Unchecked`` over wrapped implementations).
    unchecked: Unchecked

    def __new__(cls, *args, **kwargs):
        missing = [f"_{name}" for name in OPS if not callable(getattr(cls, "_" + name, None))]
        if missing:
            raise TypeError(f"{cls.__name__} lacks the op implementations {', '.join(missing)}")
        self = super().__new__(cls)
        # a plain attribute, whatever a subclass's __init__ does: the hot path's cheapest lookup
        self.unchecked = Unchecked(self)
        return self

    # The checked ops: the record's checks (gpunn.backend.ops: shapes, dtypes, contiguity, label
    # range), then the implementation.  Each takes the record's arguments, in its order.

    @_documented(OPS["gemm"])
    def gemm(self, a, b, out, trans_a=False, trans_b=False, accumulate=False):
        self.unchecked.gemm(*OPS["gemm"].check(self, a, b, out, trans_a, trans_b, accumulate))

    @_documented(OPS["bias_act"])
    def bias_act(self, x, bias, act, out):
        self.unchecked.bias_act(*OPS["bias_act"].check(self, x, bias, act, out))

    @_documented(OPS["linear"])
    def linear(self, x, w, bias, act, out):
        self.unchecked.linear(*OPS["linear"].check(self, x, w, bias, act, out))

    @_documented(OPS["linear_backward"])
    def linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias):
        self.unchecked.linear_backward(*OPS["linear_backward"].check(self, x, dz, w, dw, dx, s, act, dx_bias))

    @_documented(OPS["act_backward"])
    def act_backward(self, s, dy, act, out):
        self.unchecked.act_backward(*OPS["act_backward"].check(self, s, dy, act, out))

    @_documented(OPS["bias_grad"])
    def bias_grad(self, dy, out):
        self.unchecked.bias_grad(*OPS["bias_grad"].check(self, dy, out))

    @_documented(OPS["act_bias_backward"])
    def act_bias_backward(self, s, dy, act, dz, db):
        self.unchecked.act_bias_backward(*OPS["act_bias_backward"].check(self, s, dy, act, dz, db))

    @_documented(OPS["softmax"])
    def softmax(self, x, out):
        self.unchecked.softmax(*OPS["softmax"].check(self, x, out))

    @_documented(OPS["softmax_backward"])
    def softmax_backward(self, y, dy, out):
        self.unchecked.softmax_backward(*OPS["softmax_backward"].check(self, y, dy, out))

    @_documented(OPS["softmax_cross_entropy"])
    def softmax_cross_entropy(self, logits, labels, grad, loss, accumulate=False, correct=None, bias_grad=None):
        self.unchecked.softmax_cross_entropy(
            *OPS["softmax_cross_entropy"].check(self, logits, labels, grad, loss, accumulate, correct, bias_grad))

    @_documented(OPS["narrow_step"])
    def narrow_step(self, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets,
                    loss, rows, loss_sum, correct, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.unchecked.narrow_step(*OPS["narrow_step"].check(
            self, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets, loss, rows,
            loss_sum, correct, momentum, weight_decay, nesterov))

    @_documented(OPS["mse"])
    def mse(self, y, labels, grad, loss, accumulate=False):
        self.unchecked.mse(*OPS["mse"].check(self, y, labels, grad, loss, accumulate))

    @_documented(OPS["sgd_update"])
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.unchecked.sgd_update(
            *OPS["sgd_update"].check(self, param, grad, velocity, lr, momentum, weight_decay, nesterov))

    @_documented(OPS["adam_update"])
    def adam_update(self, param, grad, m, v, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False):
        self.unchecked.adam_update(*OPS["adam_update"].check(self, param, grad, m, v, lr, step, beta1, beta2, eps,
                                                             weight_decay, decoupled))

    @_documented(OPS["count_step"])
    def count_step(self, step):
        self.unchecked.count_step(*OPS["count_step"].check(self, step))

    @_documented(OPS["dropout"])
    def dropout(self, x, out, p, seed, step):
        self.unchecked.dropout(*OPS["dropout"].check(self, x, out, p, seed, step))

    @_documented(OPS["dropout_backward"])
    def dropout_backward(self, dy, dx, p, seed, step):
        self.unchecked.dropout_backward(*OPS["dropout_backward"].check(self, dy, dx, p, seed, step))

    @_documented(OPS["count_correct"])
    def count_correct(self, scores, labels, out):
        self.unchecked.count_correct(*OPS["count_correct"].check(self, scores, labels, out))

    @_documented(OPS["gather_batch"])
    def gather_batch(self, x, labels, order, cursor, xb, yb):
        self.unchecked.gather_batch(*OPS["gather_batch"].check(self, x, labels, order, cursor, xb, yb))

    @_documented(OPS["next_batch"])
    def next_batch(self, x, labels, order, cursor, lr_table, lr, xb, yb):
        self.unchecked.next_batch(*OPS["next_batch"].check(self, x, labels, order, cursor, lr_table, lr, xb, yb))

    @_documented(OPS["advance_step"])
    def advance_step(self, cursor, stride, lr_table, lr):
        self.unchecked.advance_step(*OPS["advance_step"].check(self, cursor, stride, lr_table, lr))

    # The implementations a backend defines, one ``_op`` per op taking every argument of the
    # record positionally (``_gemm(self, a, b, out, trans_a, trans_b, accumulate)``): the NumPy
    # backend's are the readable definition of each op.  Instantiating a backend that lacks one
    # raises TypeError, naming it.


def unfused_linear_backward(impl, x, dz, w, dw, dx, s, act, dx_bias) -> None:
    """The ``linear_backward`` op as the ops it fuses, each ``impl``'s own (its definition on the
    numpy backend, and the cuda backend's path with cuBLAS): ``dw`` in a branch beside ``dx``, then
    the layer below's activation derivative (and bias sum) in place on dx."""
    with impl.branch():
        impl._gemm(x, dz, dw, True, False, False)
    impl._gemm(dz, w, dx, False, True, False)
    if dx_bias is not None:
        impl._act_bias_backward(x if s is None else s, dx, act, dx, dx_bias)  # (identity reads no s)
    elif act != "identity":
        impl._act_backward(s, dx, act, dx)


def check_arity(record, fn, label: str) -> None:
    """ValueError unless ``fn`` can be called with the op's arguments, positionally, in order."""
    import inspect

    try:
        inspect.signature(fn).bind(*record.args)
    except TypeError:
        raise ValueError(f"{label} cannot take {record.name}'s {len(record.args)} arguments "
                         f"({', '.join(record.args)}), in that order") from None
    except ValueError:  # no signature (a builtin): called as it is
        pass


class Unchecked:
    """The op implementations of one backend, without checks: ``backend.unchecked.<op>(...)``.

    Each method takes the op's arguments as the checked method does (by position or by the
    record's names, flags defaulting the same way) and calls ``impl._<op>`` with every one of
    them in order.  ``impl`` is the backend, or anything with the same ``_op`` methods (a
    profiler's wrapped implementations: :meth:`wrapping`)."""

    __slots__ = ("impl",)

    def __init__(self, impl):
        self.impl = impl

    @classmethod
    def wrapping(cls, unchecked: Unchecked, wrap) -> Unchecked:
        """An ``Unchecked`` whose op ``name`` calls ``wrap(name, implementation)`` instead of the
        implementation ``unchecked`` calls (the profiler's and the graph recorder's hook)."""
        return cls(SimpleNamespace(**{f"_{name}": wrap(name, getattr(unchecked.impl, "_" + name))
                                      for name in OPS}))

    def gemm(self, a, b, out, trans_a=False, trans_b=False, accumulate=False):
        self.impl._gemm(a, b, out, trans_a, trans_b, accumulate)

    def bias_act(self, x, bias, act, out):
        self.impl._bias_act(x, bias, act, out)

    def linear(self, x, w, bias, act, out):
        self.impl._linear(x, w, bias, act, out)

    def linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias):
        self.impl._linear_backward(x, dz, w, dw, dx, s, act, dx_bias)

    def act_backward(self, s, dy, act, out):
        self.impl._act_backward(s, dy, act, out)

    def bias_grad(self, dy, out):
        self.impl._bias_grad(dy, out)

    def act_bias_backward(self, s, dy, act, dz, db):
        self.impl._act_bias_backward(s, dy, act, dz, db)

    def softmax(self, x, out):
        self.impl._softmax(x, out)

    def softmax_backward(self, y, dy, out):
        self.impl._softmax_backward(y, dy, out)

    def softmax_cross_entropy(self, logits, labels, grad, loss, accumulate=False, correct=None, bias_grad=None):
        self.impl._softmax_cross_entropy(logits, labels, grad, loss, accumulate, correct, bias_grad)

    def mse(self, y, labels, grad, loss, accumulate=False):
        self.impl._mse(y, labels, grad, loss, accumulate)

    def narrow_step(self, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets,
                    loss, rows, loss_sum, correct, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.impl._narrow_step(x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts,
                               offsets, loss, rows, loss_sum, correct, momentum, weight_decay, nesterov)

    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.impl._sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov)

    def adam_update(self, param, grad, m, v, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False):
        self.impl._adam_update(param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled)

    def count_step(self, step):
        self.impl._count_step(step)

    def dropout(self, x, out, p, seed, step):
        self.impl._dropout(x, out, p, seed, step)

    def dropout_backward(self, dy, dx, p, seed, step):
        self.impl._dropout_backward(dy, dx, p, seed, step)

    def count_correct(self, scores, labels, out):
        self.impl._count_correct(scores, labels, out)

    def gather_batch(self, x, labels, order, cursor, xb, yb):
        self.impl._gather_batch(x, labels, order, cursor, xb, yb)

    def next_batch(self, x, labels, order, cursor, lr_table, lr, xb, yb):
        self.impl._next_batch(x, labels, order, cursor, lr_table, lr, xb, yb)

    def advance_step(self, cursor, stride, lr_table, lr):
        self.impl._advance_step(cursor, stride, lr_table, lr)

    def __repr__(self):
        return f"<unchecked ops of {self.impl!r}>"
