"""The NumPy backend: the readable reference that defines what each op means.

Every op is written with NumPy ufuncs into the caller's ``out`` buffer; the few
per-row temporaries live in workspaces cached by shape, so a training step
allocates nothing after its first call.  Other backends are tested against this one.

``NumpyBackend()`` is that reference.  The registry's numpy backend
(``get_backend("numpy")``, what the trainer and the CLI use) is its subclass
:class:`gpunn.backend.numpy_fused.FusedNumpyBackend` when Numba is installed: the
ops whose ufunc chains are long become single compiled loops there, tested against
the methods below, which stay the definition; ``describe()`` says which path runs.
"""
from __future__ import annotations

import numpy as np

from gpunn.kernels.random import dropout_constants, philox2x32
from gpunn.backend.base import Backend, unfused_linear_backward
from gpunn.kernels.activations import ACTIVATIONS, numpy_form

#: each activation's forward and backward formula, bound to NumPy's primitives: whole-array code
_FORWARD = {name: numpy_form(a.forward) for name, a in ACTIVATIONS.items()}
_BACKWARD = {name: numpy_form(a.backward) for name, a in ACTIVATIONS.items()}

#: elements per block of an activation formula: its temporaries stay small (in cache, and a
#: training step's memory peak does not grow with the batch) for a few ufunc calls more
_BLOCK = 1 << 12


def _blockwise(formula, out, a, b=None):
    """``out = formula(a)`` (or ``formula(a, b)``) elementwise, a block at a time; ``out`` may be
    ``a`` or ``b``. (Written out for one and two arguments: a tuple per call would sit in Python's
    free lists, which a leak check counts.)"""
    flat, a = out.reshape(-1), a.reshape(-1)
    if b is None:
        for i in range(0, flat.size, _BLOCK):
            flat[i:i + _BLOCK] = formula(a[i:i + _BLOCK])
    else:
        b = b.reshape(-1)
        for i in range(0, flat.size, _BLOCK):
            flat[i:i + _BLOCK] = formula(a[i:i + _BLOCK], b[i:i + _BLOCK])


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    host_reads_free = True
    #: True for the Numba-fused subclass
    fused = False

    def __init__(self, dtype=np.float32):
        """``dtype``: float32, or float64 for gradient checks."""
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"numpy backend: dtype must be float32 or float64, got {self.dtype}")
        self._ws = {}

    def describe(self) -> str:
        return "numpy (CPU)" if self.dtype == np.float32 else f"numpy (CPU, {self.dtype})"

    def _workspace(self, tag, shape, dtype=None):
        """A scratch array cached by (tag, shape, dtype): allocated once, then reused."""
        key = (tag, shape, np.dtype(dtype or self.dtype))
        buf = self._ws.get(key)
        if buf is None:
            buf = self._ws[key] = np.empty(shape, dtype=key[2])
        return buf

    def _zero_row(self, d):
        """A (d,) array of zeros, never written: ``np.maximum(x, row)`` runs NumPy's vector
        loop, where a scalar 0 takes a loop several times slower (NumPy 1.2x-2.x)."""
        z = self._ws.get(("zeros", d))
        if z is None:
            z = self._ws[("zeros", d)] = np.zeros(d, dtype=self.dtype)
        return z

    def _ones(self, n):
        """A (n,) array of ones, never written."""
        o = self._ws.get(("ones", n))
        if o is None:
            o = self._ws[("ones", n)] = np.ones(n, dtype=self.dtype)
        return o

    def _onehot(self, labels, ncols):
        """The (N, ncols) one-hot rows of ``labels``, in a workspace: rows of the identity."""
        eye = self._ws.get(("eye", ncols))
        if eye is None:
            eye = self._ws[("eye", ncols)] = np.eye(ncols, dtype=self.dtype)
        onehot = self._workspace("onehot_rows", (labels.shape[0], ncols))
        np.take(eye, labels, axis=0, out=onehot, mode="clip")  # labels are validated; 'raise' buffers out
        return onehot

    def _row_index(self, labels, ncols):
        """Flat indices ``row * ncols + label`` of each row's true class."""
        n = labels.shape[0]
        rows = self._ws.get(("rows", n, ncols))
        if rows is None:
            rows = self._ws[("rows", n, ncols)] = np.arange(n, dtype=np.intp) * ncols
        idx = self._workspace("idx", (n,), np.intp)
        np.add(rows, labels, out=idx)
        return idx

    def _subtract_onehot(self, a, idx):
        """``a[row, label] -= 1`` for every row, through flat indices, allocation-free."""
        flat = a.reshape(-1)
        t = self._workspace("onehot", idx.shape)
        np.take(flat, idx, out=t, mode="clip")
        t -= 1.0
        np.put(flat, idx, t)

    # out = op(a) @ op(b) (+ out)
    def _gemm(self, a, b, out, trans_a, trans_b, accumulate):
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        if accumulate:
            tmp = self._workspace("gemm", out.shape)
            np.matmul(a, b, out=tmp)
            out += tmp
        else:
            np.matmul(a, b, out=out)

    # out = act(x + bias): the activation's formula (kernels/activations.py) on the whole array
    def _bias_act(self, x, bias, act, out):
        if bias is not None:
            np.add(x, bias, out=out)
        elif out is not x:
            np.copyto(out, x)
        if act != "identity":
            _blockwise(_FORWARD[act], out, out)

    # out = dy * act'(·), from s: the saved output y = act(z), or the input z (the record's grad_from)
    def _act_backward(self, s, dy, act, out):
        _blockwise(_BACKWARD[act], out, dy, s)

    def _bias_grad(self, dy, out):
        np.dot(self._ones(dy.shape[0]), dy, out=out)

    # a dense layer's forward: the two ops, in order
    def _linear(self, x, w, bias, act, out):
        self._gemm(x, w, out, False, False, False)
        self._bias_act(out, bias, act, out)

    # a dense layer's backward from dz: dw = xᵀ dz; dx = dz wᵀ, then through the layer below's
    # activation (and its bias gradient), in place: the ops, in order
    def _linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias):
        unfused_linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias)

    # dz = dy * act'(z); db = column sums of dz: the two ops above, in order
    def _act_bias_backward(self, s, dy, act, dz, db):
        self._act_backward(s, dy, act, dz)
        self._bias_grad(dz, db)

    def _softmax_rows(self, x, out):
        """out = exp(x - rowmax); returns (rowmax, rowsum) workspaces."""
        n = x.shape[0]
        m = self._workspace("rowmax", (n, 1))
        s = self._workspace("rowsum", (n, 1))
        np.max(x, axis=1, keepdims=True, out=m)
        with np.errstate(over="ignore"):  # x - max may round to -inf for huge spreads: exp gives 0
            np.subtract(x, m, out=out)
        np.exp(out, out=out)
        np.sum(out, axis=1, keepdims=True, out=s)
        return m, s

    # out = exp(x - max) / sum(exp(x - max)), per row
    def _softmax(self, x, out):
        _, s = self._softmax_rows(x, out)
        out /= s

    # out = y * (dy - sum(dy * y)), per row
    def _softmax_backward(self, y, dy, out):
        n = y.shape[0]
        t = self._workspace("sm_bwd", y.shape)
        dot = self._workspace("rowdot", (n, 1))
        np.multiply(dy, y, out=t)
        np.sum(t, axis=1, keepdims=True, out=dot)
        np.subtract(dy, dot, out=out)
        out *= y

    # grad = (softmax(z) - onehot)/N; loss = mean(logsumexp(z) - z[label]); correct += argmax hits
    def _softmax_cross_entropy(self, logits, labels, grad, loss, accumulate, correct, bias_grad):
        if correct is not None:  # on the logits, before grad may overwrite them
            self._count_correct(logits, labels, correct)
        n = logits.shape[0]
        idx = self._row_index(labels, logits.shape[1])
        z_true = self._workspace("z_true", (n,))
        np.take(logits.reshape(-1), idx, out=z_true, mode="clip")  # read before grad may overwrite logits
        m, s = self._softmax_rows(logits, grad)
        grad /= s
        # per-row loss: log(sum e^(z - max)) - (z_label - max)  (log-sum-exp: never log(p));
        # z_label - max first: adding max to the log and subtracting z_label after would
        # cancel catastrophically for large logits (4096 + 0.693 - 4096 in float32)
        r = self._workspace("xent_rows", (n,))
        np.subtract(z_true, m[:, 0], out=r)
        np.log(s, out=s)
        np.subtract(s[:, 0], r, out=r)
        value = self.dtype.type(r.sum() / n)
        self._subtract_onehot(grad, idx)
        grad *= self.dtype.type(1.0 / n)
        loss[0] = loss[0] + value if accumulate else value
        if bias_grad is not None:  # the layer's db, as its own bias_grad would sum it
            self._bias_grad(grad, bias_grad)

    # grad = (y - onehot)/N; loss = sum((y - onehot)^2)/(2N)
    def _mse(self, y, labels, grad, loss, accumulate):
        n = y.shape[0]
        np.subtract(y, self._onehot(labels, y.shape[1]), out=grad)
        flat = grad.reshape(-1)
        value = self.dtype.type(np.dot(flat, flat) / self.dtype.type(2 * n))
        grad *= self.dtype.type(1.0 / n)
        loss[0] = loss[0] + value if accumulate else value

    # param -= lr * step, step from grad, weight decay and momentum (PyTorch's SGD)
    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        g = grad
        if weight_decay:
            g = self._workspace("sgd_g", param.shape)
            np.multiply(param, self.dtype.type(weight_decay), out=g)
            g += grad
        if momentum:
            velocity *= self.dtype.type(momentum)
            velocity += g
            if nesterov:
                step = self._workspace("sgd_step", param.shape)
                np.multiply(velocity, self.dtype.type(momentum), out=step)
                step += g
            else:
                step = velocity
        else:
            step = g
        t = self._workspace("sgd_t", param.shape)
        np.multiply(step, self.dtype.type(lr if np.isscalar(lr) else lr[0]), out=t)  # lr: a number or lr[0]
        param -= t

    # Adam / AdamW (PyTorch's), the moments m and v in place, t = step[0]
    def _adam_update(self, param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled):
        f = self.dtype.type
        lr, beta1, beta2, eps, wd = f(lr if np.isscalar(lr) else lr[0]), f(beta1), f(beta2), f(eps), f(weight_decay)
        g = grad
        if wd:
            if decoupled:
                param *= f(1) - lr * wd                     # AdamW: decay the weights themselves
            else:
                g = self._workspace("adam_g", param.shape)  # Adam: decay through the gradient
                np.multiply(param, wd, out=g)
                g += grad
        t = self._workspace("adam_t", param.shape)
        np.subtract(g, m, out=t)
        t *= f(1) - beta1
        m += t                                              # m = m + (1 - b1)(g - m)
        v *= beta2
        np.multiply(g, g, out=t)
        t *= f(1) - beta2
        v += t                                              # v = b2 v + (1 - b2) g²
        n = f(step[0])
        step_size, bc2_sqrt = lr / (f(1) - beta1 ** n), np.sqrt(f(1) - beta2 ** n)
        np.sqrt(v, out=t)
        t /= bc2_sqrt
        t += eps                                            # sqrt(v) / sqrt(1 - b2^t) + eps
        np.divide(m, t, out=t)
        t *= step_size
        param -= t                                          # p -= lr / (1 - b1^t) * m / denom

    def _count_step(self, step):
        step[0] += 1

    # out = x * mask / (1 - p), the mask a counter-based hash of (element, step[0], seed)
    def _dropout(self, x, out, p, seed, step):
        threshold, scale = dropout_constants(p)
        index = np.arange(x.size, dtype=np.uint64).reshape(x.shape)
        keep = philox2x32(index, np.uint64(step[0]), np.uint64(seed)) >= np.uint64(threshold)
        np.multiply(x, np.where(keep, self.dtype.type(scale), self.dtype.type(0)), out=out)

    def _dropout_backward(self, dy, dx, p, seed, step):
        self._dropout(dy, dx, p, seed, step)  # the same mask, recomputed: dx = dy * mask / (1 - p)

    # out[0] += count(argmax(scores) == label)
    def _count_correct(self, scores, labels, out):
        n = scores.shape[0]
        am = self._workspace("argmax", (n,), np.intp)
        hit = self._workspace("hit", (n,), np.bool_)
        np.argmax(scores, axis=1, out=am)
        np.equal(am, labels, out=hit)
        out[0] += np.count_nonzero(hit)

    # xb = x[order[c:c+B]], yb = labels[order[c:c+B]], c = cursor[0]
    def _gather_batch(self, x, labels, order, cursor, xb, yb):
        start = int(cursor[0])
        index = order[start:start + xb.shape[0]]
        # NumPy's take(out=) copies through a temporary unless told the indices are in
        # range (they are: a permutation), which triples its cost
        np.take(x, index, axis=0, out=xb, mode="clip")
        np.take(labels, index, axis=0, out=yb, mode="clip")

    # the gather at the cursor; lr[0] = lr_table[min(cursor[1], last)], this step's rate; cursor += (B, 1)
    def _next_batch(self, x, labels, order, cursor, lr_table, lr, xb, yb):
        self._gather_batch(x, labels, order, cursor, xb, yb)
        lr[0] = lr_table[min(int(cursor[1]), lr_table.shape[0] - 1)]
        cursor[0] += xb.shape[0]
        cursor[1] += 1

    # cursor += (stride, 1); lr[0] = lr_table[min(cursor[1], last)]
    def _advance_step(self, cursor, stride, lr_table, lr):
        cursor[0] += stride
        cursor[1] += 1
        lr[0] = lr_table[min(int(cursor[1]), lr_table.shape[0] - 1)]

    # the whole step, op by op: the definition the cuda backend's two kernels are held to
    def _narrow_step(self, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets,
                     loss, rows, loss_sum, correct, momentum, weight_decay, nesterov):
        xb = self._workspace("narrow_x", (rows, widths[0]))
        yb = self._workspace("narrow_y", (rows,), np.int32)
        self._gather_batch(x, labels, order, cursor, xb, yb)
        grads[...] = 0  # the gaps between the layers' arrays: a zero gradient, as in the flat update
        layers, hs = [], [xb]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):   # the layers' views of the flat storage
            w_at, b_at = offsets[2 * i], offsets[2 * i + 1]
            views = [store[w_at:w_at + a * b].reshape(a, b) for store in (params, grads)]
            views += [store[b_at:b_at + b] for store in (params, grads)]
            layers.append(views)
            h = self._workspace(f"narrow_h{i}", (rows, b))
            self._gemm(hs[-1], views[0], h, False, False, False)      # h = act(h_prev W + b)
            self._bias_act(h, views[2], acts[i], h)
            hs.append(h)
        out = hs[-1]
        dz = self._workspace("narrow_grad", out.shape)
        if loss == "mse":
            self._count_correct(out, yb, correct)
            self._mse(out, yb, dz, loss_sum, True)
        else:
            self._softmax_cross_entropy(out, yb, dz, loss_sum, True, correct, None)
        for i in reversed(range(len(layers))):                        # the chain rule, last layer first
            w, dw, _, db = layers[i]
            if acts[i] == "identity":
                self._bias_grad(dz, db)
            else:
                g = self._workspace(f"narrow_dz{i}", dz.shape)
                self._act_bias_backward(hs[i + 1], dz, acts[i], g, db)
                dz = g
            self._gemm(hs[i], dz, dw, True, False, False)            # dW = h_prevᵀ dz
            if i:
                dx = self._workspace(f"narrow_dx{i}", hs[i].shape)
                self._gemm(dz, w, dx, False, True, False)            # dh_prev = dz Wᵀ
                dz = dx
        self._sgd_update(params, grads, velocity, lr, momentum, weight_decay, nesterov)
        self._advance_step(cursor, rows, lr_table, lr)
