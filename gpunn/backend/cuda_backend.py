"""The CUDA backend: CuPy holds device memory, cuBLAS does GEMM, Numba kernels do the rest.

Every op except GEMM is one of the hand-written kernels of ``gpunn.kernels`` (one
family per module), launched on CuPy's current stream, so cuBLAS and the kernels
run in order with no host synchronisation: a training step only queues work, and
a loss or count stays in a one-element device array until someone reads it
(``to_numpy``).  Workspaces (per-row losses, partial sums) are allocated once per
shape and reused.  ``CudaBackend(gemm="numba")`` swaps cuBLAS for the tiled GEMM.

The host stays out of the way (:mod:`gpunn.backend.cuda_launch`): each kernel is
compiled once and launched with its arguments flattened once, through one
``cuLaunchKernel``, not through Numba's per-call dispatch; GEMM is cuBLAS on a
handle the backend owns (:mod:`gpunn.backend.cublas`), which a CUDA graph can hold.
:meth:`CudaBackend.capture` records a whole training step as one CUDA graph.

Simulator mode: with ``NUMBA_ENABLE_CUDASIM=1`` (set before Numba is imported)
the same class runs on the CPU with NumPy arrays in place of CuPy's: the kernels
run in Numba's CUDA simulator (which writes into NumPy arrays in place) and GEMM
is NumPy's matmul (there is no cuBLAS) or the simulated tiled kernel.  Everything
but the ``xp = cupy`` glue is the same code path as on a GPU, which is how CI
tests it.  ``auto`` never picks the simulator; ``get_backend("cuda")`` uses it
when it is on.

Every launch goes through :meth:`CudaBackend._launch`, which runs the
``launch_hooks`` around it (a profiler's way in; see :class:`Launch`).  The simulator
launches through Numba's dispatcher (``kernel[grid, block](...)``) and has no graphs.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable, NamedTuple

import numpy as np
from numba import cuda

from gpunn.backend import ops
from gpunn.backend.base import Backend, unfused_linear_backward
from gpunn.backend.cublas import GEMM_IMPLEMENTATIONS, PRECISIONS
from gpunn.backend.cuda_launch import Launcher, stream_arg
from gpunn.backend.numpy_backend import NumpyBackend
from gpunn.env import cache_dir, numba_numpy_problem, simulator_on
from gpunn.errors import BackendUnavailable, GraphUnavailable
from gpunn.kernels import (
    FAMILIES,
    act_backward,
    adam,
    dropout,
    batch,
    gemm,
    bias_act,
    bias_grad,
    count_correct,
    mse,
    narrow_mlp,
    reduce,
    sgd,
    softmax,
)
from gpunn.kernels.random import dropout_constants
from gpunn.kernels.launch import ELEMENTWISE_THREADS, ROW_THREADS, check_pow2_threads, source_digest
from gpunn.occupancy import parse_arch

#: bound op calls kept before the cache starts afresh (a loop over fresh arrays would grow it)
MAX_BOUND = 4096

#: the name a launch hook (and the profile) sees for a cuBLAS GEMM call: one kernel of cuBLAS's own
CUBLAS_GEMM = "cublas_gemm"

f32, i32, i64 = np.float32, np.int32, np.int64



@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """None when a real GPU with CuPy is usable here; otherwise why not, in words.

    The simulator counts as unavailable: ``auto`` must only pick a real GPU."""
    if simulator_on():
        return "NUMBA_ENABLE_CUDASIM=1 is set, and auto does not pick the CUDA simulator"
    problem = numba_numpy_problem()
    if problem is not None:
        return problem
    try:
        import cupy
    except ImportError as exc:
        return f'CuPy is not installed ({exc.name or exc}); install it with: pip install "gpunn[cuda12]"'
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
        return f"CUDA reports no usable device: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if count < 1:
        return "no NVIDIA GPU was found"
    if not cuda.is_available():
        return "Numba cannot use the GPU (numba.cuda.is_available() is False)"
    return None


class Launch(NamedTuple):
    """One kernel launch, as the launch hooks see it."""

    name: str  # the KernelSpec name, e.g. "softmax_cross_entropy"
    kernel: Callable  # the @cuda.jit dispatcher
    grid: tuple | int
    block: tuple | int
    args: tuple


class CudaBackend(Backend):
    """The op set on an NVIDIA GPU (or in Numba's CUDA simulator).

    Options:
      gemm: "cublas" (default; NumPy's matmul in the simulator) or "numba" (the
        tiled shared-memory kernel of ``gpunn.kernels.gemm``).
      threads: most threads per block of the row-wise and elementwise kernels, a
        power of two ≤ 256 (default 256).  Smaller blocks make the simulator faster.
      max_blocks: cap on every grid dimension (default: the hardware limits); the
        kernels loop over what the grid does not cover.  Tests use a small cap to
        exercise those loops.
      versions: ``{op: version}``, each passed to :meth:`use_version`: the name of one of the
        op's kernel versions (its record's ``versions``: ``{"softmax": "online"}``) or a
        user's function (:mod:`gpunn.lab`).  A GEMM version replaces cuBLAS.

    ``launch_hooks`` is a list of callables ``hook(launch: Launch, run)``; each
    must call ``run()`` exactly once (to launch, or reach the next hook), and may
    do what it likes around it: record ``launch.name/grid/block``, time it with
    CUDA events, push an NVTX range.  The first hook is the outermost.
    """

    name = "cuda"

    def __init__(self, gemm: str = "cublas", threads: int | None = None, max_blocks: int | None = None,
                 versions: dict | None = None, dry: bool = False, precision: str = "fp32"):
        if gemm not in GEMM_IMPLEMENTATIONS:
            raise ValueError(f"gemm must be one of {', '.join(GEMM_IMPLEMENTATIONS)}, got {gemm!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and gemm != "cublas":
            raise ValueError(f"precision {precision} is cuBLAS's tensor-core arithmetic; gpunn's GEMM (gemm={gemm}) "
                             "computes in FP32")
        if precision != "fp32" and simulator_on() and not dry:
            raise ValueError(f"precision {precision} needs cuBLAS on a GPU; the simulator's GEMM is NumPy's (FP32)")
        self.gemm_impl, self.precision = gemm, precision
        self.threads = check_pow2_threads(threads or ROW_THREADS)
        self.elementwise_threads = min(self.threads, ELEMENTWISE_THREADS)
        self.max_blocks = max_blocks
        #: a dry run: NumPy arrays hold the buffers and nothing is launched; every launch (and
        #: cuBLAS call) reaches the launch hooks and stops there. How a step's kernels are counted
        #: on a machine with neither a GPU nor the simulator: they are the GPU's own plans.
        self.dry = dry
        self.simulated = simulator_on() or dry  # the glue on NumPy arrays, on the CPU
        self.launch_hooks: list[Callable] = []
        self._ws = {}
        self._bound = {}  # op call -> its bound launches (see _queue)
        self._capturing = self._branched = False  # see capture() and branch()
        if self.simulated:
            self.xp = np
            self._to_host = np.asarray
            # No cuBLAS on the CPU: the reference backend's GEMM stands in for it.
            host = NumpyBackend()
            self._blas_gemm = lambda a, b, out, trans_a, trans_b, accumulate: host.gemm(
                a, b, out, trans_a, trans_b, accumulate)
            self._run = self._run_simulated
            if dry:
                self._run = self._blas_gemm = lambda *args: None
        else:
            reason = cuda_unavailable_reason()
            if reason is not None:
                raise BackendUnavailable(f"the cuda backend needs an NVIDIA GPU with CuPy, and none is usable here: {reason}")
            self._init_gpu()
        self._dummy = self.xp.zeros(1, dtype=np.float32)  # stands in for an absent bias, velocity or rate
        # each versioned op's launches: the record's default version (GEMM: cuBLAS unless gemm="numba")
        self._plans = {op: kernel_versions(op)[ops.OPS[op].version].plan for op in versioned_ops()}
        for op, version in (versions or {}).items():
            self.use_version(op, version)

    def _use_named_version(self, record, version):
        if record.name == "gemm" and self.precision != "fp32":
            raise ValueError(f"gemm={version}: gpunn's GEMM versions compute in FP32, this backend's precision is "
                             f"{self.precision} (cuBLAS's)")
        self._plans[record.name] = kernel_versions(record.name)[version].plan
        if record.name == "gemm":
            self.gemm_impl = "numba"  # a gpunn GEMM version chosen: it replaces cuBLAS
        self.__dict__.pop("_" + record.name, None)  # a user's version set before gives way

    def workspace(self, tag, shape, dtype=np.float32):
        """A device scratch array kept by (tag, shape, dtype) (what a kernel version's plan asks for)."""
        return self._workspace(tag, shape, dtype)

    def constant(self, tag, host):
        """A device copy of the small host array ``host``, made once per (tag, contents) and kept:
        what a plan passes to its kernels as a table (copied before any capture, never during one)."""
        host = np.ascontiguousarray(host)
        key = ("constant", tag, host.dtype.str, host.shape, host.tobytes())
        buf = self._ws.get(key)
        if buf is None:
            buf = self._ws[key] = self.xp.empty(host.shape, dtype=host.dtype)
            self.upload(host, buf)
        return buf

    def _init_gpu(self):
        import cupy

        from gpunn.backend import cublas

        try:
            from numba.cuda.core import config  # numba-cuda's own config (newer releases)
        except ImportError:
            from numba.core import config

        self.xp = cupy
        self._to_host = cupy.asnumpy
        self._current_stream = lambda: cupy.cuda.get_current_stream().ptr
        os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"  # small test grids are fine
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
        device = cupy.cuda.Device()
        self._launcher = Launcher((spec for name in FAMILIES  # each family's KERNELS declare their signatures
                                   for spec in importlib.import_module(f"gpunn.kernels.{name}").KERNELS),
                                  cc=parse_arch(device.compute_capability), cache_dir=cache_dir("kernels", source_digest()))
        try:
            self._cublas = cublas.shared(cupy)
        except ImportError as exc:
            raise BackendUnavailable(f"the cuda backend's GEMM needs nvmath-python ({exc.name or exc}); "
                                     'install the GPU packages with: pip install "gpunn[cuda12]" (or "gpunn[cuda13]")') from None
        self._capture_stream = self._side_stream = None

        def blas_gemm(a, b, out, trans_a, trans_b, accumulate):
            self._cublas.gemm(self._current_stream(), a, b, out, trans_a, trans_b, accumulate, self.precision)

        self._blas_gemm = blas_gemm

    # ------------------------------------------------------------------ memory and device
    def to_numpy(self, a) -> np.ndarray:
        return self._to_host(a)

    def upload(self, host, out) -> None:
        if self.simulated:
            np.copyto(out, host, casting="same_kind")
        else:
            out.set(np.ascontiguousarray(host, dtype=out.dtype))  # on the current stream, into out itself

    def synchronize(self) -> None:
        if not self.simulated:
            self.xp.cuda.get_current_stream().synchronize()

    def capture(self, fn):
        """Record what ``fn()`` queues (kernels and cuBLAS calls) as one CUDA graph; see :class:`Graph`.

        Capture runs on a private stream that first waits for the current one; nothing
        executes while capturing.  The returned graph replays on the current stream."""
        if self.simulated:
            raise GraphUnavailable("the CUDA simulator has no CUDA graphs")
        cupy = self.xp
        origin = cupy.cuda.get_current_stream()
        if self._capture_stream is None:
            self._capture_stream = cupy.cuda.Stream(non_blocking=True)
            self._side_stream = cupy.cuda.Stream(non_blocking=True)
        main, side = self._capture_stream, self._side_stream
        for stream in (main, side):  # cuBLAS workspaces now: nothing may be allocated while capturing
            self._cublas.workspace(stream.ptr)
        main.wait_event(origin.record())
        with main:
            main.begin_capture()
            self._capturing = True
            try:
                fn()
                self.join()
            except BaseException:
                try:
                    main.end_capture()  # leave the stream usable; the graph is discarded
                except Exception:
                    pass
                raise
            finally:
                self._capturing, self._branched = False, False
            graph = main.end_capture()
        graph.upload(origin)
        return Graph(graph, cupy)

    def branch(self):
        """While capturing, a fork onto a side stream: the work inside may run beside what the
        main stream queues next, until :meth:`join`.  Eagerly, in order (a no-op)."""
        return self._fork() if self._capturing else super().branch()

    @contextlib.contextmanager
    def _fork(self):
        main, side = self.xp.cuda.get_current_stream(), self._side_stream
        side.wait_event(main.record())  # the branch starts after what main has queued so far
        with side:
            yield
        self._branched = True

    def join(self) -> None:
        if self._branched:
            self.xp.cuda.get_current_stream().wait_event(self._side_stream.record())
            self._branched = False

    def describe(self) -> str:
        gemm_name = {"cublas": "numpy matmul" if self.simulated else
                     "cuBLAS" + (" TF32 tensor cores" if self.precision == "tf32" else ""),
                     "numba": f"gpunn {self.versions_in_use.get('gemm', 'blocked')}"}[self.gemm_impl]
        chosen = "".join(f"; {op}: {v}" for op, v in self.versions_in_use.items() if op != "gemm")
        if self.dry:
            return f"cuda (dry run: launches counted, none run; GEMM: {gemm_name.replace('numpy matmul', 'cuBLAS')}{chosen})"
        if self.simulated:
            return f"cuda (Numba CUDA simulator, NumPy arrays; GEMM: {gemm_name}{chosen})"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"cuda ({name}, compute capability {props['major']}.{props['minor']}; GEMM: {gemm_name}{chosen})"

    def _workspace(self, tag, shape, dtype=np.float32):
        """A device scratch array cached by (tag, shape, dtype): allocated once, then reused."""
        key = (tag, tuple(shape), np.dtype(dtype))
        buf = self._ws.get(key)
        if buf is None:
            buf = self._ws[key] = self.xp.empty(shape, dtype=dtype)
        return buf

    # ------------------------------------------------------------------ launching
    def _run(self, name, kernel, grid, block, args):
        """Launch on the current stream: compiled once, arguments flattened once (see cuda_launch)."""
        self._launcher.launch(name, kernel, grid, block, args, self._current_stream())

    @staticmethod
    def _run_simulated(name, kernel, grid, block, args):
        kernel[grid, block](*args)

    def _launch(self, name, kernel, grid, block, *args):
        """Launch ``kernel`` with ``grid`` and ``block`` on the current stream, through the launch hooks."""
        if not self.launch_hooks:
            self._run(name, kernel, grid, block, args)
            return
        self._hooked(Launch(name, kernel, grid, block, args), lambda: self._run(name, kernel, grid, block, args))

    def _hooked(self, launch, run):
        """``run()`` inside every launch hook, the first one outermost."""
        for hook in reversed(self.launch_hooks):
            run = functools.partial(hook, launch, run)
        run()

    def _queue(self, op, args, plan):
        """Queue the kernels of one op call; ``plan()`` lists them as ``(name, kernel, grid, block, args)``.

        On a GPU, with no launch hooks, the launches are bound once per :func:`call_key` of the
        op and *all* its arguments (arrays by address and shape, which fix every launch
        parameter; everything else by value) and replayed from then on: an eager op costs one
        dictionary lookup and one ``cuLaunchKernel`` per kernel, not the launch arithmetic,
        views and flattening again. The key is derived from the call, never written per op, so
        no argument can be left out of it. The simulator and the hooks (a profiler) go through
        :meth:`_launch` every time."""
        if self.simulated or self.launch_hooks:
            for name, kernel, grid, block, launch_args in plan():
                self._launch(name, kernel, grid, block, *launch_args)
            return
        key = call_key(op, args)
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) >= MAX_BOUND:
                self._bound.clear()
            bound = self._bound[key] = tuple(self._launcher.bind(*launch) for launch in plan())
        stream = stream_arg(self._current_stream())
        for launch in bound:
            launch(stream)

    # ------------------------------------------------------------------ ops
    def _versioned(self, op, args):
        """Queue the launches of the version of ``op`` in use (its plan, in its kernel family)."""
        plan = self._plans[op]
        self._queue(op, args, lambda: plan(self, *args))

    def _gemm(self, a, b, out, trans_a, trans_b, accumulate):
        if self.gemm_impl == "cublas":
            if self.launch_hooks:  # a profiler sees cuBLAS's call as a launch of its own (grid, block: cuBLAS's)
                args = (a, b, out, trans_a, trans_b, accumulate)
                self._hooked(Launch(CUBLAS_GEMM, None, None, None, args), lambda: self._blas_gemm(*args))
            else:
                self._blas_gemm(a, b, out, trans_a, trans_b, accumulate)
            return
        self._versioned("gemm", (a, b, out, trans_a, trans_b, accumulate))

    def _bias_act(self, x, bias, act, out):
        self._queue("bias_act", (x, bias, act, out), lambda: [(
            "bias_act", bias_act.bias_act_kernel,
            *bias_act.launch_config(*x.shape, self.elementwise_threads, self.max_blocks),
            (x.reshape(-1), self._dummy if bias is None else bias, out.reshape(-1), i32(bias_act.ACT_CODES[act]),
             i32(bias is not None)))])

    def _own_blocked_gemm(self) -> bool:
        """Whether the GEMM is gpunn's blocked version (``--gemm numba``), not cuBLAS, another version
        or one a user put in: then ``linear`` and ``linear_backward`` fuse their epilogues into it."""
        return self.gemm_impl == "numba" and self._plans["gemm"] is kernel_versions("gemm")["blocked"].plan \
            and "_gemm" not in self.__dict__

    def _linear(self, x, w, bias, act, out):
        if self._own_blocked_gemm():  # one kernel: the bias and activation in the GEMM's epilogue
            self._queue("linear", (x, w, bias, act, out), lambda: gemm.linear_plan(self, x, w, bias, act, out))
            return
        self._gemm(x, w, out, False, False, False)  # cuBLAS (or another GEMM version, or yours), then bias_act
        self._bias_act(out, bias, act, out)

    def _linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias):
        if self._own_blocked_gemm():  # one kernel: both GEMMs, the activation's derivative and the bias sum
            self._queue("linear_backward", (x, dz, w, dw, dx, s, act, dx_bias),
                        lambda: gemm.linear_backward_plan(self, x, dz, w, dw, dx, s, act, dx_bias))
            return
        unfused_linear_backward(self, x, dz, w, dw, dx, s, act, dx_bias)  # as the layers queued it before the op

    def _act_backward(self, s, dy, act, out):
        self._queue("act_backward", (s, dy, act, out), lambda: [(
            "act_backward", act_backward.act_backward_kernel,
            *act_backward.launch_config(*s.shape, self.elementwise_threads, self.max_blocks),
            (s.reshape(-1), dy.reshape(-1), out.reshape(-1), i32(bias_act.ACT_CODES[act])))])

    def _bias_grad(self, dy, out):
        self._queue("bias_grad", (dy, out), lambda: bias_grad.bias_grad_launches(self, dy, out))

    def _act_bias_backward(self, s, dy, act, dz, db):
        self._queue("act_bias_backward", (s, dy, act, dz, db), lambda: bias_grad.launches(
            self, ("act_bias_grad_partial", bias_grad.act_bias_grad_partial_kernel,
                   (s, dy, i32(bias_act.ACT_CODES[act]), dz)), dz, db))

    def _softmax(self, x, out):
        self._versioned("softmax", (x, out))

    def _softmax_backward(self, y, dy, out):
        self._queue("softmax_backward", (y, dy, out), lambda: [(
            "softmax_backward", softmax.softmax_backward_kernel,
            *softmax.launch_config(*y.shape, self.threads, self.max_blocks), (y, dy, out))])

    def _softmax_cross_entropy(self, logits, labels, grad, loss, accumulate, correct, bias_grad):
        self._versioned("softmax_cross_entropy", (logits, labels, grad, loss, accumulate, correct, bias_grad))

    def _mse(self, y, labels, grad, loss, accumulate):
        def plan():
            n, c = y.shape
            row_sq = self._workspace("row_loss", (n,))
            return [("mse", mse.mse_kernel, *mse.launch_config(n, c, self.threads, self.max_blocks),
                     (y, labels, grad, row_sq, f32(1.0 / n))),
                    reduce.finish_launch(self.threads, row_sq, loss, 2 * n, accumulate)]

        self._queue("mse", (y, labels, grad, loss, accumulate), plan)

    def _sgd_update(self, param, grad, velocity, lr, momentum, weight_decay, nesterov):
        on_device = hasattr(lr, "shape")  # a device scalar the kernel reads, or a number fixed now
        v = velocity.reshape(-1) if momentum else self._dummy
        self._queue("sgd_update", (param, grad, velocity, lr, momentum, weight_decay, nesterov), lambda: [(
                        "sgd_update", sgd.sgd_kernel,
                        *sgd.launch_config(param.size, self.elementwise_threads, self.max_blocks),
                        (param.reshape(-1), grad.reshape(-1), v, f32(0.0 if on_device else lr),
                         lr if on_device else self._dummy, i32(on_device), f32(momentum), f32(weight_decay),
                         i32(nesterov)))])

    def _adam_update(self, param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled):
        on_device = hasattr(lr, "shape")  # a device scalar the kernel reads, or a number fixed now
        self._queue("adam_update", (param, grad, m, v, lr, step, beta1, beta2, eps, weight_decay, decoupled),
                    lambda: [("adam_update", adam.adam_kernel,
                              *adam.launch_config(param.size, self.elementwise_threads, self.max_blocks),
                              (param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
                               f32(0.0 if on_device else lr), lr if on_device else self._dummy, i32(on_device), step,
                               f32(beta1), f32(beta2), f32(eps), f32(weight_decay), i32(decoupled)))])

    def _count_step(self, step):
        self._queue("count_step", (step,), lambda: [("count_step", adam.step_kernel, 1, 1, (step,))])

    def _dropout(self, x, out, p, seed, step):
        threshold, scale = dropout_constants(p)
        self._queue("dropout", (x, out, p, seed, step), lambda: [(
            "dropout", dropout.dropout_kernel, *dropout.launch_config(x.size, self.elementwise_threads, self.max_blocks),
            (x.reshape(-1), out.reshape(-1), i64(threshold), f32(scale), i64(seed), step))])

    def _dropout_backward(self, dy, dx, p, seed, step):
        threshold, scale = dropout_constants(p)
        self._queue("dropout_backward", (dy, dx, p, seed, step), lambda: [(
            "dropout", dropout.dropout_kernel, *dropout.launch_config(dy.size, self.elementwise_threads, self.max_blocks),
            (dy.reshape(-1), dx.reshape(-1), i64(threshold), f32(scale), i64(seed), step))])

    def _count_correct(self, scores, labels, out):
        self._queue("count_correct", (scores, labels, out), lambda: [(
            "count_correct", count_correct.count_correct_kernel,
            *count_correct.launch_config(*scores.shape, self.threads, self.max_blocks), (scores, labels, out))])

    def _gather_batch(self, x, labels, order, cursor, xb, yb):
        self._queue("gather_batch", (x, labels, order, cursor, xb, yb), lambda: [(
            "gather_batch", batch.gather_batch_kernel, *batch.launch_config(*xb.shape, self.threads, self.max_blocks),
            (x, labels, order, cursor, xb, yb))])

    def _narrow_step(self, x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts, offsets,
                     loss, rows, loss_sum, correct, momentum, weight_decay, nesterov):
        self._queue("narrow_step", (x, labels, order, cursor, lr_table, lr, params, grads, velocity, widths, acts,
                                    offsets, loss, rows, loss_sum, correct, momentum, weight_decay, nesterov),
                    lambda: narrow_mlp.plan(self, x, labels, order, cursor, lr_table, lr, params, grads, velocity,
                                            widths, acts, offsets, loss, rows, loss_sum, correct, momentum,
                                            weight_decay, nesterov))

    def _next_batch(self, x, labels, order, cursor, lr_table, lr, xb, yb):
        tickets = self.constant("next_batch_tickets", np.zeros(1, np.uint32))  # every launch leaves it at 0
        self._queue("next_batch", (x, labels, order, cursor, lr_table, lr, xb, yb), lambda: [(
            "next_batch", batch.next_batch_kernel, *batch.launch_config(*xb.shape, self.threads, self.max_blocks),
            (x, labels, order, cursor, lr_table, lr, xb, yb, tickets))])

    def _advance_step(self, cursor, stride, lr_table, lr):
        self._queue("advance_step", (cursor, stride, lr_table, lr), lambda: [(
            "advance_step", batch.advance_step_kernel, *batch.advance_config(), (cursor, i32(stride), lr_table, lr))])


@functools.lru_cache(maxsize=None)
def kernel_versions(op: str) -> dict:
    """``{name: Version}`` of ``op``'s kernel versions, from its family's ``VERSIONS``, in the record's order."""
    found = {}
    for family in FAMILIES:
        found.update(getattr(importlib.import_module(f"gpunn.kernels.{family}"), "VERSIONS", {}))
    return {v.name: v for v in found.get(op, ())}


def versioned_ops() -> tuple:
    """The ops whose record names kernel versions."""
    return tuple(name for name, record in ops.OPS.items() if record.versions)


def call_key(op, args) -> tuple:
    """What identifies one op call's launches: the op and each argument, an array by its
    address, shape and strides (a device scalar such as the rate the kernel reads included),
    anything else (a flag, a scalar, None) by value."""
    def part(v):
        ptr = getattr(getattr(v, "data", None), "ptr", None)
        return ("array", ptr, v.shape, v.strides) if ptr is not None else v

    return (op, *map(part, args))


class Graph:
    """A captured CUDA graph: ``graph()`` replays it on the current stream (one host call)."""

    def __init__(self, graph, cupy):
        self.graph = graph
        self._current = cupy.cuda.get_current_stream

    def __call__(self) -> None:
        self.graph.launch(self._current())

    def kernel_nodes(self) -> int:
        """How many kernel nodes the graph holds (cuBLAS's included), asked of the CUDA driver."""
        import ctypes

        driver = ctypes.CDLL("libcuda.so.1")
        handle, count = ctypes.c_void_p(self.graph.graph), ctypes.c_size_t(0)
        if driver.cuGraphGetNodes(handle, None, ctypes.byref(count)) != 0:
            raise RuntimeError("cuGraphGetNodes failed")
        nodes = (ctypes.c_void_p * count.value)()
        if driver.cuGraphGetNodes(handle, nodes, ctypes.byref(count)) != 0:
            raise RuntimeError("cuGraphGetNodes failed")
        kind, kernels = ctypes.c_int(), 0
        for node in nodes[:count.value]:
            if driver.cuGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(kind)) != 0:
                raise RuntimeError("cuGraphNodeGetType failed")
            kernels += kind.value == 0  # CU_GRAPH_NODE_TYPE_KERNEL
        return kernels
