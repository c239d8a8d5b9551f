"""The op set: what every backend must implement, and what each op costs.

This module is the contract ("the op set is the contract").  Each op has one record,
an :class:`Op` in :data:`OPS`: its name, its arguments, what it means, the checks of
its arguments (shapes, dtypes, contiguity, label range), the cost of one call in
floating-point operations and bytes moved, and its non-shape arguments in words.
The backends' checked methods, ``backend.unchecked``, the profiler, ``gpunn bench``
and the tests all read the records, so they cannot disagree about the op set.

Conventions
-----------
* Every floating-point array in the training path is float32, C-contiguous.
  Labels are int32 with values in ``0..C-1`` (validated once, on the host, when the
  data is loaded: a GPU kernel never sees an out-of-range label).
* ``N`` is the batch (rows), ``D``/``C`` the width (columns), ``P`` a parameter's size.
* Ops write into caller-provided ``out`` buffers and return nothing, so a training
  step allocates nothing once its buffers exist.
* Scalars that an op *produces* (a loss, a count) are written into a one-element
  device array, never returned to the host: reading them is the caller's choice
  (and, on a GPU, a synchronisation).
* Cost convention: one add, multiply, compare, max or transcendental (exp, log,
  tanh) is one FLOP; bytes are the minimum a kernel must read and write from main
  memory (each element once), 4 bytes per float32 or int32.  These are the numbers
  a roofline needs, not counts of any particular implementation's instructions.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from gpunn.checks import (BETA, DROP_PROBABILITY, EPSILON, MOMENTUM, SEED32, WEIGHT_DECAY, array, distinct, int32,
                          labels_in_range, loss_args, rate)
from gpunn.errors import ShapeError
from gpunn.kernels.activations import ACTIVATIONS as ACTIVATION_RECORDS
from gpunn.kernels.activations import NAMES
from gpunn.kernels import narrow_limits

#: every activation's name, from its record (kernels/activations.py: formulas, FLOPs, what its
#: backward reads); the ops take an activation by name
ACTIVATIONS = NAMES

F32 = 4  # bytes per float32
I32 = 4  # bytes per int32



class Cost(NamedTuple):
    """FLOPs and bytes moved by one call of an op."""

    flops: int
    bytes: int

    def __add__(self, other):  # type: ignore[override]
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte (the roofline's x axis)."""
        return self.flops / self.bytes if self.bytes else float("inf")


def gemm_cost(m: int, n: int, k: int, accumulate: bool = False) -> Cost:
    """``out (M,N) = op(a) (M,K) @ op(b) (K,N) [+ out]``: 2MNK FLOPs; reads a, b; writes out."""
    flops = 2 * m * n * k + (m * n if accumulate else 0)
    nbytes = F32 * (m * k + k * n + m * n + (m * n if accumulate else 0))
    return Cost(flops, nbytes)


def bias_act_cost(n: int, d: int, act: str, has_bias: bool = True) -> Cost:
    """``out (N,D) = act(x + bias)``: reads x and bias, writes out."""
    flops = n * d * ((1 if has_bias else 0) + ACTIVATION_RECORDS[act].forward_flops)
    return Cost(flops, F32 * (2 * n * d + (d if has_bias else 0)))


def linear_cost(n: int, d: int, k: int, act: str, has_bias: bool) -> Cost:
    """``out (N,D) = act(x (N,K) @ w (K,D) + bias)``: the GEMM's FLOPs and the epilogue's; reads x, w
    (and bias), writes out once (the bias and activation are applied before the store)."""
    flops = 2 * n * d * k + n * d * ((1 if has_bias else 0) + ACTIVATION_RECORDS[act].forward_flops)
    return Cost(flops, F32 * (n * k + k * d + n * d + (d if has_bias else 0)))


def linear_backward_cost(n: int, k: int, d: int, act: str, has_dx_bias: bool) -> Cost:
    """``dw (K,D) = xᵀ dz`` and ``dx (N,K) = (dz wᵀ) * act'(s)`` (``+ Σ_rows dx``): both GEMMs'
    FLOPs and the epilogue's; reads x, dz, w (and s), writes dw and dx once (and dx_bias)."""
    epilogue = n * k * ((1 + ACTIVATION_RECORDS[act].backward_flops if act != "identity" else 0)
                        + (1 if has_dx_bias else 0))
    reads = n * k + n * d + k * d + (n * k if act != "identity" else 0)
    return Cost(4 * n * k * d + epilogue, F32 * (reads + k * d + n * k + (k if has_dx_bias else 0)))


def act_backward_cost(n: int, d: int, act: str) -> Cost:
    """``out (N,D) = dy * act'(s)``: reads s (the saved output or input) and dy, writes out."""
    return Cost(n * d * (1 + ACTIVATION_RECORDS[act].backward_flops), F32 * 3 * n * d)


def bias_grad_cost(n: int, d: int) -> Cost:
    """``out (D,) = dy.sum(axis=0)``: N*D adds, reads dy, writes out."""
    return Cost(n * d, F32 * (n * d + d))


def act_bias_backward_cost(n: int, d: int, act: str) -> Cost:
    """``dz = dy * act'(s)`` and ``db = dz.sum(axis=0)`` in one pass: reads s and dy, writes dz and db."""
    return Cost(n * d * (2 + ACTIVATION_RECORDS[act].backward_flops), F32 * (3 * n * d + d))


def softmax_cost(n: int, c: int) -> Cost:
    """Row max, subtract, exp, row sum, divide: 5 FLOPs per element; reads x, writes out."""
    return Cost(5 * n * c, F32 * 2 * n * c)


def softmax_backward_cost(n: int, c: int) -> Cost:
    """``dx = y * (dy - sum(dy*y))``: 4 FLOPs per element; reads y, dy, writes dx."""
    return Cost(4 * n * c, F32 * 3 * n * c)


def softmax_cross_entropy_cost(n: int, c: int) -> Cost:
    """Softmax (5/elt), subtract one-hot and scale (2/elt), per-row log and mean.

    Reads logits and labels, writes the gradient and the loss."""
    return Cost(7 * n * c + 3 * n, F32 * (2 * n * c + 1) + I32 * n)


def mse_cost(n: int, c: int) -> Cost:
    """``grad = (y - onehot)/N``, ``loss = sum(grad_unscaled**2)/(2N)``: 4 FLOPs per element."""
    return Cost(4 * n * c, F32 * (2 * n * c + 1) + I32 * n)


def sgd_update_cost(p: int, momentum: float, weight_decay: float, nesterov: bool) -> Cost:
    """One fused pass over a parameter.

    Always: ``p -= lr * step`` (2/elt), reads p and g, writes p.  Weight decay adds
    ``g + wd*p`` (2/elt).  Momentum adds ``v = m*v + g`` (2/elt) and reads/writes v;
    Nesterov adds ``g + m*v`` (2/elt)."""
    flops, arrays = 2, 3
    if weight_decay:
        flops += 2
    if momentum:
        flops += 2 + (2 if nesterov else 0)
        arrays += 2
    return Cost(flops * p, F32 * arrays * p)


def adam_update_cost(p: int, weight_decay: float) -> Cost:
    """One fused pass over a parameter: the two moments (3 + 4 FLOPs per element), the step
    (sqrt, divide, add, divide, multiply, subtract: 6), weight decay (2); reads p, g, m, v and
    writes p, m, v."""
    return Cost((13 + (2 if weight_decay else 0)) * p, F32 * 7 * p)


def count_step_cost() -> Cost:
    """``step[0] += 1``: one add; reads and writes one word."""
    return Cost(1, I32 * 2)


def dropout_cost(n: int) -> Cost:
    """One multiply per element (the mask's integer hash is not counted as FLOPs); reads x, writes out."""
    return Cost(n, F32 * 2 * n)


def count_correct_cost(n: int, c: int) -> Cost:
    """Row argmax (C compares) and one compare with the label; reads scores and labels."""
    return Cost(n * c + n, F32 * n * c + I32 * n + I32)


def gather_batch_cost(b: int, d: int) -> Cost:
    """``xb (B,D) = x[order[c:c+B]]``, ``yb = labels[...]``: no FLOPs; reads B rows, indices and
    labels, writes the batch."""
    return Cost(0, F32 * 2 * b * d + I32 * 3 * b + I32)


def narrow_step_cost(widths, rows: int, momentum: float, params: int) -> Cost:
    """Forward (2 FLOPs per weight per row), the deltas and the weight gradients (2 each: 6 in all),
    the update (about 6 per parameter); reads the batch's rows and the parameters twice, writes the
    activations and deltas once and reads them back, reads and writes the parameters and gradients
    (and the velocity)."""
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    units = rows * sum(widths[1:])
    return Cost(6 * rows * weights + 6 * params,
                F32 * (rows * widths[0] * 2 + 4 * units + (4 + (2 if momentum else 0)) * params) + I32 * 3 * rows)


def advance_step_cost() -> Cost:
    """``cursor += (stride, 1)``, ``lr[0] = lr_table[cursor[1]]``: two adds; a few words."""
    return Cost(2, I32 * 4 + F32 * 2)



# ---------------------------------------------------------------------------- argument checks
# (the checks themselves live in gpunn.checks; the activation's is the op set's own)

def _check_act(op, act):
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


# ---------------------------------------------------------------------------- one record per op


@dataclass(frozen=True)
class Op:
    """One op of the contract.

    ``check(backend, *args, **kwargs)`` checks a call's arguments (raising ShapeError or
    ValueError naming the op and the argument) and returns them as the implementation takes
    them: every one of ``args``, in order, positionally.  Its signature, less ``backend``, is the
    op's argument list, written once: the backends' methods take exactly these parameters (a
    test holds them to it), and its docstring is the checked method's.  ``cost`` and ``variant``
    take the arguments *by name* (each formula names only those it reads, ``**_`` the rest): the
    FLOPs and bytes of that one call (the shape-based formulas above), and the arguments that
    are not shapes, in words ("relu", "NT", "nesterov m=0.9").  Call them through
    :meth:`cost_of` and :meth:`variant_of`, which take a call's arguments as the op does."""

    name: str
    args: tuple  # the parameter names, in order, as the public method takes them
    meaning: str  # one line
    check: Callable  # (backend, *args, **kwargs) -> tuple of every argument, in order
    cost: Callable  # (**named arguments) -> Cost
    variant: Callable  # (**named arguments) -> str
    #: the names of the op's GPU kernel versions, naive to fast (each one's launches and its line
    #: of what it buys are in its kernel family, ``gpunn.kernels.<family>.VERSIONS``); () = one kernel
    versions: tuple = ()
    version: str | None = None  # the version the cuda backend uses unless told otherwise

    @property
    def word(self) -> str:
        """The op's name on the command line (``gpunn bench softmax-cross-entropy``)."""
        return self.name.replace("_", "-")

    @property
    def doc(self) -> str:
        """What the op computes, its shapes and dtypes: the checked method's docstring."""
        return inspect.getdoc(self.check) or ""

    def bind(self, *args, **kwargs) -> dict:
        """A call's arguments by name, defaults filled in (as the op would see them)."""
        bound = inspect.signature(self.check).bind(None, *args, **kwargs)
        bound.apply_defaults()
        return dict(list(bound.arguments.items())[1:])

    def cost_of(self, *args, **kwargs) -> Cost:
        """FLOPs and bytes of the call ``backend.<op>(*args, **kwargs)``."""
        return self.cost(**self.bind(*args, **kwargs))

    def variant_of(self, *args, **kwargs) -> str:
        """The call's non-shape arguments in words."""
        return self.variant(**self.bind(*args, **kwargs))

    @property
    def signature(self) -> inspect.Signature:
        """The checked method's signature (``self`` first)."""
        sig = inspect.signature(self.check)
        params = list(sig.parameters.values())
        return sig.replace(parameters=[params[0].replace(name="self"), *params[1:]])


OPS: dict[str, Op] = {}
"""Every op of the contract, by name, in the order a backend implements them."""


def _no_variant(**_) -> str:
    return ""


def _op(cost, variant=_no_variant, versions=(), version=None):
    """Make the decorated check function the record of the op it is named after: the record
    goes into :data:`OPS` and takes the function's name here (``ops.gemm`` is gemm's record)."""
    assert (version in versions) if versions else version is None

    def record(check):
        args = tuple(inspect.signature(check).parameters)[1:]  # less backend
        meaning = " ".join(inspect.getdoc(check).split("\n\n")[0].split())
        op = OPS[check.__name__] = Op(check.__name__, args, meaning, check, cost, variant, tuple(versions), version)
        return op

    return record


def _trans(trans_a, trans_b, accumulate, **_):
    return ("T" if trans_a else "N") + ("T" if trans_b else "N") + (" +=" if accumulate else "")


@_op(cost=lambda a, out, trans_a, accumulate, **_: gemm_cost(
         out.shape[0], out.shape[1], a.shape[0] if trans_a else a.shape[1], bool(accumulate)),
     variant=_trans, versions=("naive", "tiled", "blocked"), version="blocked")
def gemm(backend, a, b, out, trans_a=False, trans_b=False, accumulate=False):
    """``out = op(a) @ op(b)`` (``+ out`` if accumulate), op = transpose when asked.

    a: (M,K) or (K,M) if trans_a; b: (K,N) or (N,K) if trans_b; out: (M,N).
    Forward ``XW``; backward ``Xᵀ dY`` (trans_a) and ``dY Wᵀ`` (trans_b).  (The cuda backend's
    GEMM is cuBLAS unless a gpunn version is chosen: ``gemm="numba"`` is ``blocked``.)"""
    array("gemm", "a", a, ndim=2, dtype=backend.dtype, backend=backend)
    array("gemm", "b", b, ndim=2, dtype=backend.dtype, backend=backend)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ShapeError(f"gemm: inner dimensions differ: op(a) is {(m, k)}, op(b) is {(kb, n)}")
    array("gemm", "out", out, shape=(m, n), dtype=backend.dtype, backend=backend)
    distinct("gemm", "out", out, a=a, b=b)
    return a, b, out, trans_a, trans_b, accumulate


@_op(cost=lambda x, bias, act, **_: bias_act_cost(*x.shape, act, bias is not None),
     variant=lambda bias, act, **_: act if bias is not None else f"{act}, no bias")
def bias_act(backend, x, bias, act, out):
    """``out = act(x + bias)``, x/out (N,D), bias (D,) or None; out may be x."""
    _check_act("bias_act", act)
    array("bias_act", "x", x, ndim=2, dtype=backend.dtype, backend=backend)
    if bias is not None:
        array("bias_act", "bias", bias, shape=(x.shape[1],), dtype=backend.dtype, backend=backend)
    array("bias_act", "out", out, shape=x.shape, dtype=backend.dtype, backend=backend)
    return x, bias, act, out


@_op(cost=lambda x, w, bias, act, **_: linear_cost(x.shape[0], w.shape[1], x.shape[1], act, bias is not None),
     variant=lambda bias, act, **_: act if bias is not None else f"{act}, no bias")
def linear(backend, x, w, bias, act, out):
    """``out = act(x @ w + bias)``, a dense layer's forward: x (N,K), w (K,D), bias (D,) or None,
    out (N,D) (not x).  Defined as ``gemm`` then ``bias_act``; on a GPU gpunn's GEMM (``--gemm
    numba``, version ``blocked``) does it in one kernel, cuBLAS in two."""
    _check_act("linear", act)
    array("linear", "x", x, ndim=2, dtype=backend.dtype, backend=backend)
    array("linear", "w", w, ndim=2, dtype=backend.dtype, backend=backend)
    if w.shape[0] != x.shape[1]:
        raise ShapeError(f"linear: w must have {x.shape[1]} rows (x's columns), got shape {tuple(w.shape)}")
    if bias is not None:
        array("linear", "bias", bias, shape=(w.shape[1],), dtype=backend.dtype, backend=backend)
    array("linear", "out", out, shape=(x.shape[0], w.shape[1]), dtype=backend.dtype, backend=backend)
    distinct("linear", "out", out, x=x, w=w, bias=bias)
    return x, w, bias, act, out


@_op(cost=lambda x, dz, act, dx_bias, **_: linear_backward_cost(x.shape[0], x.shape[1], dz.shape[1], act,
                                                                 dx_bias is not None),
     variant=lambda act, dx_bias, **_: act + (", bias" if dx_bias is not None else ""))
def linear_backward(backend, x, dz, w, dw, dx, s, act, dx_bias):
    """A dense layer's backward from ``dz``, the gradient of its pre-activation ``x @ w + b``:
    ``dw = xᵀ dz`` and the input gradient taken through the layer below's activation,
    ``dx = (dz @ wᵀ) * act'(s)`` (``s``: what that activation's backward reads, as
    ``act_backward``; None with act identity), with ``dx_bias = dx`` summed over rows (that layer's
    bias gradient) unless None.  x, s, dx (N,K); dz (N,D); w, dw (K,D); dx_bias (K,).  Defined as
    ``gemm`` (dw), ``gemm`` (dx), then ``act_bias_backward`` (or ``act_backward``) in place on dx;
    on a GPU gpunn's GEMM (``--gemm numba``) does it in one kernel, cuBLAS in three (as many as the
    unfused ops, so the default step is unchanged)."""
    _check_act("linear_backward", act)
    array("linear_backward", "x", x, ndim=2, dtype=backend.dtype, backend=backend)
    array("linear_backward", "dz", dz, ndim=2, dtype=backend.dtype, backend=backend)
    if dz.shape[0] != x.shape[0]:
        raise ShapeError(f"linear_backward: dz must have {x.shape[0]} rows (x's), got shape {tuple(dz.shape)}")
    n, k, d = x.shape[0], x.shape[1], dz.shape[1]
    array("linear_backward", "w", w, shape=(k, d), dtype=backend.dtype, backend=backend)
    array("linear_backward", "dw", dw, shape=(k, d), dtype=backend.dtype, backend=backend)
    array("linear_backward", "dx", dx, shape=(n, k), dtype=backend.dtype, backend=backend)
    if s is None and act != "identity":
        raise ValueError(f"linear_backward: s (what {act}'s backward reads) is required with act {act!r}")
    if s is not None:
        array("linear_backward", "s", s, shape=(n, k), dtype=backend.dtype, backend=backend)
    if dx_bias is not None:
        array("linear_backward", "dx_bias", dx_bias, shape=(k,), dtype=backend.dtype, backend=backend)
    distinct("linear_backward", "dw", dw, x=x, dz=dz, w=w, dx=dx, s=s, dx_bias=dx_bias)
    distinct("linear_backward", "dx", dx, x=x, dz=dz, w=w, s=s, dx_bias=dx_bias)
    distinct("linear_backward", "dx_bias", dx_bias, x=x, dz=dz, w=w, s=s)
    return x, dz, w, dw, dx, s, act, dx_bias


@_op(cost=lambda s, act, **_: act_backward_cost(*s.shape, act), variant=lambda act, **_: act)
def act_backward(backend, s, dy, act, out):
    """``out = dy * act'(·)`` written with ``s``, what the activation's record says its derivative
    needs (``grad_from``): the saved *output* y = act(z) (relu: dy*(y>0); sigmoid: dy*y*(1-y);
    tanh: dy*(1-y²); identity: dy) or the saved *input* z (GELU, SiLU); out may be dy."""
    _check_act("act_backward", act)
    array("act_backward", "s", s, ndim=2, dtype=backend.dtype, backend=backend)
    array("act_backward", "dy", dy, shape=s.shape, dtype=backend.dtype, backend=backend)
    array("act_backward", "out", out, shape=s.shape, dtype=backend.dtype, backend=backend)
    return s, dy, act, out


@_op(cost=lambda dy, **_: bias_grad_cost(*dy.shape))
def bias_grad(backend, dy, out):
    """``out (D,) = dy (N,D) summed over rows`` (a column reduction)."""
    array("bias_grad", "dy", dy, ndim=2, dtype=backend.dtype, backend=backend)
    array("bias_grad", "out", out, shape=(dy.shape[1],), dtype=backend.dtype, backend=backend)
    return dy, out


@_op(cost=lambda s, act, **_: act_bias_backward_cost(*s.shape, act), variant=lambda act, **_: act)
def act_bias_backward(backend, s, dy, act, dz, db):
    """A dense layer's backward through its activation and bias, fused:
    ``dz = dy * act'(·)`` (as ``act_backward``) and ``db = dz`` summed over rows (as ``bias_grad``).

    s (the saved output or input, as ``act_backward``), dy, dz (N,D); db (D,); dz may be dy.
    One pass over the data instead of two."""
    _check_act("act_bias_backward", act)
    array("act_bias_backward", "s", s, ndim=2, dtype=backend.dtype, backend=backend)
    array("act_bias_backward", "dy", dy, shape=s.shape, dtype=backend.dtype, backend=backend)
    array("act_bias_backward", "dz", dz, shape=s.shape, dtype=backend.dtype, backend=backend)
    array("act_bias_backward", "db", db, shape=(s.shape[1],), dtype=backend.dtype, backend=backend)
    return s, dy, act, dz, db


@_op(cost=lambda x, **_: softmax_cost(*x.shape), versions=("thread_per_row", "tree", "online"), version="tree")
def softmax(backend, x, out):
    """Row-wise ``out = exp(x - max) / sum(exp(x - max))``, (N,C); out may be x."""
    array("softmax", "x", x, ndim=2, dtype=backend.dtype, backend=backend)
    array("softmax", "out", out, shape=x.shape, dtype=backend.dtype, backend=backend)
    return x, out


@_op(cost=lambda y, **_: softmax_backward_cost(*y.shape))
def softmax_backward(backend, y, dy, out):
    """``out = y * (dy - rowsum(dy * y))`` with y = softmax output; out may be dy."""
    array("softmax_backward", "y", y, ndim=2, dtype=backend.dtype, backend=backend)
    array("softmax_backward", "dy", dy, shape=y.shape, dtype=backend.dtype, backend=backend)
    array("softmax_backward", "out", out, shape=y.shape, dtype=backend.dtype, backend=backend)
    return y, dy, out


@_op(cost=lambda logits, correct, bias_grad, **_: softmax_cross_entropy_cost(*logits.shape)
     + (count_correct_cost(*logits.shape) if correct is not None else Cost(0, 0))
     + (bias_grad_cost(*logits.shape) if bias_grad is not None else Cost(0, 0)),
     variant=lambda correct, bias_grad, **_: " ".join(
         w for w, on in (("+ count", correct is not None), ("+ bias grad", bias_grad is not None)) if on),
     versions=("two_kernels", "fused", "classifier"), version="fused")
def softmax_cross_entropy(backend, logits, labels, grad, loss, accumulate=False, correct=None, bias_grad=None):
    """Fused softmax + cross-entropy on logits (N,C) and int32 labels (N,).

    ``grad = (softmax(logits) - onehot(labels)) / N``;
    ``loss[0] = mean(logsumexp(logits) - logits[label])`` (``+=`` if accumulate);
    with ``correct`` ((1,) int32), also ``correct[0] +=`` the rows whose argmax (first on ties)
    is the label, counted on the logits before grad may overwrite them (as ``count_correct``);
    with ``bias_grad`` ((C,)), also ``bias_grad = grad summed over the rows`` (as ``bias_grad``):
    the bias gradient of the layer that made the logits, which then need not compute it.
    Stable for any finite logits: no probability is ever logged."""
    loss_args("softmax_cross_entropy", logits, labels, loss, backend, grad=grad, name="logits")
    if correct is not None:
        array("softmax_cross_entropy", "correct", correct, shape=(1,), dtype=int32, backend=backend)
    if bias_grad is not None:
        array("softmax_cross_entropy", "bias_grad", bias_grad, shape=(logits.shape[1],), dtype=backend.dtype,
              backend=backend)
    return logits, labels, grad, loss, accumulate, correct, bias_grad


@_op(cost=lambda y, **_: mse_cost(*y.shape))
def mse(backend, y, labels, grad, loss, accumulate=False):
    """Quadratic cost against one-hot targets, y (N,C), int32 labels (N,).

    ``loss[0] = sum((y - onehot)**2) / (2N)`` (``+=`` if accumulate);
    ``grad = (y - onehot) / N``.  This is the primer's C = 1/2n Σ‖y(x) − a‖²."""
    loss_args("mse", y, labels, loss, backend, grad=grad, name="y")
    return y, labels, grad, loss, accumulate


def _sgd_variant(momentum, weight_decay, nesterov, **_):
    parts = [("nesterov " if nesterov else "") + f"m={momentum:g}" if momentum else "plain"]
    if weight_decay:
        parts.append(f"wd={weight_decay:g}")
    return ", ".join(parts)


@_op(cost=lambda param, momentum, weight_decay, nesterov, **_: sgd_update_cost(
         int(np.prod(param.shape)), momentum, weight_decay, nesterov),
     variant=_sgd_variant)
def sgd_update(backend, param, grad, velocity, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One fused SGD step on one parameter, in place (PyTorch's definition).

    ``g = grad + weight_decay * param``; with momentum ``v = momentum * v + g`` and
    ``step = g + momentum * v`` (Nesterov) or ``v``; without, ``step = g``;
    ``param -= lr * step``.  velocity may be None when momentum is 0.

    ``lr`` is a number, or a one-element array on the device whose value the op reads
    when it runs (a step replayed as a CUDA graph gets its rate that way)."""
    array("sgd_update", "param", param, dtype=backend.dtype, backend=backend)
    array("sgd_update", "grad", grad, shape=param.shape, dtype=backend.dtype, backend=backend)
    momentum = MOMENTUM.check("sgd_update", "momentum", momentum)
    weight_decay = WEIGHT_DECAY.check("sgd_update", "weight_decay", weight_decay)
    if momentum:
        array("sgd_update", "velocity", velocity, shape=param.shape, dtype=backend.dtype, backend=backend)
    return param, grad, velocity, rate("sgd_update", backend, lr), momentum, weight_decay, bool(nesterov)


def _adam_variant(beta1, beta2, eps, weight_decay, decoupled, **_):
    name = "AdamW" if decoupled and weight_decay else "Adam"
    return f"{name} betas=({beta1:g}, {beta2:g}), eps={eps:g}" + (f", wd={weight_decay:g}" if weight_decay else "")


@_op(cost=lambda param, weight_decay, **_: adam_update_cost(int(np.prod(param.shape)), weight_decay),
     variant=_adam_variant)
def adam_update(backend, param, grad, m, v, lr, step, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False):
    """One fused Adam (or, ``decoupled``, AdamW) step on one parameter, in place (PyTorch's
    ``torch.optim.Adam``/``AdamW``).

    Adam: ``g = grad + weight_decay * param``; AdamW: ``param *= 1 - lr * weight_decay``, g = grad.
    ``m = m + (1 - beta1) (g - m)``; ``v = beta2 v + (1 - beta2) g²``;
    ``param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.

    m, v: the moments, param's shape; ``step`` (1,) int32 on the device holds t, the number of
    this step (1 for the first; see ``count_step``), read when the op runs, as a number ``lr``
    may be or a one-element device array (so a step replayed as a CUDA graph uses the count and
    rate of the moment)."""
    array("adam_update", "param", param, dtype=backend.dtype, backend=backend)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        array("adam_update", name, a, shape=param.shape, dtype=backend.dtype, backend=backend)
    array("adam_update", "step", step, shape=(1,), dtype=int32, backend=backend)
    beta1 = BETA.check("adam_update", "beta1", beta1)
    beta2 = BETA.check("adam_update", "beta2", beta2)
    eps = EPSILON.check("adam_update", "eps", eps)
    weight_decay = WEIGHT_DECAY.check("adam_update", "weight_decay", weight_decay)
    return param, grad, m, v, rate("adam_update", backend, lr), step, beta1, beta2, eps, weight_decay, bool(decoupled)


@_op(cost=lambda **_: count_step_cost())
def count_step(backend, step):
    """``step[0] += 1``: an optimizer's step count, on the device (step (1,) int32), so that a step
    replayed as a CUDA graph counts too.  Adam counts before its updates read the count."""
    array("count_step", "step", step, shape=(1,), dtype=int32, backend=backend)
    return (step,)


def _dropout_checks(op, backend, x, out, p, seed, step, xname):
    array(op, xname, x, dtype=backend.dtype, backend=backend)
    array(op, "out" if xname == "x" else "dx", out, shape=x.shape, dtype=backend.dtype, backend=backend)
    p = DROP_PROBABILITY.check(op, "p", p)
    seed = int(SEED32.check(op, "seed", seed))
    array(op, "step", step, shape=(1,), dtype=int32, backend=backend)
    return x, out, p, seed, step


@_op(cost=lambda x, **_: dropout_cost(int(np.prod(x.shape))), variant=lambda p, **_: f"p={p:g}")
def dropout(backend, x, out, p, seed, step):
    """Inverted dropout: ``out = x * mask / (1 - p)``, each element kept with probability 1 - p.

    The mask is a counter-based hash (Philox-2x32, kernels/random.py) of the element's index,
    ``t = step[0]`` (read on the device: the training step, so a replayed CUDA graph draws a new
    mask) and ``seed``: no generator state, the same on every backend, bit-exact on resume.
    x/out any shape, the same; out may be x."""
    return _dropout_checks("dropout", backend, x, out, p, seed, step, "x")


@_op(cost=lambda dy, **_: dropout_cost(int(np.prod(dy.shape))), variant=lambda p, **_: f"p={p:g}")
def dropout_backward(backend, dy, dx, p, seed, step):
    """``dx = dy * mask / (1 - p)`` with the mask ``dropout`` drew for the same seed and step
    (recomputed, not stored); dx may be dy."""
    return _dropout_checks("dropout_backward", backend, dy, dx, p, seed, step, "dy")


@_op(cost=lambda scores, **_: count_correct_cost(*scores.shape))
def count_correct(backend, scores, labels, out):
    """``out[0] += number of rows whose argmax (first on ties) equals the label``.

    scores (N,C) float32, labels (N,) int32, out (1,) int32."""
    array("count_correct", "scores", scores, ndim=2, dtype=backend.dtype, backend=backend)
    array("count_correct", "labels", labels, shape=(scores.shape[0],), dtype=int32, backend=backend)
    array("count_correct", "out", out, shape=(1,), dtype=int32, backend=backend)
    labels_in_range("count_correct", labels, scores.shape[1], backend)
    return scores, labels, out


@_op(cost=lambda xb, **_: gather_batch_cost(*xb.shape))
def gather_batch(backend, x, labels, order, cursor, xb, yb):
    """The batch at the cursor: ``xb[i] = x[order[c + i]]``, ``yb[i] = labels[order[c + i]]``.

    x (N,D) float, labels (N,) int32, order (M,) int32 (an epoch's permutation of
    0..N-1), cursor (2,) int32 whose ``c = cursor[0]`` is read on the device when the
    op runs, xb (B,D), yb (B,).  The training step's batch comes from device memory,
    so a step captured as a CUDA graph trains on a new batch at every replay.

    This checked form reads the cursor and that part of ``order`` back to validate
    them (on a GPU, a synchronisation); the trainer calls ``unchecked.next_batch`` (this
    gather, the step's rate and the cursor's advance)."""
    _check_batch("gather_batch", backend, x, labels, order, cursor, xb, yb)
    return x, labels, order, cursor, xb, yb


def _check_batch(op, backend, x, labels, order, cursor, xb, yb):
    """``gather_batch``'s arguments (and ``next_batch``'s first six), checked under ``op``'s name."""
    array(op, "x", x, ndim=2, dtype=backend.dtype, backend=backend)
    array(op, "labels", labels, shape=(x.shape[0],), dtype=int32, backend=backend)
    array(op, "order", order, ndim=1, dtype=int32, backend=backend)
    array(op, "cursor", cursor, shape=(2,), dtype=int32, backend=backend)
    array(op, "xb", xb, ndim=2, dtype=backend.dtype, backend=backend)
    if xb.shape[1] != x.shape[1]:
        raise ShapeError(f"{op}: xb must have {x.shape[1]} columns like x, got shape {tuple(xb.shape)}")
    array(op, "yb", yb, shape=(xb.shape[0],), dtype=int32, backend=backend)
    _check_cursor(op, backend, x, order, cursor, xb.shape[0])


def _check_cursor(op, backend, x, order, cursor, b):
    """The cursor leaves room for ``b`` rows in ``order``, whose entries there index x (both read back)."""
    start = int(backend.to_numpy(cursor)[0])
    if not 0 <= start <= order.shape[0] - b:
        raise ShapeError(f"{op}: cursor[0] = {start} leaves no room for {b} rows in an order of "
                         f"{order.shape[0]}")
    index = backend.to_numpy(order[start:start + b])
    bad = np.flatnonzero((index < 0) | (index >= x.shape[0]))
    if bad.size:
        raise ShapeError(f"{op}: order[{start + int(bad[0])}] = {int(index[bad[0]])} is outside "
                         f"0..{x.shape[0] - 1}")


@_op(cost=lambda **_: advance_step_cost())
def advance_step(backend, cursor, stride, lr_table, lr):
    """Move on to the next step, on the device: ``cursor[0] += stride``, ``cursor[1] += 1``,
    ``lr[0] = lr_table[min(cursor[1], len(lr_table) - 1)]``.

    cursor (2,) int32 = (position in the epoch's order, step), lr_table (T,) the
    schedule's rate at each step (the trainer's holds an epoch), lr (1,) the rate the
    next SGD reads."""
    array("advance_step", "cursor", cursor, shape=(2,), dtype=int32, backend=backend)
    array("advance_step", "lr_table", lr_table, ndim=1, dtype=backend.dtype, backend=backend)
    if lr_table.shape[0] == 0:
        raise ShapeError("advance_step: lr_table is empty")
    array("advance_step", "lr", lr, shape=(1,), dtype=backend.dtype, backend=backend)
    if not isinstance(stride, (int, np.integer)) or not 0 <= stride < 2**31:
        raise ShapeError(f"advance_step: stride must be a non-negative int32, got {stride!r}")
    return cursor, int(stride), lr_table, lr


@_op(cost=lambda xb, **_: gather_batch_cost(*xb.shape) + advance_step_cost())
def next_batch(backend, x, labels, order, cursor, lr_table, lr, xb, yb):
    """A training step's batch and rate from the loop's device state, then the cursor past them:
    ``gather_batch`` (xb, yb at ``cursor[0]``), ``lr[0] = lr_table[min(cursor[1], len(lr_table)-1)]``
    (the step's rate, which its update reads), then ``cursor += (B, 1)``.

    The arguments as ``gather_batch``'s and ``advance_step``'s (lr_table (T,), lr (1,)); on a GPU one
    kernel, whose last block to finish moves the cursor once every block has read it."""
    _check_batch("next_batch", backend, x, labels, order, cursor, xb, yb)
    array("next_batch", "lr_table", lr_table, ndim=1, dtype=backend.dtype, backend=backend)
    if lr_table.shape[0] == 0:
        raise ShapeError("next_batch: lr_table is empty")
    array("next_batch", "lr", lr, shape=(1,), dtype=backend.dtype, backend=backend)
    return x, labels, order, cursor, lr_table, lr, xb, yb


def narrow_network_problem(widths, acts, loss):
    """None when ``narrow_step`` can train this network (``widths``: the input's then each layer's;
    an activation per layer; the loss's word), else ``(the exception class, why not)``: the one
    statement of its limits, which the op's record and the trainer's ``--fused-step`` both give."""
    layers = len(widths) - 1
    if not 1 <= layers <= narrow_limits.MAX_LAYERS or len(acts) != layers:
        return ShapeError, (f"widths must name the input and 1..{narrow_limits.MAX_LAYERS} layers, with one "
                            f"activation each; got widths {tuple(widths)} and acts {tuple(acts)}")
    wide = [w for w in widths[1:] if w > narrow_limits.MAX_WIDTH]
    if wide:
        return ShapeError, f"every layer must be at most {narrow_limits.MAX_WIDTH} wide (a narrow network); {wide[0]} is not"
    for a in acts:
        if a not in ACTIVATIONS:
            return ValueError, f"unknown activation {a!r}; expected one of {', '.join(ACTIVATIONS)}"
        if ACTIVATION_RECORDS[a].grad_from != "output":
            return ValueError, (f"{a}'s derivative reads its input, which the step does not keep; "
                                f"use identity, relu, sigmoid or tanh")
    if loss not in narrow_limits.LOSSES:
        return ValueError, f"unknown loss {loss!r}; expected one of {', '.join(narrow_limits.LOSSES)}"
    if loss == "cross-entropy" and acts[-1] != "identity":
        return ValueError, f"cross-entropy takes logits: the last activation must be identity, got {acts[-1]}"
    return None


def _narrow_variant(widths, acts, loss, momentum, **_):
    return f"{'-'.join(map(str, widths))} {'/'.join(acts)}, {loss}" + (f", m={momentum:g}" if momentum else "")


@_op(cost=lambda widths, rows, momentum, params, **_: narrow_step_cost(widths, rows, momentum, params.shape[0]),
     variant=_narrow_variant)
def narrow_step(backend, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets,
                loss, rows, loss_sum, correct, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One whole training step of a narrow MLP from device state: ``gather_batch`` of ``rows``
    rows at the cursor; per Dense layer ``h = act(h W + b)``; the loss (``mse`` or
    ``cross-entropy``, += its batch mean into ``loss_sum``; ``correct +=`` the rows whose argmax is
    the label); the backward pass into ``grads``; ``sgd_update`` of ``params`` at ``lr[0]``; then
    ``advance_step``.  The ops named, in that order, are its definition (the NumPy backend runs them).

    params/grads/velocity (P,): the layers' W (in, out) and b at ``offsets`` (2L,: W_1, b_1, W_2, ...,
    in order, not overlapping: a Sequential's flat storage, ``model.params.offsets``); the gaps
    between them are updated as ``sgd_update`` of the whole would (a zero gradient); widths (L+1,)
    the input's then each layer's, each after the input at most 32 wide, L at most 4; acts (L,)
    activations whose derivative reads their output (identity, relu, sigmoid, tanh; cross-entropy's
    last is identity).  On a GPU: two kernels."""
    op = "narrow_step"
    for name, a in (("x", x), ("lr_table", lr_table)):
        array(op, name, a, ndim=2 if name == "x" else 1, dtype=backend.dtype, backend=backend)
    array(op, "labels", labels, shape=(x.shape[0],), dtype=int32, backend=backend)
    array(op, "order", order, ndim=1, dtype=int32, backend=backend)
    array(op, "cursor", cursor, shape=(2,), dtype=int32, backend=backend)
    if lr_table.shape[0] == 0:
        raise ShapeError(f"{op}: lr_table is empty")
    for name, a in (("lr", lr), ("loss_sum", loss_sum)):
        array(op, name, a, shape=(1,), dtype=backend.dtype, backend=backend)
    array(op, "correct", correct, shape=(1,), dtype=int32, backend=backend)
    widths, acts = tuple(widths), tuple(acts)
    if not all(isinstance(w, (int, np.integer)) and w > 0 for w in widths) or widths[:1] != (x.shape[1],):
        raise ShapeError(f"{op}: widths must be positive integers starting with x's {x.shape[1]} columns, got {widths}")
    problem = narrow_network_problem(widths, acts, loss)
    if problem is not None:
        raise problem[0](f"{op}: {problem[1]}")
    array(op, "params", params, ndim=1, dtype=backend.dtype, backend=backend)
    array(op, "grads", grads, shape=params.shape, dtype=backend.dtype, backend=backend)
    offsets = tuple(offsets)
    sizes = [size for a, b in zip(widths[:-1], widths[1:]) for size in (a * b, b)]
    end = 0
    if len(offsets) != len(sizes) or not all(isinstance(o, (int, np.integer)) for o in offsets):
        raise ShapeError(f"{op}: offsets must be {len(sizes)} integers (each layer's W and b), got {offsets}")
    for o, size in zip(offsets, sizes):
        if o < end:
            raise ShapeError(f"{op}: offsets {offsets} overlap or are out of order (W and b of each layer, in order)")
        end = o + size
    if end > params.shape[0]:
        raise ShapeError(f"{op}: the layers need {end} parameters at offsets {offsets}; params has {params.shape[0]}")
    n_params = params.shape[0]
    momentum = MOMENTUM.check(op, "momentum", momentum)
    weight_decay = WEIGHT_DECAY.check(op, "weight_decay", weight_decay)
    if momentum:
        array(op, "velocity", velocity, shape=(n_params,), dtype=backend.dtype, backend=backend)
    if not isinstance(rows, (int, np.integer)) or not 0 < rows < 2**31:
        raise ShapeError(f"{op}: rows must be a positive int32, got {rows!r}")
    _check_cursor(op, backend, x, order, cursor, int(rows))
    labels_in_range(op, labels, widths[-1], backend)
    return (x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts,
            tuple(int(o) for o in offsets), loss, int(rows), loss_sum, correct, momentum, weight_decay, bool(nesterov))
