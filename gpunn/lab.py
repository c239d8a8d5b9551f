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
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

from gpunn.backend.base import check_arity
from gpunn.backend.ops import OPS
from gpunn.errors import GpunnError

__all__ = ["UserVersion", "VersionError", "load_version", "load_file", "declared_kernels", "bench", "kernels",
           "op_named"]


class VersionError(GpunnError):
    """A user's version file cannot be used: it does not import, lacks the version, or its version
    cannot take the op's arguments or raised."""


@dataclass(frozen=True)
class UserVersion:
    """A user's version of ``op``: ``fn`` called ``name`` in the file ``path``."""

    op: str
    name: str
    path: str
    fn: Callable

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.name}"


def op_named(word: str) -> str:
    """The op called ``word`` (``softmax-cross-entropy`` or ``softmax_cross_entropy``)."""
    name = word.replace("-", "_")
    if name not in OPS:
        raise VersionError(f"unknown op {word!r}; the ops are {', '.join(o.word for o in OPS.values())}")
    return name


def load_file(path: str):
    """The module in the Python file ``path``, imported afresh under a name of its own."""
    path = os.fspath(path)
    if not path.endswith(".py"):
        raise VersionError(f"{path}: a version file is a Python file (FILE.py)")
    if not os.path.isfile(path):
        raise VersionError(f"{path}: no such file")
    name = "gpunn_user_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba (and dataclasses) look a function's module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # anything the file raises: it is the user's code
        sys.modules.pop(name, None)
        raise VersionError(f"{path}: cannot import it: {_one_line(exc)}") from None
    return module


def load_version(text: str, op: str) -> UserVersion:
    """``"FILE.py:NAME"`` -> the version ``NAME`` of ``op`` defined in FILE.py, checked to take the
    op's arguments in order."""
    op = op_named(op)
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise VersionError(f"version {text!r}: expected FILE.py:NAME (a function in a Python file)")
    fn = getattr(load_file(path), name, None)
    if fn is None:
        raise VersionError(f"{path}: defines no {name!r}")
    if not callable(fn):
        raise VersionError(f"{path}:{name} is a {type(fn).__name__}, not a function")
    try:
        check_arity(OPS[op], fn, f"{path}:{name}")
    except ValueError as exc:
        raise VersionError(str(exc)) from None
    return UserVersion(op, name, path, fn)


def declared_kernels(path: str) -> list:
    """The kernels the file ``path`` declares in ``KERNELS = [(kernel, signature(s), threads), ...]``,
    as :class:`gpunn.kernels.launch.KernelSpec` records (what ``gpunn kernels FILE.py`` compiles)."""
    from gpunn.kernels.launch import KernelSpec

    declared = getattr(load_file(path), "KERNELS", None)
    example = 'KERNELS = [(my_kernel, "void(float32[:, ::1], float32[:, ::1])", 128)]'
    if not isinstance(declared, (list, tuple)) or not declared:
        raise VersionError(f"{path}: declares no kernels; add, at the end of the file: {example}")
    specs = []
    for i, entry in enumerate(declared):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise VersionError(f"{path}: KERNELS[{i}] is not (kernel, signature, threads per block): {example}")
        kernel, signatures, block = entry
        if not hasattr(kernel, "py_func"):
            raise VersionError(f"{path}: KERNELS[{i}][0] is not a @cuda.jit kernel")
        signatures = (signatures,) if isinstance(signatures, str) else tuple(signatures)
        if not signatures or not all(isinstance(s, str) for s in signatures):
            raise VersionError(f"{path}: KERNELS[{i}][1] must be a Numba signature string (or a list of them), "
                               'e.g. "void(float32[:, ::1], float32[:, ::1])"')
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
            raise VersionError(f"{path}: KERNELS[{i}][2] must be the threads per block, 1 to 1024, got {block!r}")
        specs.append(KernelSpec(kernel.py_func.__name__, kernel, signatures, block, 0, os.path.basename(path)))
    return specs


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__
