"""cuBLAS SGEMM for the cuda backend, on a handle the backend owns, so that a CUDA graph can hold it.

CuPy's ``cupy.cublas`` refuses every call while a stream is capturing (a blanket
check in its ``setStream``), though cuBLAS itself supports capture.  gpunn calls
``cublasSgemm`` through nvmath-python's bindings (NVIDIA's) instead, on a handle of
its own, and follows cuBLAS's rules for graph capture: whenever the stream changes,
the handle gets the stream first and then that stream's own workspace
(``cublasSetStream`` resets the workspace to cuBLAS's pool, whose allocations a
graph cannot hold; GEMMs that run at once on two streams must not share one).  ``alpha`` and ``beta`` are host scalars read when the call is
queued (1 and 0 or 1), so a captured GEMM replays with the same values.

Row-major in, column-major BLAS: gpunn's arrays are C-ordered, cuBLAS's are
Fortran-ordered.  A C-ordered (R, C) array is, to cuBLAS, its (C, R) transpose with
leading dimension C.  So ``out = op(a) @ op(b)`` (M, N) is computed as cuBLAS's
``outᵀ = op(b)ᵀ @ op(a)ᵀ``: the operands swap places, keep their transpose flags,
and M and N swap (:func:`sgemm_arguments`; tested on the CPU against a column-major
SGEMM written with NumPy).
"""
from __future__ import annotations

import functools

import numpy as np

#: The cuda backend's GEMMs: cuBLAS (this module) or gpunn's tiled kernel (gpunn.kernels.gemm).
#: Here, not in cuda_backend.py, so that the command line can offer them without Numba.
GEMM_IMPLEMENTATIONS = ("cublas", "numba")
#: cuBLAS's arithmetic for float32 GEMMs: FP32 (the default: what the CPU reference computes) or
#: TF32 tensor cores (inputs rounded to a 10-bit mantissa, FP32 accumulation), as cuBLAS's math
#: modes CUBLAS_DEFAULT_MATH and CUBLAS_TF32_TENSOR_OP_MATH
PRECISIONS = {"fp32": 0, "tf32": 3}

OP_N, OP_T = 0, 1  # cublasOperation_t
#: cuBLAS's recommended user workspace on Hopper (and enough for every earlier GPU)
WORKSPACE_BYTES = 32 * 1024 * 1024


@functools.lru_cache(maxsize=1024)
def sgemm_arguments(a_shape, b_shape, trans_a, trans_b):
    """cuBLAS's ``(transa, transb, m, n, k, lda, ldb, ldc)`` for row-major ``out = op(a) @ op(b)``,
    with cuBLAS's A being gpunn's ``b`` and its B gpunn's ``a``.

    a: (M,K), or (K,M) if trans_a; b: (K,N), or (N,K) if trans_b; out: (M,N)."""
    m, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    n = b_shape[0] if trans_b else b_shape[1]
    return (OP_T if trans_b else OP_N, OP_T if trans_a else OP_N, n, m, k,
            max(1, b_shape[1]), max(1, a_shape[1]), max(1, n))


_handles = {}  # device id -> Cublas


def shared(cupy) -> "Cublas":
    """The process's cuBLAS handle for the current device, created on first use and never destroyed.

    One per device, not one per backend: ``cublasDestroy`` synchronises the whole device
    (cuBLAS's documentation says so), so a backend collected as garbage in the middle of
    training would stall the host until the GPU drained.  gpunn queues from one thread."""
    device = cupy.cuda.Device().id
    handle = _handles.get(device)
    if handle is None:
        handle = _handles[device] = Cublas(cupy)
    return handle


class Cublas:
    """A cuBLAS handle of gpunn's own, with its workspace, bound to a stream at a time (see :func:`shared`)."""

    def __init__(self, cupy):
        from nvmath.bindings import cublas

        self._cublas = cublas
        self.handle = cublas.create()  # lives as long as the process (see shared())
        self._cupy = cupy
        self._workspaces = {}  # stream -> its workspace: GEMMs on two streams may run at once
        self._stream = None
        self._math = PRECISIONS["fp32"]  # a new handle's math mode
        # alpha = 1; beta = 0 (overwrite) or 1 (accumulate): host scalars, alive as long as the handle
        self._scalars = np.array([1.0, 0.0, 1.0], dtype=np.float32)
        base = self._scalars.ctypes.data
        self._alpha, self._beta = base, (base + 4, base + 8)

    def workspace(self, stream: int):
        """The workspace of the GEMMs queued on ``stream``, allocated on first use (before a capture,
        by the backend: nothing is allocated while a stream is capturing)."""
        ws = self._workspaces.get(stream)
        if ws is None:
            ws = self._workspaces[stream] = self._cupy.empty(WORKSPACE_BYTES, dtype=np.uint8)
        return ws

    def use_stream(self, stream: int) -> None:
        """Queue the next calls on ``stream``: set it, then its workspace (cuBLAS's capture rule)."""
        if stream != self._stream:
            self._cublas.set_stream(self.handle, stream)
            self._cublas.set_workspace(self.handle, self.workspace(stream).data.ptr, WORKSPACE_BYTES)
            self._stream = stream

    def use_precision(self, precision: str) -> None:
        """The next calls' arithmetic (:data:`PRECISIONS`): the handle's math mode, set when it changes
        (the handle is the device's, shared by every backend)."""
        mode = PRECISIONS[precision]
        if mode != self._math:
            self._cublas.set_math_mode(self.handle, mode)
            self._math = mode

    def gemm(self, stream, a, b, out, trans_a, trans_b, accumulate, precision="fp32") -> None:
        """``out = op(a) @ op(b)`` (``+ out`` with accumulate), float32, C-contiguous, on ``stream``."""
        self.use_stream(stream)
        self.use_precision(precision)
        transa, transb, m, n, k, lda, ldb, ldc = sgemm_arguments(a.shape, b.shape, bool(trans_a), bool(trans_b))
        self._cublas.sgemm(self.handle, transa, transb, m, n, k, self._alpha, b.data.ptr, lda, a.data.ptr, ldb,
                           self._beta[bool(accumulate)], out.data.ptr, ldc)
