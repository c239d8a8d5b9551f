"""The op set: what every backend must implement, and what each op costs.

This module is the contract ("the op set is the contract"). It names each op, its
shapes and dtypes, and gives its cost in floating-point operations and bytes moved,
so the profiler, the benchmarks and the kernels' own cost helpers all agree.

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

from typing import NamedTuple

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")

F32 = 4  # bytes per float32
I32 = 4  # bytes per int32

#: FLOPs per element of activation forward (after the bias add) and backward.
ACT_FORWARD_FLOPS = {"identity": 0, "relu": 1, "sigmoid": 3, "tanh": 1}
ACT_BACKWARD_FLOPS = {"identity": 0, "relu": 2, "sigmoid": 3, "tanh": 3}


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
    flops = n * d * ((1 if has_bias else 0) + ACT_FORWARD_FLOPS[act])
    return Cost(flops, F32 * (2 * n * d + (d if has_bias else 0)))


def act_backward_cost(n: int, d: int, act: str) -> Cost:
    """``out (N,D) = dy * act'(y)``: reads y and dy, writes out."""
    return Cost(n * d * (1 + ACT_BACKWARD_FLOPS[act]), F32 * 3 * n * d)


def bias_grad_cost(n: int, d: int) -> Cost:
    """``out (D,) = dy.sum(axis=0)``: N*D adds, reads dy, writes out."""
    return Cost(n * d, F32 * (n * d + d))


def act_bias_backward_cost(n: int, d: int, act: str) -> Cost:
    """``dz = dy * act'(y)`` and ``db = dz.sum(axis=0)`` in one pass: reads y and dy, writes dz and db."""
    return Cost(n * d * (2 + ACT_BACKWARD_FLOPS[act]), F32 * (3 * n * d + d))


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


def count_correct_cost(n: int, c: int) -> Cost:
    """Row argmax (C compares) and one compare with the label; reads scores and labels."""
    return Cost(n * c + n, F32 * n * c + I32 * n + I32)


def gather_batch_cost(b: int, d: int) -> Cost:
    """``xb (B,D) = x[order[c:c+B]]``, ``yb = labels[...]``: no FLOPs; reads B rows, indices and
    labels, writes the batch."""
    return Cost(0, F32 * 2 * b * d + I32 * 3 * b + I32)


def advance_step_cost() -> Cost:
    """``cursor += (stride, 1)``, ``lr[0] = lr_table[cursor[1]]``: two adds; a few words."""
    return Cost(2, I32 * 4 + F32 * 2)


#: Every op of the contract, with its cost function.  A backend implements exactly these.
OPS = {
    "gemm": gemm_cost,
    "bias_act": bias_act_cost,
    "act_backward": act_backward_cost,
    "bias_grad": bias_grad_cost,
    "act_bias_backward": act_bias_backward_cost,
    "softmax": softmax_cost,
    "softmax_backward": softmax_backward_cost,
    "softmax_cross_entropy": softmax_cross_entropy_cost,
    "mse": mse_cost,
    "sgd_update": sgd_update_cost,
    "count_correct": count_correct_cost,
    "gather_batch": gather_batch_cost,
    "advance_step": advance_step_cost,
}
