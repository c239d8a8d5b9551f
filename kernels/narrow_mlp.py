"""A narrow MLP's whole training step in two kernels: the primer's 784-16-16-10 network.

A network whose layers after the input are at most ``MAX_WIDTH`` (32) wide does almost no
arithmetic per step (7.5 MFLOP for the primer's at batch 100), so the ~20 kernels of the
general step (gather, 3 x GEMM + bias_act, the loss and its reduction, the count, 3 x
act_bias_backward, 5 GEMMs, the update, the advance) cost their boundaries, not their work.
Here the same step is two launches, with no float atomics (a run is bit-identical to the next):

1. ``narrow_rows_kernel``, one block per batch row (grid-stride beyond the grid): the row's
   index from the epoch's order at the cursor, the forward pass layer by layer (each output a
   dot product: thread ``t`` owns output ``t % 32`` and every 4th input from ``t // 32``, and
   the four partial sums are added in a fixed order), the loss, the gradient and the argmax
   of the output row (by one thread: it is <= 32 wide), then the backward pass's deltas,
   ``δ_{l-1} = act'(h_{l-1}) · (W_l δ_l)``, one thread per unit.  The activations and deltas of
   each row go to two workspaces (rows x the sum of the widths), the row's loss to a third,
   and its hit to the block's count (one integer atomic per block).
2. ``narrow_update_kernel``, one thread per parameter: its gradient summed over the batch's
   rows in row order (``dW_l[k, j] = Σ_r in_l[r, k] δ_l[r, j]``, ``db_l[j] = Σ_r δ_l[r, j]``),
   written to the model's gradient, then the SGD rule (``update_rules.sgd_rule``: momentum,
   Nesterov, weight decay) in place.  Thread 0 also adds the batch's mean loss to the epoch's
   sum (rows in order) and advances the cursor and the rate, as ``batch.advance_step_kernel``.

Kernel 2 may not read the cursor or the rate that its thread 0 writes, so kernel 1 leaves
them in a small workspace (``meta``: the step's rate; ``idx``: the rows' indices).

What a block holds is the row's inputs in flight, never a whole layer: nothing here is limited
by shared memory.  The limits are ``MAX_WIDTH`` and ``MAX_LAYERS``, checked by the op's record.
The widths, activations and parameter offsets (W and b of each layer, anywhere in the flat
parameters: a Sequential aligns each array to 16 floats) are a small int32 table on the device.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, void

from .bias_act import ACT_CODES, act_grad, activate
from .launch import F0, NEG_INF, ONE, KernelSpec, clamp_grid, elementwise_config
from .narrow_limits import LOSSES, MAX_LAYERS, MAX_WIDTH
from .update_rules import sgd_rule

ROW_BLOCK = 128  # threads per row: MAX_WIDTH outputs x LANES partial sums
LANES = ROW_BLOCK // MAX_WIDTH
LOSS_CODES = {name: code for code, name in enumerate(LOSSES)}  # 0: mse, 1: cross-entropy

_rule = cuda.jit(device=True)(sgd_rule)


@cuda.jit(device=True)
def _dense(sh, src, src_row, src_col, width_in, params, w_off, b_off, width_out, act, h, row, h_col):
    """``h[row, h_col + j] = act(Σ_k src[src_row, src_col + k] W[k, j] + b[j])`` for j < width_out,
    by the block: thread t sums every LANES-th k from t // MAX_WIDTH for output t % MAX_WIDTH,
    then lane 0 adds the LANES partial sums in order.  All threads call it (it has barriers)."""
    tid = cuda.threadIdx.x
    j, lane = tid % MAX_WIDTH, tid // MAX_WIDTH
    acc = F0
    if j < width_out:
        for k in range(lane, width_in, LANES):
            acc += src[src_row, src_col + k] * params[w_off + k * width_out + j]
    sh[tid] = acc
    cuda.syncthreads()
    if lane == 0 and j < width_out:
        z = params[b_off + j]
        for q in range(LANES):
            z += sh[q * MAX_WIDTH + j]
        h[row, h_col + j] = activate(z, act)
    cuda.syncthreads()


@cuda.jit
def narrow_rows_kernel(x, labels, order, cursor, lr, params, w_offs, b_offs, widths, acts, loss_kind, inv_n,
                       h, delta, cols, row_loss, idx, meta, correct):
    """Kernel 1 (see the module docstring): forward, loss, gradient and deltas of each batch row.

    widths (L+1,): the input's then each layer's; cols (L,): each layer's first column in h and
    delta; w_offs, b_offs (L,): each layer's W and b in the flat params."""
    sh = cuda.shared.array(ROW_BLOCK, float32)
    tid = cuda.threadIdx.x
    n_layers = acts.shape[0]
    rows = h.shape[0]
    start = cursor[0]
    if cuda.blockIdx.x == 0 and tid == 0:
        meta[0] = lr[0]  # the step's rate, for kernel 2 (whose thread 0 writes the next one)
    hits = 0
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        src = order[start + r]
        if tid == 0:
            idx[r] = src
        _dense(sh, x, src, 0, widths[0], params, w_offs[0], b_offs[0], widths[1], acts[0], h, r, cols[0])
        for l in range(1, n_layers):
            _dense(sh, h, r, cols[l - 1], widths[l], params, w_offs[l], b_offs[l], widths[l + 1], acts[l],
                   h, r, cols[l])
        last = n_layers - 1
        c, out = widths[n_layers], cols[last]
        if tid == 0:  # the loss, its gradient (into delta) and the argmax: one output row, <= 32 wide
            t = labels[src]
            m, best = NEG_INF, 0
            for q in range(c):
                if h[r, out + q] > m:
                    m, best = h[r, out + q], q
            if best == t:
                hits += 1
            if loss_kind == 0:  # the quadratic cost: Σ (y - onehot)², grad (y - onehot)/N
                s = F0
                for q in range(c):
                    g = h[r, out + q] - (ONE if q == t else F0)
                    s += g * g
                    delta[r, out + q] = act_grad(g * inv_n, h[r, out + q], acts[last])
                row_loss[r] = s
            else:  # softmax cross-entropy on logits: log Σ exp(z - m) - (z_t - m)
                s = F0
                for q in range(c):
                    s += math.exp(h[r, out + q] - m)
                row_loss[r] = math.log(s) - (h[r, out + t] - m)
                for q in range(c):
                    p = math.exp(h[r, out + q] - m) / s
                    if q == t:
                        p -= ONE
                    delta[r, out + q] = act_grad(p * inv_n, h[r, out + q], acts[last])
        cuda.syncthreads()
        for l in range(last, 0, -1):  # δ_{l-1}[k] = act'(h_{l-1}[k]) Σ_j W_l[k, j] δ_l[j]
            k, wout = tid, widths[l + 1]
            if k < widths[l]:
                acc = F0
                for j in range(wout):
                    acc += params[w_offs[l] + k * wout + j] * delta[r, cols[l] + j]
                delta[r, cols[l - 1] + k] = act_grad(acc, h[r, cols[l - 1] + k], acts[l - 1])
            cuda.syncthreads()
    if tid == 0 and hits > 0:
        cuda.atomic.add(correct, 0, hits)


@cuda.jit
def narrow_update_kernel(x, idx, h, delta, cols, params, grads, velocity, w_offs, b_offs, widths, meta,
                         momentum, weight_decay, nesterov, row_loss, loss_sum, loss_divisor,
                         cursor, lr_table, lr):
    """Kernel 2 (see the module docstring): each parameter's gradient over the rows, then SGD."""
    n_layers = w_offs.shape[0]
    rows = h.shape[0]
    rate = meta[0]
    with_velocity = momentum != F0
    for i in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        layer = 0
        for l in range(1, n_layers):
            if i >= w_offs[l]:
                layer = l
        win, wout = widths[layer], widths[layer + 1]
        g = F0  # a gap between the arrays (alignment) keeps a zero gradient, as in the flat update
        if i >= b_offs[layer]:  # a bias: Σ_r δ[r, j]
            j = i - b_offs[layer]
            if j < wout:
                for r in range(rows):
                    g += delta[r, cols[layer] + j]
        elif i - w_offs[layer] < win * wout:  # a weight W[k, j]: Σ_r in[r, k] δ[r, j]
            k, j = (i - w_offs[layer]) // wout, (i - w_offs[layer]) % wout
            if layer == 0:
                for r in range(rows):
                    g += x[idx[r], k] * delta[r, cols[0] + j]
            else:
                for r in range(rows):
                    g += h[r, cols[layer - 1] + k] * delta[r, cols[layer] + j]
        grads[i] = g
        p, v = _rule(params[i], g, velocity[i] if with_velocity else F0, rate, momentum, weight_decay, nesterov)
        params[i] = p
        if with_velocity:
            velocity[i] = v
    if cuda.grid(1) == 0:  # the loss's mean into the epoch's sum, rows in order; then the cursor
        s = F0
        for r in range(rows):
            s += row_loss[r]
        loss_sum[0] += s / loss_divisor
        cursor[0] += rows
        t = cursor[1] + 1
        cursor[1] = t
        last = lr_table.shape[0] - 1
        lr[0] = lr_table[t if t < last else last]


# ---------------------------------------------------------------------------- the op's launches


def columns(widths):
    """Each layer's first column in the activation and delta workspaces (rows x the sum of the widths)."""
    return [sum(widths[1:1 + l]) for l in range(len(widths) - 1)]


def dense_offsets(widths):
    """``(offsets, parameters)`` of the layers' W and b packed with no gaps: W_1, b_1, W_2, ..."""
    offsets, at = [], 0
    for a, b in zip(widths[:-1], widths[1:]):
        offsets += [at, at + a * b]
        at += a * b + b
    return tuple(offsets), at


def plan(ctx, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets, loss, rows,
         loss_sum, correct, momentum, weight_decay, nesterov):
    """The two launches of one step (``ctx``: the backend: ``workspace``, ``constant``, ``max_blocks``)."""
    w_offs, b_offs, cols = offsets[0::2], offsets[1::2], columns(widths)
    key = ("narrow", tuple(widths))
    table = np.zeros((5, MAX_LAYERS + 1), np.int32)
    for row, values in enumerate((widths, w_offs, b_offs, cols, [ACT_CODES[a] for a in acts])):
        table[row, :len(values)] = values
    consts = ctx.constant("narrow", table)  # uploaded once: a graph captures no copy
    n_layers = len(acts)
    widths_d, w_d, b_d, cols_d, acts_d = (consts[0, :n_layers + 1], consts[1, :n_layers], consts[2, :n_layers],
                                          consts[3, :n_layers], consts[4, :n_layers])
    total = sum(widths[1:])
    h = ctx.workspace(key + ("h",), (rows, total))
    delta = ctx.workspace(key + ("delta",), (rows, total))
    row_loss = ctx.workspace(key + ("row_loss",), (rows,))
    idx = ctx.workspace(key + ("idx",), (rows,), np.int32)
    meta = ctx.workspace(key + ("meta",), (1,))
    v = velocity if momentum else ctx.workspace(("narrow", "no_velocity"), (1,))
    mse = loss == "mse"
    return [
        ("narrow_rows", narrow_rows_kernel, clamp_grid(rows, ctx.max_blocks), ROW_BLOCK,
         (x, labels, order, cursor, lr, params, w_d, b_d, widths_d, acts_d, np.int32(LOSS_CODES[loss]),
          np.float32(1.0 / rows), h, delta, cols_d, row_loss, idx, meta, correct)),
        ("narrow_update", narrow_update_kernel, *elementwise_config(params.shape[0], ctx.elementwise_threads,
                                                                     ctx.max_blocks),
         (x, idx, h, delta, cols_d, params, grads, v, w_d, b_d, widths_d, meta, np.float32(momentum),
          np.float32(weight_decay), np.int32(nesterov), row_loss, loss_sum, np.float32(2 * rows if mse else rows),
          cursor, lr_table, lr)),
    ]


SIGNATURES_ROWS = [void(float32[:, ::1], int32[::1], int32[::1], int32[::1], float32[::1], float32[::1],
                        int32[::1], int32[::1], int32[::1], int32[::1], int32, float32, float32[:, ::1],
                        float32[:, ::1], int32[::1], float32[::1], int32[::1], float32[::1], int32[::1])]
SIGNATURES_UPDATE = [void(float32[:, ::1], int32[::1], float32[:, ::1], float32[:, ::1], int32[::1], float32[::1],
                          float32[::1], float32[::1], int32[::1], int32[::1], int32[::1], float32[::1], float32,
                          float32, int32, float32[::1], float32[::1], float32, int32[::1], float32[::1],
                          float32[::1])]

KERNELS = (
    KernelSpec("narrow_rows", narrow_rows_kernel, tuple(SIGNATURES_ROWS), ROW_BLOCK, 4 * ROW_BLOCK, "narrow_step"),
    KernelSpec("narrow_update", narrow_update_kernel, tuple(SIGNATURES_UPDATE), 256, 0, "narrow_step"),
)
