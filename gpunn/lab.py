"""The kernel lab: your own version of an op, validated, measured and profiled beside gpunn's.

A *version* of an op is a Python function that takes the op's arguments in the order of its
record (:mod:`gpunn.backend.ops`: ``softmax(x, out)``, ``gemm(a, b, out, trans_a, trans_b,
accumulate)``...) and writes the op's outputs, launching whatever kernels it likes::

    # mine.py
    import math
    from numba import cuda

    @cuda.jit
    def softmax_rows(x, out):                  # one thread per row
        r = cuda.grid(1)
        if r < x.shape[0]:
            ...

    def mine(x, out):                          # the version: softmax's arguments, in order
        softmax_rows[(x.shape[0] + 127) // 128, 128](x, out)

    # what `gpunn kernels mine.py` compiles: each kernel, the signature(s) it is launched
    # with (Numba's signature strings) and its threads per block
    KERNELS = [(softmax_rows, "void(float32[:, ::1], float32[:, ::1])", 128)]

It receives the backend's arrays: CuPy arrays on a GPU, NumPy arrays in Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), where the same kernels run as Python threads, so a version is
validated on any laptop.  From the command line::

    gpunn bench softmax --version mine.py:mine      # validated at every size, then timed beside gpunn's
    gpunn kernels mine.py                           # registers, spills, shared memory, occupancy
    gpunn profile --version softmax=mine.py:mine    # the training step with it in softmax's place

From Python: :func:`load_version`, :func:`bench` (which validates first), :func:`kernels` and
``backend.use_version(op, version)``.  Every mistake in a user's file (it does not import,
lacks the name, takes the wrong arguments, its kernel raises or computes something else) is a
:class:`VersionError` or :class:`~gpunn.bench.ValidationFailed`: one line naming the file and
the version.
"""
from gpunn.backend.ops import OPS
from gpunn.versions import (UserVersion, VersionError, declared_kernels, load_file, load_version,  # noqa: F401
                            op_named)

__all__ = ["UserVersion", "VersionError", "load_version", "load_file", "declared_kernels", "bench", "kernels",
           "op_named"]


def bench(op: str, versions=(), sizes=None, **options):
    """Validate every version (gpunn's, the built-in, and ``versions``: UserVersion or "FILE.py:NAME")
    against the float64 reference at every size, then time them: :func:`gpunn.bench.bench`'s result.
    ``options``: ``reps``, ``warmup``, ``peaks``, ``act``, ``momentum``, ``wanted`` (variant names)."""
    from gpunn import bench as bench_module

    kernel = bench_module.KERNELS[OPS[op_named(op)].word]
    user = [v if isinstance(v, UserVersion) else load_version(v, kernel.op) for v in versions]
    sim = bench_module.simulator_on()
    sizes = list(sizes) if sizes is not None else list(kernel.sim_sizes if sim else kernel.sizes)
    settings = {"act": options.pop("act", "relu"), "momentum": options.pop("momentum", 0.9), "lr": 0.1}
    return bench_module.bench(kernel, sizes, settings, user_versions=user, **options)


def kernels(path: str | None = None, arch: str = "sm_90", block: int | None = None) -> list[dict]:
    """Registers, spills, shared memory and occupancy of the kernels ``path`` declares (gpunn's own
    without a path): the rows of ``gpunn kernels``."""
    from gpunn.resources import kernel_rows

    return kernel_rows(arch, block, source=path)
