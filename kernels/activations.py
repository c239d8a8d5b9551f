"""One record per activation: the only place an activation is defined.

Each :class:`Activation` holds its forward ``f(z)`` and its backward ``g * f'(·)`` as scalar
formulas written once, over float32 constants and two primitives, ``tanh`` and
``where(cond, a, b)``.  :func:`bind` gives the same formula's code new primitives:

* the CUDA kernels bind ``math.tanh`` and a device ``where`` and compile each
  formula as a ``@cuda.jit(device=True)`` function (:mod:`.bias_act`, :mod:`.act_backward`);
* the fused CPU loops bind the same and ``numba.njit`` it (``gpunn/backend/numpy_fused.py``);
* the NumPy reference binds ``numpy.tanh``/``numpy.where``: the formula then runs
  on whole arrays (``gpunn/backend/numpy_backend.py``), and so does CuPy's in ``gpunn bench``.

The backward of an activation whose derivative is a function of its output (relu, sigmoid,
tanh) reads the layer's saved *output*; one whose derivative needs its input (GELU, SiLU)
reads the saved *input*: ``grad_from`` says which, and the layer saves what it says.

Everything else (the op set's checks and FLOP counts, the kernels' activation codes, the
layers' initialisers and layer types, the command line's choices, the tests) reads
:data:`ACTIVATIONS`.  Adding an activation is adding a record here.

This module imports nothing but NumPy: the NumPy backend needs it without Numba.
"""
from __future__ import annotations

import math
import types
from typing import Callable, NamedTuple

import numpy as np

F0, HALF, ONE, TWO = np.float32(0.0), np.float32(0.5), np.float32(1.0), np.float32(2.0)
GELU_C = np.float32(math.sqrt(2.0 / math.pi))  # GELU's tanh form: sqrt(2/pi) (z + 0.044715 z³)
GELU_K = np.float32(0.044715)
GELU_3K = np.float32(3 * 0.044715)


def _where(cond, a, b):  # the scalar primitive; NumPy's is numpy.where
    return a if cond else b


# ---------------------------------------------------------------------------- the formulas
# forward: f(z); backward: g * f'(s), s being the output y = f(z) or the input z (grad_from)

def identity_forward(z):
    return z


def identity_backward(g, y):
    return g


def relu_forward(z):
    return where(z < F0, F0, z)  # noqa: F821 - bound by bind(); NaN stays NaN


def relu_backward(g, y):
    return g * where(y > F0, ONE, F0)  # noqa: F821 - a multiply, not a select: 0 * inf is NaN


def sigmoid_forward(z):
    return (tanh(z * HALF) + ONE) * HALF  # noqa: F821 - 1/(1+e^-z) that cannot overflow


def sigmoid_backward(g, y):
    return g * ((ONE - y) * y)


def tanh_forward(z):
    return tanh(z)  # noqa: F821


def tanh_backward(g, y):
    return g * (ONE - y * y)


def gelu_forward(z):
    return HALF * z * (ONE + tanh(GELU_C * (z + GELU_K * z * z * z)))  # noqa: F821


def gelu_backward(g, z):
    t = tanh(GELU_C * (z + GELU_K * z * z * z))  # noqa: F821
    return g * (HALF * (ONE + t) + HALF * z * (ONE - t * t) * GELU_C * (ONE + GELU_3K * z * z))


def silu_forward(z):
    return z * ((tanh(z * HALF) + ONE) * HALF)  # noqa: F821 - z * sigmoid(z)


def silu_backward(g, z):
    s = (tanh(z * HALF) + ONE) * HALF  # noqa: F821
    return g * (s + z * s * (ONE - s))


# ---------------------------------------------------------------------------- the records

class Activation(NamedTuple):
    """One activation, everything gpunn needs to know about it."""

    name: str  # the word in configs, options and checkpoints
    code: int  # what the kernels branch on (uniform across a launch)
    layer: str  # the name of its standalone layer class (``ReLU``)
    forward: Callable  # f(z), a scalar formula (see the module docstring)
    backward: Callable  # g * f'(s), s the saved output or input
    grad_from: str  # "output" or "input": what the backward reads
    forward_flops: int  # per element, after the bias add
    backward_flops: int  # per element, the multiply by g excluded
    init: str  # "he" (normal, std sqrt(2/in)) or "glorot" (uniform, limit sqrt(6/(in+out)))


ACTIVATIONS = {a.name: a for a in (
    Activation("identity", 0, "Identity", identity_forward, identity_backward, "output", 0, 0, "glorot"),
    Activation("relu", 1, "ReLU", relu_forward, relu_backward, "output", 1, 2, "he"),
    Activation("sigmoid", 2, "Sigmoid", sigmoid_forward, sigmoid_backward, "output", 3, 3, "glorot"),
    Activation("tanh", 3, "Tanh", tanh_forward, tanh_backward, "output", 1, 3, "glorot"),
    Activation("gelu", 4, "GELU", gelu_forward, gelu_backward, "input", 9, 18, "he"),
    Activation("silu", 5, "SiLU", silu_forward, silu_backward, "input", 5, 7, "he"),
)}

#: the activations' names, in the records' order
NAMES = tuple(ACTIVATIONS)


def bind(fn, tanh, where):
    """``fn``'s code with the primitives ``tanh`` and ``where`` bound (see the module docstring)."""
    scope = {**fn.__globals__, "tanh": tanh, "where": where}
    return types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)


def numpy_form(fn, xp=np):
    """The formula ``fn`` on whole arrays of the array module ``xp`` (NumPy, or CuPy)."""
    return bind(fn, xp.tanh, xp.where)


def compiled_forms(jit):
    """``{name: (forward, backward)}`` compiled with ``jit`` (``numba.njit`` or a device
    ``cuda.jit``), the primitive ``where`` compiled with it."""
    where = jit(_where)
    return {a.name: (jit(bind(a.forward, math.tanh, where)), jit(bind(a.backward, math.tanh, where)))
            for a in ACTIVATIONS.values()}


def dispatcher(forms, jit):
    """``(activate(z, code), act_grad(g, s, code))`` compiled with ``jit``: one uniform branch per
    record over the compiled ``forms`` (:func:`compiled_forms`), for kernels that serve every
    activation with one launch configuration. Generated from the records, never listed by hand."""
    scope = {f"{a.name}_{part}": forms[a.name][i] for a in ACTIVATIONS.values() for i, part in enumerate(("f", "b"))}
    source = ["def activate(z, code):"]
    source += [f"    if code == {a.code}:\n        return {a.name}_f(z)" for a in ACTIVATIONS.values()]
    source += ["    return z", "", "def act_grad(g, s, code):"]
    source += [f"    if code == {a.code}:\n        return {a.name}_b(g, s)" for a in ACTIVATIONS.values()]
    source += ["    return g"]
    exec(compile("\n".join(source), "<gpunn.kernels.activations dispatcher>", "exec"), scope)  # noqa: S102
    return jit(scope["activate"]), jit(scope["act_grad"])
