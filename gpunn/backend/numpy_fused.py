"""Fused CPU loops for the numpy backend, compiled with Numba when it is installed.

The reference (:mod:`gpunn.backend.numpy_backend`) writes each op as a chain of NumPy
ufuncs: every ufunc is one more pass over memory and one more Python-level call.  On
the 784-512-512-10 network the momentum SGD update alone is four passes over 670k
parameters (``v *= m; v += g; t = lr*v; p -= t``); on the 784-16-16-10 network most
ops touch a few thousand numbers and the calls cost more than the arithmetic.  Here
the ops whose chains are long and whose arithmetic is plain (+, *, compare, one exp
per logit) are single compiled loops, one pass each:

==========================  ===========================================================
op                          fused loop
==========================  ===========================================================
``sgd_update``              ``v = m*v + g; p -= lr*v`` (and weight decay, Nesterov)
``adam_update``             Adam / AdamW: kernels/update_rules.py's rule, the GPU kernel's too
``bias_act``                ``out = f(x + b)`` for each activation without tanh (relu, identity)
``act_backward``            ``out = dy * f'(s)`` for each derivative without tanh (all but GELU, SiLU)
``softmax_cross_entropy``   per row: max, exp, sum, log, gradient, loss
``mse``                     per row: difference to one-hot, gradient, squared sum
``count_correct``           per row: first argmax, compare
==========================  ===========================================================

``gemm`` and ``bias_grad`` (``1ᵀ dy``, a matrix-vector product) stay BLAS; a forward
with tanh (sigmoid, tanh, GELU, SiLU) stays NumPy, whose vectorised ``tanh`` beats a compiled scalar
loop; softmax and its backward stay NumPy (not on a training path the benchmarks
measure).  Every loop does the reference's float32 arithmetic in the reference's
order where it can (``sgd_update``, ``act_backward`` and ``bias_act`` agree bit for
bit); the losses sum in float64, so they agree to rounding.  ``tests/backend/test_fused_cpu.py`` checks each against the
reference on irregular shapes.

The registry, not the user, picks this path: ``get_backend("numpy")`` builds
:class:`FusedNumpyBackend` when Numba imports with its JIT on, and the pure
``NumpyBackend`` otherwise or with ``GPUNN_FUSED=0``; ``describe()`` says which.
"""
from __future__ import annotations

import hashlib
import math
import types
from pathlib import Path

import numpy as np
from numba import config as numba_config
from numba import njit

from gpunn.backend.numpy_backend import NumpyBackend
from gpunn.kernels import activations, update_rules
from gpunn.kernels.activations import ACTIVATIONS, compiled_forms

# cache=True: compiled once per machine (in __pycache__), loaded in milliseconds after
_jit = njit(cache=True, nogil=True)

F32 = np.float32
F1 = np.float32(1.0)
F0 = np.float32(0.0)


# ---------------------------------------------------------------------------- elementwise


def _sgd_loop(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    """(P,) arrays in place: PyTorch's SGD, kernels/update_rules.py's ``sgd_rule`` per element (the
    global ``formula`` its copy binds), the reference's operations in its order."""
    with_velocity = momentum != F0
    for i in range(param.shape[0]):
        param[i], v = formula(param[i], grad[i], velocity[i] if with_velocity else F0, lr,  # noqa: F821
                              momentum, weight_decay, nesterov)
        if with_velocity:
            velocity[i] = v


def _bias_act_loop(x, bias, out):
    """out (N,D) = f(x + bias), one pass; ``f`` is the global ``formula`` its copy binds (see
    :func:`_bound_loop`); out may be x."""
    n, d = x.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = formula(x[i, j] + bias[j])  # noqa: F821 - bound per activation


def _backward_loop(s, dy, out):
    """out (N,D) = formula(dy, s) = dy * f'(s), one pass; out may be dy."""
    n, d = s.shape
    for i in range(n):
        for j in range(d):
            out[i, j] = formula(dy[i, j], s[i, j])  # noqa: F821 - bound per activation


# Numba's on-disk cache knows only the file a function is in, not the files of what it calls:
# the loops' cache names carry a digest of the formulas' files, so an edited formula is recompiled.
_RECORDS_DIGEST = hashlib.sha256(b"".join(Path(m.__file__).read_bytes()
                                          for m in (activations, update_rules))).hexdigest()[:12]


def _bound_loop(loop, formula, name):
    """``loop``'s code with ``formula`` as its global, compiled and cached under a name of its own
    (Numba's on-disk cache is keyed by the function's qualified name: one file per activation
    and version of kernels/activations.py and kernels/update_rules.py)."""
    name = f"{name}_{_RECORDS_DIGEST}"
    fn = types.FunctionType(loop.__code__, {**loop.__globals__, "formula": formula}, name)
    fn.__qualname__ = name
    return _jit(fn)


def _adam_loop(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """(P,) arrays in place: one Adam(W) step, kernels/update_rules.py's ``adam_rule`` per element
    (the global ``formula`` its copy binds)."""
    step_size, bc2_sqrt = corrections(lr, beta1, beta2, t)  # noqa: F821 - bound below
    for i in range(param.shape[0]):
        param[i], m[i], v[i] = formula(param[i], grad[i], m[i], v[i], lr, beta1, beta2, eps,  # noqa: F821
                                       weight_decay, decoupled, step_size, bc2_sqrt)


# ---------------------------------------------------------------------------- per row


@_jit
def softmax_cross_entropy(logits, labels, grad, inv_n):
    """grad = (softmax - onehot) * inv_n, row by row; returns the mean loss (float64 sum).

    grad may be logits: each row reads its logits before writing its gradient."""
    n, c = logits.shape
    total = 0.0
    for i in range(n):
        label = labels[i]
        z_true = logits[i, label]
        m = logits[i, 0]
        for j in range(1, c):
            if logits[i, j] > m:
                m = logits[i, j]
        s = F0
        for j in range(c):
            e = np.float32(math.exp(logits[i, j] - m))
            grad[i, j] = e
            s += e
        for j in range(c):                      # the reference's order: (p - onehot) * inv_n
            q = grad[i, j] / s
            if j == label:
                q -= F1
            grad[i, j] = q * inv_n
        total += math.log(s) - (z_true - m)   # log-sum-exp - z[label], z - m first (no cancellation)
    return total / n


@_jit
def mse(y, labels, grad, inv_n):
    """grad = (y - onehot) * inv_n; returns sum((y - onehot)^2) / (2N) (float64 sum)."""
    n, c = y.shape
    total = 0.0
    for i in range(n):
        label = labels[i]
        for j in range(c):
            d = y[i, j] - (F1 if j == label else F0)
            total += d * d
            grad[i, j] = d * inv_n
    return total / (2 * n)


@_jit
def count_correct(scores, labels):
    """Rows whose first argmax (a NaN counts as the max, as np.argmax) equals the label."""
    n, c = scores.shape
    hits = 0
    for i in range(n):
        best, arg = scores[i, 0], 0
        if best == best:
            for j in range(1, c):
                v = scores[i, j]
                if v != v:
                    arg = j
                    break
                if v > best:
                    best, arg = v, j
        if arg == labels[i]:
            hits += 1
    return hits


# ---------------------------------------------------------------------------- binding


# Each record's formulas, compiled (kernels/activations.py), in one loop each. A formula that calls
# tanh stays NumPy's: its vectorised tanh beats a compiled scalar loop, and a scalar tanhf may
# differ from it in the last place (these loops agree with the reference bit for bit).
def _plain(formula) -> bool:
    return "tanh" not in formula.__code__.co_names


_FORMS = compiled_forms(_jit)
_BIAS_ACT = {name: _bound_loop(_bias_act_loop, _FORMS[name][0], f"bias_{name}")
             for name, a in ACTIVATIONS.items() if _plain(a.forward)}
_BACKWARD = {name: _bound_loop(_backward_loop, _FORMS[name][1], f"{name}_backward")
             for name, a in ACTIVATIONS.items() if _plain(a.backward)}


sgd_update = _bound_loop(_sgd_loop, _jit(update_rules.sgd_rule), "sgd_update")
_ADAM = _bound_loop(types.FunctionType(_adam_loop.__code__, {**_adam_loop.__globals__,
                                                              "corrections": _jit(update_rules.adam_corrections)}),
                    _jit(update_rules.adam_rule), "adam_update")


def jit_enabled() -> bool:
    """False under NUMBA_DISABLE_JIT, where these loops would run as slow Python."""
    return not numba_config.DISABLE_JIT


class FusedNumpyBackend(NumpyBackend):
    """The numpy backend with the loops above as its ``_op`` implementations (float32);
    the ops they do not cover are the reference's methods, inherited."""

    fused = True

    def __init__(self):
        super().__init__(np.float32)

    def describe(self) -> str:
        return "numpy (CPU, Numba-fused elementwise ops)"

    def _bias_act(self, x, bias, act, out):
        kernel = _BIAS_ACT.get(act)
        if kernel is None:                   # a forward with tanh: NumPy's vector tanh is faster
            super()._bias_act(x, bias, act, out)
        else:
            kernel(x, self._zero_row(x.shape[1]) if bias is None else bias, out)

    def _act_backward(self, s, dy, act, out):
        kernel = _BACKWARD.get(act)
        if kernel is None:                   # a derivative with tanh (GELU, SiLU): NumPy's
            super()._act_backward(s, dy, act, out)
        else:
            kernel(s, dy, out)

    def _softmax_cross_entropy(self, logits, labels, grad, loss, accumulate, correct, bias_grad):
        if correct is not None:  # on the logits, before grad may overwrite them
            correct[0] += count_correct(logits, labels)
        value = F32(softmax_cross_entropy(logits, labels, grad, F32(1.0 / logits.shape[0])))
        loss[0] = loss[0] + value if accumulate else value
        if bias_grad is not None:  # the layer's db, as its own bias_grad would sum it
            self._bias_grad(grad, bias_grad)

    def _mse(self, y, labels, grad, loss, accumulate):
        value = F32(mse(y, labels, grad, F32(1.0 / y.shape[0])))
        loss[0] = loss[0] + value if accumulate else value

    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        v = velocity.reshape(-1) if momentum else param.reshape(-1)[:0]
        lr = F32(lr if np.isscalar(lr) else lr[0])  # a number, or a one-element array holding it
        sgd_update(param.reshape(-1), grad.reshape(-1), v, lr, F32(momentum), F32(weight_decay), nesterov)

    def _adam_update(self, param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled):
        lr = F32(lr if np.isscalar(lr) else lr[0])  # a number, or a one-element array holding it
        _ADAM(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), lr, F32(beta1), F32(beta2),
              F32(eps), F32(weight_decay), bool(decoupled), int(step[0]))

    def _count_correct(self, scores, labels, out):
        out[0] += count_correct(scores, labels)
