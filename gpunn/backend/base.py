"""The array-backend interface.

A backend owns device memory (``asarray``, ``empty``, ``to_numpy``) and implements
the fixed op set of :mod:`gpunn.backend.ops`.  Each public op method here checks its
arguments once (shapes, dtypes, contiguity, and the range of labels: the checks that
turn a silent out-of-bounds read into a clear error) and then calls the backend's
``_op`` method.
Backends override only the ``_op`` methods; the NumPy backend's versions are the
readable definition of what each op means.
"""
from __future__ import annotations

import abc
import contextlib

import numpy as np

from gpunn.backend.ops import ACTIVATIONS
from gpunn.errors import GraphUnavailable, ShapeError

float32 = np.dtype(np.float32)
_IN_ORDER = contextlib.nullcontext()  # Backend.branch() where nothing overlaps
int32 = np.dtype(np.int32)


def _check(op, name, a, shape=None, dtype=float32, ndim=None):
    """Raise ShapeError naming the op and argument when ``a`` is not as expected."""
    if dtype is None:
        dtype = float32
    if getattr(a, "dtype", None) != dtype:
        raise ShapeError(f"{op}: {name} must be {dtype}, got {getattr(a, 'dtype', type(a).__name__)}")
    if ndim is not None and a.ndim != ndim:
        raise ShapeError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ShapeError(f"{op}: {name} must be C-contiguous")


def _check_labels(op, labels, classes, backend):
    """Raise ShapeError naming the op, the first label outside ``0..classes-1`` and its index.

    A label out of range is an out-of-bounds read in every kernel that takes labels (a wrong
    loss, or a crash), so the checked public ops read the labels to the host and look: on
    a GPU that is a synchronisation.  Callers whose labels were validated once on the host
    (the trainer's steps) call the unchecked ``_op`` methods instead."""
    host = backend.to_numpy(labels)
    if host.size == 0 or (int(host.min()) >= 0 and int(host.max()) < classes):
        return
    i = int(np.flatnonzero((host < 0) | (host >= classes))[0])
    raise ShapeError(f"{op}: label {int(host[i])} at index {i} is outside 0..{classes - 1} "
                     f"(the scores have {classes} classes)")


def _check_act(op, act):
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


class Backend(abc.ABC):
    """One device's memory and the op set.  Subclasses implement the ``_op`` methods."""

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
    def gemm(self, a, b, out, trans_a=False, trans_b=False, accumulate=False):
        """``out = op(a) @ op(b)`` (``+ out`` if accumulate), op = transpose when asked.

        a: (M,K) or (K,M) if trans_a; b: (K,N) or (N,K) if trans_b; out: (M,N).
        Forward ``XW``; backward ``Xᵀ dY`` (trans_a) and ``dY Wᵀ`` (trans_b)."""
        _check("gemm", "a", a, ndim=2, dtype=self.dtype)
        _check("gemm", "b", b, ndim=2, dtype=self.dtype)
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != kb:
            raise ShapeError(f"gemm: inner dimensions differ: op(a) is {(m, k)}, op(b) is {(kb, n)}")
        _check("gemm", "out", out, shape=(m, n), dtype=self.dtype)
        self._gemm(a, b, out, trans_a, trans_b, accumulate)

    def bias_act(self, x, bias, act, out):
        """``out = act(x + bias)``, x/out (N,D), bias (D,) or None; out may be x."""
        _check_act("bias_act", act)
        _check("bias_act", "x", x, ndim=2, dtype=self.dtype)
        if bias is not None:
            _check("bias_act", "bias", bias, shape=(x.shape[1],), dtype=self.dtype)
        _check("bias_act", "out", out, shape=x.shape, dtype=self.dtype)
        self._bias_act(x, bias, act, out)

    def act_backward(self, y, dy, act, out):
        """``out = dy * act'(·)`` written with the saved *output* y = act(z); out may be dy.

        relu: dy*(y>0); sigmoid: dy*y*(1-y); tanh: dy*(1-y²); identity: dy."""
        _check_act("act_backward", act)
        _check("act_backward", "y", y, ndim=2, dtype=self.dtype)
        _check("act_backward", "dy", dy, shape=y.shape, dtype=self.dtype)
        _check("act_backward", "out", out, shape=y.shape, dtype=self.dtype)
        self._act_backward(y, dy, act, out)

    def bias_grad(self, dy, out):
        """``out (D,) = dy (N,D) summed over rows`` (a column reduction)."""
        _check("bias_grad", "dy", dy, ndim=2, dtype=self.dtype)
        _check("bias_grad", "out", out, shape=(dy.shape[1],), dtype=self.dtype)
        self._bias_grad(dy, out)

    def act_bias_backward(self, y, dy, act, dz, db):
        """A dense layer's backward through its activation and bias, fused:
        ``dz = dy * act'(·)`` (as ``act_backward``) and ``db = dz`` summed over rows (as ``bias_grad``).

        y, dy, dz (N,D); db (D,); dz may be dy.  One pass over the data instead of two."""
        _check_act("act_bias_backward", act)
        _check("act_bias_backward", "y", y, ndim=2, dtype=self.dtype)
        _check("act_bias_backward", "dy", dy, shape=y.shape, dtype=self.dtype)
        _check("act_bias_backward", "dz", dz, shape=y.shape, dtype=self.dtype)
        _check("act_bias_backward", "db", db, shape=(y.shape[1],), dtype=self.dtype)
        self._act_bias_backward(y, dy, act, dz, db)

    def softmax(self, x, out):
        """Row-wise ``out = exp(x - max) / sum(exp(x - max))``, (N,C); out may be x."""
        _check("softmax", "x", x, ndim=2, dtype=self.dtype)
        _check("softmax", "out", out, shape=x.shape, dtype=self.dtype)
        self._softmax(x, out)

    def softmax_backward(self, y, dy, out):
        """``out = y * (dy - rowsum(dy * y))`` with y = softmax output; out may be dy."""
        _check("softmax_backward", "y", y, ndim=2, dtype=self.dtype)
        _check("softmax_backward", "dy", dy, shape=y.shape, dtype=self.dtype)
        _check("softmax_backward", "out", out, shape=y.shape, dtype=self.dtype)
        self._softmax_backward(y, dy, out)

    def softmax_cross_entropy(self, logits, labels, grad, loss, accumulate=False):
        """Fused softmax + cross-entropy on logits (N,C) and int32 labels (N,).

        ``grad = (softmax(logits) - onehot(labels)) / N``;
        ``loss[0] = mean(logsumexp(logits) - logits[label])`` (``+=`` if accumulate).
        Stable for any finite logits: no probability is ever logged."""
        _check("softmax_cross_entropy", "logits", logits, ndim=2, dtype=self.dtype)
        _check("softmax_cross_entropy", "labels", labels, shape=(logits.shape[0],), dtype=int32)
        _check("softmax_cross_entropy", "grad", grad, shape=logits.shape, dtype=self.dtype)
        _check("softmax_cross_entropy", "loss", loss, shape=(1,), dtype=self.dtype)
        _check_labels("softmax_cross_entropy", labels, logits.shape[1], self)
        self._softmax_cross_entropy(logits, labels, grad, loss, accumulate)

    def mse(self, y, labels, grad, loss, accumulate=False):
        """Quadratic cost against one-hot targets, y (N,C), int32 labels (N,).

        ``loss[0] = sum((y - onehot)**2) / (2N)`` (``+=`` if accumulate);
        ``grad = (y - onehot) / N``.  This is the primer's C = 1/2n Σ‖y(x) − a‖²."""
        _check("mse", "y", y, ndim=2, dtype=self.dtype)
        _check("mse", "labels", labels, shape=(y.shape[0],), dtype=int32)
        _check("mse", "grad", grad, shape=y.shape, dtype=self.dtype)
        _check("mse", "loss", loss, shape=(1,), dtype=self.dtype)
        _check_labels("mse", labels, y.shape[1], self)
        self._mse(y, labels, grad, loss, accumulate)

    def sgd_update(self, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        """One fused SGD step on one parameter, in place (PyTorch's definition).

        ``g = grad + weight_decay * param``; with momentum ``v = momentum * v + g`` and
        ``step = g + momentum * v`` (Nesterov) or ``v``; without, ``step = g``;
        ``param -= lr * step``.  velocity may be None when momentum is 0.

        ``lr`` is a number, or a one-element array on the device whose value the op reads
        when it runs (a step replayed as a CUDA graph gets its rate that way)."""
        _check("sgd_update", "param", param, dtype=self.dtype)
        _check("sgd_update", "grad", grad, shape=param.shape, dtype=self.dtype)
        if momentum:
            _check("sgd_update", "velocity", velocity, shape=param.shape, dtype=self.dtype)
        if hasattr(lr, "shape"):
            _check("sgd_update", "lr", lr, shape=(1,), dtype=self.dtype)
        else:
            lr = float(lr)
        self._sgd_update(param, grad, velocity, lr, float(momentum), float(weight_decay), bool(nesterov))

    def count_correct(self, scores, labels, out):
        """``out[0] += number of rows whose argmax (first on ties) equals the label``.

        scores (N,C) float32, labels (N,) int32, out (1,) int32."""
        _check("count_correct", "scores", scores, ndim=2, dtype=self.dtype)
        _check("count_correct", "labels", labels, shape=(scores.shape[0],), dtype=int32)
        _check("count_correct", "out", out, shape=(1,), dtype=int32)
        _check_labels("count_correct", labels, scores.shape[1], self)
        self._count_correct(scores, labels, out)

    def gather_batch(self, x, labels, order, cursor, xb, yb):
        """The batch at the cursor: ``xb[i] = x[order[c + i]]``, ``yb[i] = labels[order[c + i]]``.

        x (N,D) float, labels (N,) int32, order (M,) int32 (an epoch's permutation of
        0..N-1), cursor (2,) int32 whose ``c = cursor[0]`` is read on the device when the
        op runs, xb (B,D), yb (B,).  The training step's batch comes from device memory,
        so a step captured as a CUDA graph trains on a new batch at every replay.

        This checked form reads the cursor and that part of ``order`` back to validate
        them (on a GPU, a synchronisation); the trainer calls ``_gather_batch``."""
        _check("gather_batch", "x", x, ndim=2, dtype=self.dtype)
        _check("gather_batch", "labels", labels, shape=(x.shape[0],), dtype=int32)
        _check("gather_batch", "order", order, ndim=1, dtype=int32)
        _check("gather_batch", "cursor", cursor, shape=(2,), dtype=int32)
        _check("gather_batch", "xb", xb, ndim=2, dtype=self.dtype)
        if xb.shape[1] != x.shape[1]:
            raise ShapeError(f"gather_batch: xb must have {x.shape[1]} columns like x, got shape {tuple(xb.shape)}")
        _check("gather_batch", "yb", yb, shape=(xb.shape[0],), dtype=int32)
        start, b = int(self.to_numpy(cursor)[0]), xb.shape[0]
        if not 0 <= start <= order.shape[0] - b:
            raise ShapeError(f"gather_batch: cursor[0] = {start} leaves no room for {b} rows in an order of "
                             f"{order.shape[0]}")
        index = self.to_numpy(order[start:start + b])
        bad = np.flatnonzero((index < 0) | (index >= x.shape[0]))
        if bad.size:
            raise ShapeError(f"gather_batch: order[{start + int(bad[0])}] = {int(index[bad[0]])} is outside "
                             f"0..{x.shape[0] - 1}")
        self._gather_batch(x, labels, order, cursor, xb, yb)

    def advance_step(self, cursor, stride, lr_table, lr):
        """Move on to the next step, on the device: ``cursor[0] += stride``, ``cursor[1] += 1``,
        ``lr[0] = lr_table[min(cursor[1], len(lr_table) - 1)]``.

        cursor (2,) int32 = (position in the epoch's order, step), lr_table (T,) the
        schedule's rate at each step (the trainer's holds an epoch), lr (1,) the rate the
        next SGD reads."""
        _check("advance_step", "cursor", cursor, shape=(2,), dtype=int32)
        _check("advance_step", "lr_table", lr_table, ndim=1, dtype=self.dtype)
        if lr_table.shape[0] == 0:
            raise ShapeError("advance_step: lr_table is empty")
        _check("advance_step", "lr", lr, shape=(1,), dtype=self.dtype)
        if not isinstance(stride, (int, np.integer)) or not 0 <= stride < 2**31:
            raise ShapeError(f"advance_step: stride must be a non-negative int32, got {stride!r}")
        self._advance_step(cursor, int(stride), lr_table, lr)

    # ------------------------------------------------------------------ implementations
    @abc.abstractmethod
    def _gemm(self, a, b, out, trans_a, trans_b, accumulate): ...

    @abc.abstractmethod
    def _bias_act(self, x, bias, act, out): ...

    @abc.abstractmethod
    def _act_backward(self, y, dy, act, out): ...

    @abc.abstractmethod
    def _bias_grad(self, dy, out): ...

    @abc.abstractmethod
    def _act_bias_backward(self, y, dy, act, dz, db): ...

    @abc.abstractmethod
    def _softmax(self, x, out): ...

    @abc.abstractmethod
    def _softmax_backward(self, y, dy, out): ...

    @abc.abstractmethod
    def _softmax_cross_entropy(self, logits, labels, grad, loss, accumulate): ...

    @abc.abstractmethod
    def _mse(self, y, labels, grad, loss, accumulate): ...

    @abc.abstractmethod
    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov): ...

    @abc.abstractmethod
    def _count_correct(self, scores, labels, out): ...

    @abc.abstractmethod
    def _gather_batch(self, x, labels, order, cursor, xb, yb): ...

    @abc.abstractmethod
    def _advance_step(self, cursor, stride, lr_table, lr): ...
